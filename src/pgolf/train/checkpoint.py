"""Training checkpoints: everything a killed run needs to continue bit-identically (on CPU).

A checkpoint is a plain dict saved with torch.save and loaded with weights_only=True (no pickled
code): model state of the uncompiled module, optimizer states, EMA shadow, loader state, RNG states
(python, numpy, torch CPU and CUDA), step, consumed training seconds, config dict and its hash, and a
sha256 `digest` of all of that (every tensor's bytes, every value), so a flipped bit anywhere in the data
is refused rather than trained on. Writes are atomic (temp file, fsync, rename; a full disk removes the
temp file), so a failed or killed write leaves the previous checkpoint. Loading checks the file, the
digest, every key's type, the config hash, and that each part fits the run (model, optimizer, EMA,
loader, RNG); any problem is one `CheckpointError` line naming the file.
"""

from __future__ import annotations

import hashlib
import math
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf.errors import PgolfError
from pgolf.files import atomic_open, problem
from pgolf.runtime import load_torch_file

CHECKPOINT_VERSION = 2
"""2 adds the digest; version 1 checkpoints (no digest) still load."""
KEYS = {"model": dict, "optim": dict, "ema": (dict, type(None)), "loader": dict, "rng": dict, "step": int,
        "qat_bits": int, "train_seconds": (int, float), "val_history": list, "config": dict, "config_hash": str}
"""Every key a checkpoint holds besides version and digest, with its type."""


class CheckpointError(PgolfError, ValueError):
    """A checkpoint that cannot be resumed from; one line naming the file and the problem."""


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def digest(obj: Any) -> str:
    """sha256 over a checkpoint's contents: structure, keys, every scalar and every tensor's dtype, shape and
    bytes, in order."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous()
            h.update(f"T{t.dtype}{tuple(t.shape)};".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        elif isinstance(x, dict):
            h.update(f"D{len(x)};".encode())
            for k, v in x.items():
                h.update(f"{type(k).__name__}:{k!r};".encode())
                walk(v)
        elif isinstance(x, list | tuple):
            h.update(f"{type(x).__name__[0]}{len(x)};".encode())
            for v in x:
                walk(v)
        else:
            h.update(f"{type(x).__name__}:{x!r};".encode())

    walk(obj)
    return h.hexdigest()


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    body = {"version": CHECKPOINT_VERSION, **payload}
    with atomic_open(p) as fh:
        torch.save({**body, "digest": digest(body)}, fh)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    """The checkpoint's dict, its digest and the type of every key checked (CheckpointError otherwise)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no checkpoint (was the run started with checkpoints enabled?)")
    ck = load_torch_file(p, "checkpoint", CheckpointError, map_location)
    version = ck.get("version") if isinstance(ck, dict) else None
    if version not in (1, CHECKPOINT_VERSION):
        raise CheckpointError(f"{p}: not a pgolf checkpoint (version {version!r}; expected {CHECKPOINT_VERSION})")
    if version == CHECKPOINT_VERSION:
        body = {k: v for k, v in ck.items() if k != "digest"}
        if not isinstance(ck.get("digest"), str) or ck["digest"] != digest(body):
            raise CheckpointError(f"{p}: damaged checkpoint (its contents do not match the digest it was saved with)")
    missing = [k for k in KEYS if k not in ck]
    if missing:
        raise CheckpointError(f"{p}: missing key(s) {', '.join(missing)}")
    wrong = [k for k, t in KEYS.items() if not isinstance(ck[k], t) or (t is int and isinstance(ck[k], bool))]
    if wrong:
        raise CheckpointError(f"{p}: wrong type for key(s) {', '.join(wrong)}")
    if ck["step"] < 0 or not math.isfinite(ck["train_seconds"]) or ck["train_seconds"] < 0 or not (
            ck["qat_bits"] == 0 or 2 <= ck["qat_bits"] <= 8):
        raise CheckpointError(f"{p}: step {ck['step']}, train_seconds {ck['train_seconds']} or qat_bits "
                              f"{ck['qat_bits']} out of range")
    return ck


def _optimizer_fits(opt: Any) -> None:
    """Every per-parameter state (momentum, Adam moments and step) is a tensor, of its parameter's shape
    unless a scalar."""
    for o in (getattr(opt, "muon", None), getattr(opt, "adamw", None)):
        stray = [k for k in ({} if o is None else o.state) if not isinstance(k, torch.Tensor)]
        if stray:  # torch keeps state it cannot match to a parameter under the saved key
            raise ValueError(f"state for parameter(s) {stray[:3]} that the optimizer does not have")
        for group in [] if o is None else o.param_groups:
            for prm in group["params"]:
                for k, v in o.state.get(prm, {}).items():
                    if not isinstance(v, torch.Tensor) or (v.dim() and v.shape != prm.shape):
                        got = tuple(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__
                        raise ValueError(f"state {k!r} is {got}, its parameter {tuple(prm.shape)}")


def _ema_fits(ema: Any, state: dict) -> None:
    shadow = state["shadow"]
    if not isinstance(shadow, list) or [tuple(t.shape) for t in shadow] != [tuple(t.shape) for t in ema.shadow]:
        raise ValueError("the EMA shadow's tensors do not have the model's parameter shapes")


def restore(ck: dict[str, Any], path: str | os.PathLike, *, config_hash: str, model: torch.nn.Module, opt: Any,
            ema: Any, loader: Any) -> None:
    """Load a checked checkpoint into the run's model, optimizers, EMA, loader and RNGs; a part that does not
    fit (another config, model, optimizer or shard set) is one CheckpointError line naming it."""
    if ck["config_hash"] != config_hash:
        raise CheckpointError(f"{path}: made with config {ck['config_hash'][:16]}, the run's config.json is "
                              f"{config_hash[:16]} (another run)")
    parts = [("model", lambda: model.load_state_dict(ck["model"])),
             ("optim", lambda: (opt.load_state_dict(ck["optim"]), _optimizer_fits(opt))),
             ("ema", lambda: ema is None or (_ema_fits(ema, ck["ema"]), ema.load_state_dict(ck["ema"]))),
             ("loader", lambda: loader.load_state_dict(ck["loader"])),
             ("rng", lambda: set_rng_state(ck["rng"]))]
    for key, load in parts:
        if key == "ema" and ema is not None and ck["ema"] is None:
            raise CheckpointError(f"{path}: key ema: no EMA state, but the run uses EMA")
        try:
            load()
        except (KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise CheckpointError(f"{path}: key {key} does not fit this run ({problem(exc)})") from None
