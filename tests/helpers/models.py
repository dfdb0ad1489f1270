"""Small models and synthetic scoring data shared by the scoring, causality, audit and distributed tests."""

from __future__ import annotations

import numpy as np
import torch

from pgolf.data.tokenizer import ByteLUTs, luts_to_torch
from pgolf.model.gpt import GPT
from pgolf.presets import resolve

# The scoring tests' geometry: window T, stride S, batch of BW windows, SLOT focal length, stream of N tokens.
T, S, BW, FOCAL, N = 48, 16, 4, 16, 300


# stream indices m to flip: batch boundary (target 96 = first of batch 1), window boundary (target 128
# = first of window 6), inside scored regions, and the warm-segment boundary (target 160) for 2 segments
FLIPS = (97, 129, 150, 161, 250)


def make_model():
    return perturbed_tiny_model()


def make_data(n=N, V=512, seed=0):
    """A Zipf-distributed synthetic token stream and random byte LUTs (no tokenizer needed)."""
    rng = np.random.default_rng(seed)
    pz = 1.0 / np.arange(1, V + 1) ** 1.1
    stream = rng.choice(V, size=n, p=pz / pz.sum()).astype(np.int64)
    luts = ByteLUTs(base_bytes=rng.integers(1, 4, V).astype(np.int64), has_leading_space=rng.random(V) < 0.3,
                    is_boundary=rng.random(V) < 0.05)
    return stream, luts_to_torch(luts)


def flipped(stream, m, V=512):
    s = stream.copy()
    s[m] = (s[m] + 1) % V
    return s


def perturbed_tiny_model(*sets: str):
    """The tiny-preset GPT in float64, eval mode, with seeded perturbed weights (o/down are zero at init,
    so an unperturbed model would be a trivial function of its input)."""
    cfg, _ = resolve("tiny", list(sets), env={})
    torch.manual_seed(0)
    m = GPT(cfg.model).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m


# Score settings of the causality and audit tests (windows, SLOT cascade, TTT chunks) on the tiny model.
CAUSALITY_SETS = ["score.seq_len=48", "score.sliding.stride=16", "score.sliding.batch_windows=4", "score.slot.focal=16",
                  "score.slot.phase_iters=5,18", "score.slot.phase_history=10,20", "score.slot.phase_alpha=0,0.5",
                  "score.ttt.chunk_tokens=64", "score.ttt.epochs=2", "score.ttt.lr=0.02", "score.ttt.batch_seqs=2"]


BOS = 1


def make_doc_data(lengths=(40, 7, 90, 3, 65, 30, 120, 12), V=512, seed=0, lead=0):
    """A synthetic stream of documents: each starts with BOS (id 1) and holds length - 1 Zipf tokens that are
    never BOS; `lead` tokens of a document fragment come first (a stream that does not start at a BOS)."""
    rng = np.random.default_rng(seed)
    pz = 1.0 / np.arange(1, V + 1) ** 1.1
    pz[BOS] = 0.0
    pz /= pz.sum()
    parts = [rng.choice(V, size=lead, p=pz)] if lead else []
    for n in lengths:
        parts.append(np.concatenate([[BOS], rng.choice(V, size=n - 1, p=pz)]))
    stream = np.concatenate(parts).astype(np.int64)
    luts = ByteLUTs(base_bytes=rng.integers(1, 4, V).astype(np.int64), has_leading_space=rng.random(V) < 0.3,
                    is_boundary=np.isin(np.arange(V), [0, 1, 2, 3]))
    return stream, luts_to_torch(luts)
