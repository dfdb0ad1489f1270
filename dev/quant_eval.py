"""Dev measurement (not product code): BPB of a trained run at float, RTN int6 and GPTQ int6.

    python dev/quant_eval.py RUN_DIR [--calib-batches 16] [--max-val-tokens N] [--modes plain,sliding]

GPTQ Hessians come from the run's own training loader (a stand-in until issue 4's self-generated
calibration lands). Prints one JSON object; also writes the quantized artifact next to the run.
"""

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import torch

from pgolf.data.loader import build_train_loader
from pgolf.quant.artifact import artifact_bytes, dequantized_copy, quantize_model, save_model_artifact
from pgolf.quant.hessian import collect_hessians
from pgolf.runtime import DistEnv
from pgolf.scoring.evaluate import evaluate, load_run_model
from pgolf.train.loop import load_run_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir")
    ap.add_argument("--calib-batches", type=int, default=16)
    ap.add_argument("--max-val-tokens", type=int, default=0)
    ap.add_argument("--modes", default="plain,sliding")
    a = ap.parse_args()
    cfg = load_run_config(a.run_dir)
    env = DistEnv()
    modes = tuple(a.modes.split(","))
    model = load_run_model(a.run_dir, cfg, env.device).float()
    out = {"run_dir": a.run_dir}
    t = time.perf_counter()
    from pgolf.train.loop import resolve_precision

    amp, _ = resolve_precision(cfg, env.device)
    out["float"] = evaluate(model, cfg, env, modes=modes, max_val_tokens=a.max_val_tokens, autocast_dtype=amp)
    out["float_seconds"] = time.perf_counter() - t
    loader = build_train_loader(cfg.data.path, seq_len=cfg.train.seq_len, batch_tokens=cfg.train.batch_tokens,
                                rank=0, world_size=1, grad_accum=1, data_cfg=cfg.data, vocab_size=cfg.model.vocab_size)
    batches = []
    while len(batches) < a.calib_batches:
        for x, _ in loader.next_step():
            batches.extend(x.split(1))
    t = time.perf_counter()
    H = collect_hessians(model, batches[: a.calib_batches])
    out["hessian_seconds"] = time.perf_counter() - t
    for method in ("rtn", "gptq"):
        q = replace(cfg.quant, method=method)
        t = time.perf_counter()
        tensors = quantize_model(model, q, H if method == "gptq" else None)
        out[f"{method}_quant_seconds"] = time.perf_counter() - t
        qm = dequantized_copy(model, tensors)
        out[method] = evaluate(qm, cfg, env, modes=modes, max_val_tokens=a.max_val_tokens, autocast_dtype=amp)
        path = Path(a.run_dir) / f"dev_{method}_int{q.matrix_bits}.pgart"
        save_model_artifact(path, model, tensors, q)
        out[f"{method}_artifact_bytes"] = artifact_bytes(path)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
