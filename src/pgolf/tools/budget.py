"""`pgolf budget`: parameter count per role and a packed-size estimate at the configured bit widths, or the
measured code + artifact bytes of a run.

The estimate is the size of the quantized values packed at their bit width plus one fp16 scale per
row, before entropy coding, at the bit width the role policy gives each role (`ROLE_POLICY`: matrices
at quant.matrix_bits, tables at quant.embed_bits, everything else fp16). `--run-dir` measures the real
artifact instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from pgolf.config import RunConfig
from pgolf.model.gpt import GPT
from pgolf.model.roles import Role, role_of, role_policy
from pgolf.quant.container import artifact_bytes, read_artifact
from pgolf.rundir import ARTIFACT, Run, load_config
from pgolf.tools.args import EXIT_FAIL, add_config_args, add_json, resolve_args
from pgolf.tools.bundle import run_code_bytes

BYTES_LIMIT_NOTE = "decimal bytes; the challenge cap is 16,000,000 including code"


def model_budget(cfg: RunConfig) -> dict:
    try:
        with torch.device("meta"):
            model = GPT(cfg.model)
    except (NotImplementedError, RuntimeError):  # an init op without a meta kernel: build on CPU
        model = GPT(cfg.model)
    by_role = {r.value: 0 for r in Role}
    packed = {r.value: 0 for r in Role}
    for _, p in model.named_parameters():
        role = role_of(p)
        n = p.numel()
        by_role[role.value] += n
        rows = p.shape[0] if p.dim() == 2 else 1
        bits = role_policy(role).bits(cfg.quant)
        packed[role.value] += 2 * n if bits is None else (n * bits + 7) // 8 + 2 * rows
    total = sum(by_role.values())
    return {
        "preset": cfg.preset,
        "params_total": total,
        "params_by_role": {k: v for k, v in by_role.items() if v},
        "packed_bytes_by_role": {k: v for k, v in packed.items() if v},
        "packed_bytes_total": sum(packed.values()),
        "matrix_bits": cfg.quant.matrix_bits,
        "embed_bits": cfg.quant.embed_bits,
        "artifact_bytes_limit": cfg.budget.artifact_bytes_limit,
    }


def run_budget(run_dir, *, code_bytes: int) -> dict:
    """Measured bytes of a quantized run: its artifact file + the code, against the config's limit. The
    artifact is read and checked (digest, manifest, made from the run's model_final.pt) first: a damaged or
    stale file is never counted as valid."""

    cfg = load_config(run_dir)
    path = Path(run_dir) / ARTIFACT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no artifact (run `pgolf quantize --run-dir {run_dir}` first)")
    manifest, _ = read_artifact(path)
    Run(run_dir).check_artifact_manifest(manifest)
    model = artifact_bytes(path)
    total = model + code_bytes
    limit = cfg.budget.artifact_bytes_limit
    return {"run_dir": str(run_dir), "artifact": str(path), "model_bytes": model, "code_bytes": code_bytes,
            "total_bytes": total, "limit_bytes": limit, "headroom_bytes": limit - total, "valid": total <= limit,
            "compressor": manifest["compressor"]}


def format_run_budget(b: dict) -> str:
    verdict = "valid" if b["valid"] else "INVALID: over the limit"
    return (f"code {b['code_bytes']:,} + model {b['model_bytes']:,} ({b['compressor']}) = {b['total_bytes']:,} bytes "
            f"of {b['limit_bytes']:,} (decimal), headroom {b['headroom_bytes']:,}: {verdict}")


def format_budget(b: dict) -> str:
    lines = [f"preset: {b['preset']}", f"params_total: {b['params_total']:,}"]
    for role, n in b["params_by_role"].items():
        lines.append(f"  {role:7s} {n:>12,} params  {b['packed_bytes_by_role'][role]:>12,} packed bytes")
    lines.append(f"packed_bytes_total: {b['packed_bytes_total']:,} (int{b['matrix_bits']} matrices, "
                 f"int{b['embed_bits']} tables, fp16 rest; before entropy coding; {BYTES_LIMIT_NOTE}: "
                 f"{b['artifact_bytes_limit']:,})")
    return "\n".join(lines)


def cmd_budget(args) -> int:
    if args.run_dir:
        code = args.code_bytes if args.code_bytes is not None else run_code_bytes(args.run_dir)
        b = run_budget(args.run_dir, code_bytes=code)
        print(json.dumps(b, indent=2) if args.json else format_run_budget(b))
        return 0 if b["valid"] else EXIT_FAIL
    cfg, _ = resolve_args(args)
    b = model_budget(cfg)
    print(json.dumps(b, indent=2) if args.json else format_budget(b))
    return 0


def add_parser(verbs) -> None:
    bu = verbs.add_parser("budget", help="parameter budget of a config, or code + artifact bytes of a run")
    add_config_args(bu)
    bu.add_argument("--run-dir", default=None, help="measure this run's artifact + code against the limit")
    bu.add_argument("--code-bytes", type=int, default=None, help="with --run-dir: code bytes (default: bundle size)")
    add_json(bu)
    bu.set_defaults(fn=cmd_budget)
