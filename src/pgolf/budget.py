"""`pgolf budget`: parameter count per role and a packed-size estimate at the configured bit widths.

The estimate is the size of the quantized values packed at their bit width plus one fp16 scale per
row, before entropy coding: matrices at quant.matrix_bits, embedding tables (and an untied head) at
quant.embed_bits, everything else fp16. The real artifact (issue 4) is measured, not estimated.
"""

from __future__ import annotations

import torch

from pgolf.config import RunConfig
from pgolf.model.gpt import GPT
from pgolf.model.roles import Role, role_of

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
        if role is Role.MATRIX:
            packed[role.value] += (n * cfg.quant.matrix_bits + 7) // 8 + 2 * rows
        elif role in (Role.EMBED, Role.HEAD):
            packed[role.value] += (n * cfg.quant.embed_bits + 7) // 8 + 2 * rows
        else:
            packed[role.value] += 2 * n
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
    artifact is read and checked (digest, manifest) first: a damaged file is never counted as valid."""
    from pathlib import Path

    from pgolf.quant.artifact import RUN_ARTIFACT, artifact_bytes, read_artifact
    from pgolf.train.loop import load_run_config

    cfg = load_run_config(run_dir)
    path = Path(run_dir) / RUN_ARTIFACT
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no artifact (run `pgolf quantize --run-dir {run_dir}` first)")
    manifest, _ = read_artifact(path)
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
