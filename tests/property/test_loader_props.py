"""Property tests for pgolf.data.loader: cursor permutations, world-size invariance, state round trips."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pgolf.config import DataConfig
from pgolf.data.loader import CoprimeLoader, SequentialLoader, ShardCursor
from pgolf.data.shards import shard_name, write_shard

SEQ = 8
G = 16
SIZES = [300, 5, 120, 9, 400, 0, 200, 64]
CFG = DataConfig(mix_min_shards=2, mix_max_shards=5, progress_batches=3)
LOADERS = {"coprime": CoprimeLoader, "sequential": SequentialLoader}
# (world_size, grad_accum) pairs with W * A dividing G = 16
SPLITS = [(w, a) for w in (1, 2, 4, 8, 16) for a in (1, 2, 4, 8, 16) if G % (w * a) == 0]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """Train shards with random token ids (module scope: hypothesis re-runs the test body many times)."""
    d = tmp_path_factory.mktemp("loader_props")
    rng = np.random.default_rng(1234)
    for i, n in enumerate(SIZES):
        write_shard(d / shard_name("train", i), rng.integers(0, 1024, size=n))
    return d


def make(kind: str, d: Path, rank: int = 0, world: int = 1, accum: int = 1):
    return LOADERS[kind](d, seq_len=SEQ, batch_tokens=SEQ * G, rank=rank, world_size=world, grad_accum=accum,
                         data_cfg=CFG, vocab_size=1024)


def rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, y[:, -1:]], dim=1)  # (n, L + 1)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(2, 5000), seq_len=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_cursor_visits_every_block_once(n, seq_len, seed):
    if (n - 1) // seq_len == 0:  # not eligible: the cursor refuses
        with pytest.raises(ValueError):
            ShardCursor.create(np.random.default_rng(seed), n, seq_len)
        return
    cur = ShardCursor.create(np.random.default_rng(seed), n, seq_len)
    assert 0 <= cur.phase <= min(seq_len - 1, n - seq_len - 1)
    assert cur.blocks == (n - 1 - cur.phase) // seq_len >= 1
    assert 0 <= cur.start < cur.blocks and 1 <= cur.stride and np.gcd(cur.stride, cur.blocks) == 1
    offsets = [cur.next_offset() for _ in range(cur.blocks)]
    assert sorted((o - cur.phase) // seq_len for o in offsets) == list(range(cur.blocks))
    assert all((o - cur.phase) % seq_len == 0 and 0 <= o and o + seq_len + 1 <= n for o in offsets)
    assert cur.remaining == 0


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(sorted(LOADERS)), split=st.sampled_from(SPLITS), steps=st.integers(1, 6))
def test_every_split_trains_on_the_same_windows(data_dir, kind, split, steps):
    """For any (W, A): micro-batch a of rank r is the reference list's windows[r + W*a :: W*A]."""
    world, accum = split
    ref = make(kind, data_dir)
    ranks = [make(kind, data_dir, r, world, accum) for r in range(world)]
    for _ in range(steps):
        glob = rows(*ref.next_step()[0])  # (G, L + 1)
        union = Counter()
        for r, loader in enumerate(ranks):
            for a, (x, y) in enumerate(loader.next_step()):
                assert x.shape == y.shape == (G // (world * accum), SEQ)
                assert torch.equal(y[:, :-1], x[:, 1:])
                got = rows(x, y)
                assert torch.equal(got, glob[r + world * a::world * accum])
                union.update(tuple(v) for v in got.tolist())
        assert union == Counter(tuple(v) for v in glob.tolist())


@settings(max_examples=20, deadline=None)
@given(kind=st.sampled_from(sorted(LOADERS)), split=st.sampled_from(SPLITS), k=st.integers(0, 8),
       n=st.integers(1, 6), data=st.data())
def test_state_round_trip(data_dir, kind, split, k, n, data):
    world, accum = split
    rank = data.draw(st.integers(0, world - 1))
    straight = make(kind, data_dir, rank, world, accum)
    for _ in range(k):
        straight.next_step()
    state = json.loads(json.dumps(straight.state_dict()))
    resumed = make(kind, data_dir, rank, world, accum)
    resumed.load_state_dict(state)
    for _ in range(n):
        for (x, y), (p, q) in zip(straight.next_step(), resumed.next_step()):
            assert torch.equal(x, p) and torch.equal(y, q)
    assert resumed.steps_taken == straight.steps_taken == k + n
