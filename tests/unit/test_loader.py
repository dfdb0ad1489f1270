"""Unit tests for pgolf.data.loader on small synthetic shards (CPU, fast)."""

from __future__ import annotations

import json
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pgolf.config import DataConfig
from pgolf.data.loader import (
    FNV_PRIME,
    CoprimeLoader,
    SequentialLoader,
    ShardCursor,
    TrainLoader,
    build_train_loader,
    shard_seed,
)
from pgolf.data.shards import ShardError, shard_name, write_shard

SEQ = 8
G = 16
BATCH = SEQ * G  # 128 tokens per step
# Token counts per train shard: 5 and 0 are too small for a window of SEQ + 1 = 9 tokens; 9 is exactly one.
SIZES = [300, 5, 120, 9, 400, 0, 200, 64]
ELIGIBLE = [i for i, n in enumerate(SIZES) if (n - 1) // SEQ > 0]
VOCAB = 1 << 16
CFG = DataConfig(mix_min_shards=2, mix_max_shards=5, progress_batches=3)


def make_shards(directory: Path, sizes=SIZES) -> list[np.ndarray]:
    """Write train shards whose tokens are unique across all shards (shard i holds base_i + arange(N_i)),
    so a window's content identifies its shard and offset. Also a val shard, which loaders must ignore."""
    tokens, base = [], 0
    for i, n in enumerate(sizes):
        t = (base + np.arange(n)).astype(np.int64)
        write_shard(directory / shard_name("train", i), t)
        tokens.append(t)
        base += n
    write_shard(directory / shard_name("val", 0), np.arange(50))
    return tokens


@pytest.fixture
def shard_dir(tmp_path: Path) -> tuple[Path, list[np.ndarray]]:
    d = tmp_path / "data"
    return d, make_shards(d)


def coprime(d, *, rank=0, world=1, accum=1, cfg=CFG, seq=SEQ, batch=BATCH, vocab=VOCAB) -> CoprimeLoader:
    return CoprimeLoader(d, seq_len=seq, batch_tokens=batch, rank=rank, world_size=world, grad_accum=accum,
                         data_cfg=cfg, vocab_size=vocab)


def sequential(d, *, rank=0, world=1, accum=1, seq=SEQ, batch=BATCH) -> SequentialLoader:
    return SequentialLoader(d, seq_len=seq, batch_tokens=batch, rank=rank, world_size=world, grad_accum=accum,
                            data_cfg=DataConfig(loader="sequential"), vocab_size=VOCAB)


def full_rows(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, L) inputs + (n, L) targets -> (n, L + 1) windows."""
    return torch.cat([x, y[:, -1:]], dim=1)


def flat(batch) -> torch.Tensor:
    """All micro-batches of one rank's step, concatenated in accumulation order: (G/W, L + 1)."""
    return torch.cat([full_rows(x, y) for x, y in batch])


def window_id(row: torch.Tensor, tokens: list[np.ndarray]) -> tuple[int, int]:
    """(shard, offset) of a window, recovered from the unique token ids."""
    first = int(row[0])
    for i, t in enumerate(tokens):
        if len(t) and t[0] <= first <= t[-1]:
            return i, first - int(t[0])
    raise AssertionError(f"token {first} in no shard")


# --------------------------------------------------------------------------------------------------
# Seed, cursor, window content
# --------------------------------------------------------------------------------------------------


def test_shard_seed_is_fnv_over_names():
    assert shard_seed([]) == 0
    assert shard_seed(["a"]) == (97 * FNV_PRIME) % 2**64
    assert shard_seed(["ab"]) == (((97 * FNV_PRIME) % 2**64 ^ 98) * FNV_PRIME) % 2**64
    assert shard_seed(["ab"]) == shard_seed(["a", "b"])  # concatenated bytes, no separator
    assert shard_seed(["fineweb_train_000000.bin"]) != shard_seed(["fineweb_train_000001.bin"])


def test_cursor_cycle_is_permutation_of_blocks():
    rng = np.random.default_rng(0)
    for n in (9, 10, 17, 100, 257, 1000):
        cur = ShardCursor.create(rng, n, SEQ)
        assert 0 <= cur.phase <= min(SEQ - 1, n - SEQ - 1)
        assert cur.blocks == (n - 1 - cur.phase) // SEQ
        assert np.gcd(cur.stride, cur.blocks) == 1
        offsets = [cur.next_offset() for _ in range(cur.blocks)]
        assert cur.remaining == 0
        blocks = sorted((o - cur.phase) // SEQ for o in offsets)
        assert blocks == list(range(cur.blocks))
        assert all((o - cur.phase) % SEQ == 0 and o + SEQ + 1 <= n for o in offsets)
        with pytest.raises(IndexError):
            cur.next_offset()


def test_coprime_rows_are_shard_windows(shard_dir):
    d, tokens = shard_dir
    loader = coprime(d)
    for _ in range(6):
        batch = loader.next_step()
        assert len(batch) == 1
        x, y = batch[0]
        assert x.dtype == torch.int64 and y.dtype == torch.int64
        assert x.shape == (G, SEQ) and y.shape == (G, SEQ)
        assert torch.equal(y[:, :-1], x[:, 1:])
        assert len(loader.last_global_windows) == G
        for row in range(G):
            shard, off = loader.last_global_windows[row]
            assert shard in ELIGIBLE
            assert 0 <= off and off + SEQ + 1 <= SIZES[shard]
            t = torch.from_numpy(tokens[shard])
            assert torch.equal(x[row], t[off:off + SEQ])
            assert torch.equal(y[row], t[off + 1:off + SEQ + 1])


def test_coprime_windows_within_a_cursor_cycle_are_distinct(shard_dir):
    """Follow one shard's cursor through the loader: while it is not re-created, no window repeats."""
    d, _ = shard_dir
    loader = coprime(d)
    shard = 4  # the largest shard: 49 or 50 blocks, drawn often
    seen: list[int] = []
    cur = None
    for _ in range(30):
        loader.next_step()
        after = loader.cursors.get(shard)
        if cur is not None and after is not cur:  # re-created: the first cycle is over
            break
        cur = after
        seen.extend(off for s, off in loader.last_global_windows if s == shard)
        assert len(seen) == len(set(seen))
    assert cur is not None and len(seen) > 10
    assert sorted(seen) == sorted(cur.phase + ((cur.start + j * cur.stride) % cur.blocks) * SEQ
                                  for j in range(len(seen)))


# --------------------------------------------------------------------------------------------------
# Rank striding and accumulation
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world,accum", [(1, 2), (2, 1), (2, 2), (4, 1), (1, 4), (4, 4), (16, 1)])
def test_ranks_partition_the_global_list(shard_dir, world, accum):
    d, _ = shard_dir
    ref = coprime(d)
    ranks = [coprime(d, rank=r, world=world, accum=accum) for r in range(world)]
    per_micro = G // (world * accum)
    for _ in range(4):
        glob = flat(ref.next_step())  # (G, L+1) the global list, in order
        union = []
        for r, loader in enumerate(ranks):
            batch = loader.next_step()
            assert len(batch) == accum
            assert loader.last_global_windows == ref.last_global_windows
            for a, (x, y) in enumerate(batch):
                assert x.shape == (per_micro, SEQ)
                assert torch.equal(full_rows(x, y), glob[r + world * a::world * accum])
            mine = flat(batch)
            assert torch.equal(mine.sort(dim=0).values, glob[r::world].sort(dim=0).values)  # windows[r::W]
            union.extend(tuple(row.tolist()) for row in mine)
        assert Counter(union) == Counter(tuple(row.tolist()) for row in glob)


def test_one_rank_accum2_equals_two_ranks_accum1(shard_dir):
    d, _ = shard_dir
    for make in (coprime, sequential):
        single = make(d, world=1, accum=2)
        pair = [make(d, rank=r, world=2, accum=1) for r in range(2)]
        for _ in range(5):
            a = single.next_step()
            b = [loader.next_step() for loader in pair]
            flat_a = [t for x, y in a for t in (x, y)]  # rank-major, then accumulation
            flat_b = [t for batch in b for x, y in batch for t in (x, y)]
            assert len(flat_a) == len(flat_b) == 4
            assert all(torch.equal(u, v) for u, v in zip(flat_a, flat_b))


# --------------------------------------------------------------------------------------------------
# Determinism and state
# --------------------------------------------------------------------------------------------------


def test_same_shard_names_same_batches_anywhere(shard_dir, tmp_path):
    d, _ = shard_dir
    moved = tmp_path / "elsewhere" / "copy"
    shutil.copytree(d, moved)
    a, b, c = coprime(d), coprime(d), coprime(moved)
    for _ in range(5):
        ba, bb, bc = flat(a.next_step()), flat(b.next_step()), flat(c.next_step())
        assert torch.equal(ba, bb) and torch.equal(ba, bc)


def test_different_shard_list_different_batches(shard_dir, tmp_path):
    d, _ = shard_dir
    other = tmp_path / "other"
    shutil.copytree(d, other)
    (other / shard_name("train", 7)).unlink()  # drop the last shard
    a, b = coprime(d), coprime(other)
    assert a.shards.names[:-1] == b.shards.names
    assert any(not torch.equal(flat(a.next_step()), flat(b.next_step())) for _ in range(3))


@pytest.mark.parametrize("make", [coprime, sequential], ids=["coprime", "sequential"])
def test_state_round_trip_is_bit_identical(shard_dir, make):
    d, _ = shard_dir
    k, n = 4, 9
    straight = make(d, world=2, rank=1)
    first = make(d, world=2, rank=1)
    for _ in range(k):
        straight.next_step()
        first.next_step()
    state = json.loads(json.dumps(first.state_dict()))
    resumed = make(d, world=2, rank=1)
    resumed.load_state_dict(state)
    assert resumed.steps_taken == k
    for _ in range(n):
        expect, got = straight.next_step(), resumed.next_step()
        assert all(torch.equal(u, v) for (x, y), (p, q) in zip(expect, got) for u, v in ((x, p), (y, q)))
    assert resumed.state_dict() == json.loads(json.dumps(straight.state_dict()))


@pytest.mark.parametrize("make", [coprime, sequential], ids=["coprime", "sequential"])
def test_state_resumes_at_another_world_size(shard_dir, make):
    """The state holds no rank or world size: a 1-rank checkpoint resumes on rank 1 of 2 ranks."""
    d, _ = shard_dir
    one = make(d)
    for _ in range(3):
        one.next_step()
    r1 = make(d, rank=1, world=2, accum=2)
    r1.load_state_dict(json.loads(json.dumps(one.state_dict())))
    for _ in range(4):
        glob = flat(one.next_step())
        batch = r1.next_step()
        for a, (x, y) in enumerate(batch):
            assert torch.equal(full_rows(x, y), glob[1 + 2 * a::4])


def test_state_dict_is_plain_json(shard_dir):
    d, _ = shard_dir
    loader = coprime(d)
    loader.next_step()
    state = loader.state_dict()
    text = json.dumps(state)  # raises on numpy scalars
    assert json.loads(text) == state
    assert state["shards"] == [shard_name("train", i) for i in range(len(SIZES))]
    assert state["geometry"] == {"seq_len": SEQ, "global_seqs": G}
    assert state["steps_taken"] == 1


def test_state_refused_for_other_shards_or_geometry(shard_dir, tmp_path):
    d, _ = shard_dir
    state = coprime(d).state_dict()
    other = tmp_path / "other"
    make_shards(other, SIZES[:-1])
    with pytest.raises(ValueError, match="shard list differs"):
        coprime(other).load_state_dict(state)
    with pytest.raises(ValueError, match="geometry"):
        coprime(d, batch=2 * BATCH).load_state_dict(state)
    with pytest.raises(ValueError, match="geometry"):
        coprime(d, seq=16, batch=BATCH).load_state_dict(state)
    with pytest.raises(ValueError, match="kind 'coprime' into a sequential loader"):
        sequential(d).load_state_dict(state)
    with pytest.raises(ValueError, match="shard list differs"):
        sequential(other).load_state_dict(sequential(d).state_dict())


# --------------------------------------------------------------------------------------------------
# Mixing schedule
# --------------------------------------------------------------------------------------------------


def test_shards_mixed_ramp_from_min_to_max(shard_dir):
    d, _ = shard_dir
    loader = coprime(d)  # mix 2 -> 5 over 3 batches; 6 eligible shards, G = 16
    assert loader.mix_bounds() == (2, 5)
    distinct = []
    for _ in range(6):
        loader.next_step()
        distinct.append(len({s for s, _ in loader.last_global_windows}))
    assert distinct == [2, 3, 4, 5, 5, 5]


def test_mix_bounds_clipped_to_eligible_and_g(shard_dir):
    d, _ = shard_dir
    wide = coprime(d, cfg=DataConfig(mix_min_shards=3, mix_max_shards=40, progress_batches=1))
    assert wide.mix_bounds() == (3, len(ELIGIBLE))
    wide.next_step()
    assert len({s for s, _ in wide.last_global_windows}) == 3
    wide.next_step()
    assert len({s for s, _ in wide.last_global_windows}) == len(ELIGIBLE)
    tiny = coprime(d, batch=4 * SEQ, cfg=DataConfig(mix_min_shards=5, mix_max_shards=8))  # G = 4
    assert tiny.mix_bounds() == (4, 4)
    tiny.next_step()
    assert len({s for s, _ in tiny.last_global_windows}) == 4  # every window from a different shard


def test_train_shards_uses_first_k(shard_dir):
    d, _ = shard_dir
    loader = coprime(d, cfg=DataConfig(train_shards=3, mix_min_shards=2, mix_max_shards=2))
    assert loader.describe()["shards"] == 3
    assert loader.eligible == [0, 2]
    for _ in range(5):
        loader.next_step()
        assert {s for s, _ in loader.last_global_windows} == {0, 2}
    with pytest.raises(ValueError, match="data.train_shards=9 but .* holds only 8"):
        coprime(d, cfg=DataConfig(train_shards=9))


def test_describe(shard_dir):
    d, _ = shard_dir
    info = coprime(d, world=2, accum=2).describe()
    assert info["kind"] == "coprime"
    assert (info["shards"], info["eligible_shards"], info["train_tokens"]) == (8, 6, sum(SIZES))
    assert (info["global_seqs"], info["seqs_per_micro"]) == (G, 4)
    info = sequential(d).describe()
    assert (info["kind"], info["shards"], info["eligible_shards"], info["train_tokens"]) == (
        "sequential", 8, 7, sum(SIZES))  # every non-empty shard feeds the stream


def test_build_train_loader_picks_kind(shard_dir):
    d, _ = shard_dir
    for kind, cls in (("coprime", CoprimeLoader), ("sequential", SequentialLoader)):
        loader = build_train_loader(d, seq_len=SEQ, batch_tokens=BATCH, rank=0, world_size=1, grad_accum=1,
                                    data_cfg=DataConfig(loader=kind), vocab_size=VOCAB)
        assert isinstance(loader, cls) and isinstance(loader, TrainLoader)


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [coprime, sequential], ids=["coprime", "sequential"])
def test_geometry_errors(shard_dir, make):
    d, _ = shard_dir
    with pytest.raises(ValueError, match=r"train.batch_tokens=130 is not a positive multiple of train.seq_len=8"):
        make(d, batch=130)
    with pytest.raises(ValueError, match=r"G = .* = 16 is not divisible by world_size \* grad_accum = 3 \* 1"):
        make(d, world=3)
    with pytest.raises(ValueError, match=r"world_size \* grad_accum = 4 \* 8 = 32"):
        make(d, world=4, accum=8)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        make(d, rank=2, world=2)


def test_no_eligible_shard_names_directory(tmp_path):
    d = tmp_path / "small"
    make_shards(d, [3, 8, 0])
    with pytest.raises(ValueError, match=f"no training shard in {d} holds a window"):
        coprime(d)


def test_missing_directory_is_shard_error(tmp_path):
    with pytest.raises(ShardError, match="data directory not found"):
        coprime(tmp_path / "nope")


@pytest.mark.parametrize("make", [coprime, sequential], ids=["coprime", "sequential"])
def test_token_out_of_range_names_file(tmp_path, make):
    d = tmp_path / "bad"
    toks = np.arange(200) % 50
    toks[77] = 50
    write_shard(d / shard_name("train", 0), toks)
    loader = make(d, vocab=50) if make is coprime else SequentialLoader(
        d, seq_len=SEQ, batch_tokens=BATCH, vocab_size=50)
    with pytest.raises(ShardError, match=r"fineweb_train_000000.bin .*token id 50 at token index 77 is out of "
                                         r"range for vocab size 50"):
        loader.next_step()


def test_open_all_checks_every_shard_up_front(tmp_path):
    d = tmp_path / "bad_late"
    write_shard(d / shard_name("train", 0), np.arange(200) % 50)
    write_shard(d / shard_name("train", 1), np.full(3, 60))  # too small to be drawn, still checked
    for loader in (coprime(d, vocab=50), SequentialLoader(d, seq_len=SEQ, batch_tokens=BATCH, vocab_size=50)):
        with pytest.raises(ShardError, match="fineweb_train_000001.bin .*token id 60"):
            loader.open_all()
    coprime(d, vocab=50).next_step()  # lazily, the bad tail shard is never opened by the coprime loader


# --------------------------------------------------------------------------------------------------
# Sequential loader
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("world,accum,rank", [(1, 1, 0), (2, 2, 1), (4, 1, 3)])
def test_sequential_continues_stream_and_wraps(shard_dir, world, accum, rank):
    d, tokens = shard_dir
    stream = np.concatenate(tokens)  # the sorted shards back to back
    total = len(stream)
    step_tokens = G * SEQ + 1
    loader = sequential(d, rank=rank, world=world, accum=accum)
    steps = total // step_tokens + 3  # goes past the end at least once
    for t in range(steps):
        batch = loader.next_step()
        rows = flat(batch).numpy()
        # this rank's windows, in accumulation order: window indices r + W*a + W*A*j
        idx = [rank + world * a + world * accum * j for a in range(accum) for j in range(G // (world * accum))]
        for row, i in zip(rows, idx):
            start = t * step_tokens + i * SEQ
            np.testing.assert_array_equal(row, stream[np.arange(start, start + SEQ + 1) % total])
    assert loader.position == (steps * step_tokens) % total
    assert steps * step_tokens > total


def test_sequential_neighbour_windows_share_one_token(shard_dir):
    d, _ = shard_dir
    x, y = sequential(d).next_step()[0]
    assert torch.equal(y[:-1, -1], x[1:, 0])
    assert torch.equal(x[:, 0], torch.arange(G) * SEQ)  # unique ids = stream offsets
