"""Training checkpoints: everything a killed run needs to continue bit-identically (on CPU).

A checkpoint is a plain dict saved with torch.save and loaded with weights_only=True (no pickled
code): model state of the uncompiled module, optimizer states, EMA shadow, loader state, RNG states
(python, numpy, torch CPU and CUDA), step, consumed training seconds, config dict and its hash.
Writes are atomic (temp file, fsync, rename), so a kill mid-write leaves the previous checkpoint.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pgolf.files import atomic_open

CHECKPOINT_VERSION = 1


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


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(p) as fh:
        torch.save({"version": CHECKPOINT_VERSION, **payload}, fh)


def load_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no checkpoint (was the run started with checkpoints enabled?)")
    try:
        ck = torch.load(p, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise ValueError(f"{p}: unreadable checkpoint ({type(exc).__name__}: {str(exc)[:200]})") from None
    if not isinstance(ck, dict) or ck.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"{p}: unsupported checkpoint version {ck.get('version') if isinstance(ck, dict) else '?'}")
    return ck
