"""Selective +/-1 pruning and self-generated calibration (quant/prune.py, quant/calib.py)."""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

from pgolf.quant.calib import generate_batch, hessian_inputs, rank_batches, self_generated_batches
from pgolf.quant.prune import apply_prune, prune_candidates, prune_to_target
from pgolf.runtime import DistEnv
from tests.helpers.models import perturbed_tiny_model


def _tensors(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(-3, 4, (4, 6), generator=g).to(torch.int8)
    b = torch.randint(-3, 4, (3, 5), generator=g).to(torch.int8)
    return {
        "a": ("gptq_int6", a, torch.tensor([0.5, 0.1, 0.3, 0.2], dtype=torch.float16)),
        "b": ("rtn_int6", b, torch.tensor([0.1, 0.4, 0.05], dtype=torch.float16)),
        "t": ("pctl_int8", torch.ones(2, 2, dtype=torch.int8), torch.ones(2, dtype=torch.float16)),  # not int6
        "g": ("fp16", torch.ones(3, dtype=torch.float16)),
    }


def test_candidates_are_the_unit_entries_of_int6_matrices_ordered_by_scale_squared():
    t = _tensors()
    names, tid, flat, val = prune_candidates(t, 6)
    assert names == ["a", "b"]
    n_ones = sum(int((t[n][1].abs() == 1).sum()) for n in names)
    assert tid.size == n_ones
    costs = [float(t[names[i]][2][f // t[names[i]][1].shape[1]]) ** 2 for i, f in zip(tid, flat, strict=True)]
    assert costs == sorted(costs)
    for i, f, v in zip(tid, flat, val, strict=True):
        assert int(t[names[i]][1].view(-1)[f]) == v and abs(v) == 1
    # ties (same row scale) are broken by tensor order then flat index: the first run of equal costs
    same = [k for k in range(len(costs)) if costs[k] == costs[0]]
    assert list(flat[same]) == sorted(flat[same])


def test_apply_prune_zeroes_exactly_the_first_n_and_leaves_inputs_alone():
    t = _tensors()
    before = {k: v[1].clone() for k, v in t.items()}
    names, tid, flat, _ = prune_candidates(t, 6)
    out = apply_prune(t, names, tid, flat, 5)
    changed = sum(int((out[n][1] != t[n][1]).sum()) for n in names)
    assert changed == 5
    for k in t:
        assert torch.equal(t[k][1], before[k])  # no in-place change of the caller's tensors
    assert out["t"] is t["t"] and out["g"] is t["g"]


@pytest.mark.parametrize("target", [10_000, 95, 80, 10])
def test_prune_to_target_finds_the_smallest_sufficient_n(target):
    t = _tensors()
    names, _, _, _ = prune_candidates(t, 6)

    def size_fn(x):  # monotone stand-in: 100 bytes minus one per zero in the int6 matrices
        return 100 - sum(int((x[n][1] == 0).sum()) for n in names) + sum(int((t[n][1] == 0).sum()) for n in names)

    out, info = prune_to_target(t, 6, size_fn, target, rel_tol=0.0, max_evals=64)
    n = info["pruned"]
    assert info["size"] == size_fn(out)
    if target >= 100:
        assert n == 0 and info["within_target"]
    elif 100 - info["candidates"] > target:
        assert n == info["candidates"] and not info["within_target"]
    else:
        assert info["size"] <= target and n == 100 - target  # the smallest n that fits
        assert info["evaluations"] <= 3 + 2 * int(np.ceil(np.log2(info["candidates"] + 1)))


def test_prune_on_real_compressed_sizes(tmp_path):
    """With a target between the pruned and unpruned artifact sizes, the result fits and is minimal-ish."""
    from dataclasses import replace

    from pgolf.model.roles import roles_by_name
    from pgolf.presets import resolve
    from pgolf.quant.container import encode_artifact
    from pgolf.quant.schemes import quantize_model

    cfg, _ = resolve("tiny", [], env={})
    model = perturbed_tiny_model().float()
    q = replace(cfg.quant, method="rtn", compressor="lzma")
    tensors = quantize_model(model, q)
    roles = roles_by_name(model)

    def size_fn(t):
        return len(encode_artifact({}, t, "lzma", roles=roles)) + 1000

    full = size_fn(tensors)
    _, all_info = prune_to_target(tensors, 6, size_fn, 1)
    target = (full + all_info["size"]) // 2
    out, info = prune_to_target(tensors, 6, size_fn, target)
    assert 0 < info["pruned"] < info["candidates"]
    assert info["size"] == size_fn(out) <= target < full
    assert info["evaluations"] <= 12  # the entropy proxy steers the search: few real compressions


def test_entropy_model_matches_a_direct_recount():
    from pgolf.quant.prune import EntropyModel
    from pgolf.quant.schemes import entropy_bytes

    t = _tensors(3)
    names, tid, flat, val = prune_candidates(t, 6)
    est = EntropyModel(t, names, tid, val)
    for n in (0, 3, len(tid)):
        pruned = apply_prune(t, names, tid, flat, n)
        direct = entropy_bytes({k: pruned[k] for k in names})["symbols"]
        assert est(n) == pytest.approx(direct, rel=1e-9, abs=1e-9)


def test_rank_batches_cover_every_sequence_once():
    for world in (1, 2, 3, 5):
        seen = []
        for r in range(world):
            for k, a, b in rank_batches(11, 3, DistEnv(rank=r, world_size=world)):
                assert k % world == r and a == 3 * k
                seen.extend(range(a, b))
        assert sorted(seen) == list(range(11))


def test_self_generated_sequences_are_seeded_and_world_size_invariant():
    from pgolf.presets import resolve

    cfg, _ = resolve("tiny", ["quant.calib_seqs=5", "quant.calib_batch=2", "quant.calib_seq_len=12"], env={})
    model = perturbed_tiny_model().float()
    one = self_generated_batches(model, cfg.quant, vocab_size=cfg.model.vocab_size, seed=7, env=DistEnv())
    again = self_generated_batches(model, cfg.quant, vocab_size=cfg.model.vocab_size, seed=7, env=DistEnv())
    other = self_generated_batches(model, cfg.quant, vocab_size=cfg.model.vocab_size, seed=8, env=DistEnv())
    assert [tuple(s.shape) for s in one] == [(2, 12), (2, 12), (1, 12)]
    assert all(torch.equal(a, b) for a, b in zip(one, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(one, other, strict=True))
    r0 = self_generated_batches(model, cfg.quant, vocab_size=cfg.model.vocab_size, seed=7,
                                env=DistEnv(rank=0, world_size=2))
    r1 = self_generated_batches(model, cfg.quant, vocab_size=cfg.model.vocab_size, seed=7,
                                env=DistEnv(rank=1, world_size=2))
    assert torch.equal(torch.cat(r0 + r1)[[0, 1, 3, 4, 2]], torch.cat(one))  # rows s0 s1 s4 | s2 s3
    assert [tuple(s.shape) for s in hessian_inputs(one)] == [(2, 11), (2, 11), (1, 11)]


@pytest.mark.parametrize("kv_cache", [True, False])
def test_generation_samples_from_the_tempered_model_distribution(kv_cache):
    """A model whose next-token distribution is fixed: empirical frequencies match softmax(logits / T)."""

    class Fixed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.logits = torch.tensor([2.0, 1.0, 0.0, -1.0])

        def forward_hidden(self, idx):
            return torch.zeros(idx.shape[0], idx.shape[1], 1)

        def new_kv_cache(self, max_len):
            return types.SimpleNamespace(pos=0, max_len=max_len)

        def decode_hidden(self, idx, cache):
            new = idx.shape[1] - cache.pos
            assert new == 1 and idx.shape[1] <= cache.max_len  # one new position per step, within the cache
            cache.pos = idx.shape[1]
            return torch.zeros(idx.shape[0], new, 1)

        def logits_from_hidden(self, h):
            return self.logits.expand(h.shape[0], h.shape[1], 4)

    g = torch.Generator().manual_seed(0)
    x = generate_batch(Fixed(), 4000, 3, vocab_size=4, temperature=0.5, generator=g, device=torch.device("cpu"),
                       kv_cache=kv_cache)
    freq = torch.bincount(x[:, 1:].reshape(-1), minlength=4).double() / x[:, 1:].numel()
    want = torch.softmax(torch.tensor([2.0, 1.0, 0.0, -1.0], dtype=torch.float64) / 0.5, 0)
    assert torch.allclose(freq, want, atol=0.015)
    first = torch.bincount(x[:, 0], minlength=4).double() / x.shape[0]
    assert torch.allclose(first, torch.full((4,), 0.25, dtype=torch.float64), atol=0.03)  # uniform first token
