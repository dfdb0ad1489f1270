"""Training-data loaders: which token windows every rank trains on at every optimizer step.

Two loaders share one interface (`TrainLoader`); `build_train_loader` picks one from `data.loader`.

Geometry ("same math at every world size")
    G = train.batch_tokens // train.seq_len global sequences per optimizer step. Each step draws ONE
    global list of G windows of seq_len + 1 tokens; the list depends only on the shard files, the
    step counter and the data config, never on rank, world size or accumulation. Rank r takes
    ``windows[r::W]`` (rank striding, docs/DESIGN.md#data-loader step 6), and micro-batch a of that rank takes
    every A-th of those, ``rank_windows[a::A]``, i.e. the global ``windows[r + W*a :: W*A]``.
    Striding the micro-batches too (instead of cutting consecutive chunks) makes the split a pure
    function of the "virtual rank" q = r + W*a out of W*A: 1 rank x accumulation 2 trains on exactly
    the same micro-batches, in the same order, as 2 ranks x accumulation 1. Whatever the split, the
    union of a step's windows is the same list, so the summed gradient is the same.

`CoprimeLoader` -- docs/DESIGN.md#data-loader (the multi-shard coprime-stride sampler of `[R1060]`), with
two deliberate differences: (a) the PCG64 seed hashes the shard FILE NAMES (basenames, sorted, UTF-8,
concatenated), not full paths, so the windows do not depend on where the data lives; (b) the shards
mixed per batch ramp from ``data.mix_min_shards`` to ``data.mix_max_shards`` instead of being derived
from the world size (8 -> 64 on 8 GPUs in the original), which would make the windows depend on W.
Both ends are still clipped to the number of eligible shards and to G. Where the spec is open: a
one-block cursor uses stride 1 without drawing; an exhausted cursor counts as 1 remaining block and is
re-created only when next pulled from; buckets pop from the front after their shuffle. Draw order per
step: shards, multinomial shares, shard-order permutation, cursor (re)creations, bucket and
interleave permutations.

`SequentialLoader` -- the naive baseline's single stream, world-size invariant (docs/DESIGN.md#data-loader).

Shards are opened lazily with `open_shard` (header and token range checked: a bad shard raises `ShardError`
naming the file; unusable data or state raises `LoaderError`); `open_all()` checks every shard up front, off
the clock. States are JSON and world-size free: a checkpoint written at 8 ranks resumes at 1 rank with the
same windows; a state that does not fit these shards and this geometry is refused, cursor by cursor.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from pgolf.config import DataConfig
from pgolf.data.shards import list_shards, open_shard, read_header
from pgolf.errors import PgolfError

FNV_PRIME = 1099511628211
_MASK64 = (1 << 64) - 1
STATE_VERSION = 1

Batch = list[tuple[torch.Tensor, torch.Tensor]]


class LoaderError(PgolfError, ValueError):
    """Training data or a loader state that cannot be used (one line naming the shards or key, and the problem)."""


@runtime_checkable
class TrainLoader(Protocol):
    """What the trainer needs from a loader."""

    steps_taken: int

    def next_step(self) -> Batch:
        """This rank's grad_accum micro-batches (x, y) for one step: int64 CPU (seqs_per_micro, seq_len); y = x + 1."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...

    def describe(self) -> dict: ...


def shard_seed(names: Sequence[str]) -> int:
    """FNV-1a-style 64-bit seed over the bytes of the names, in the given order (no separator).

    seed = 0; for every byte b: seed = (seed XOR b) * 1099511628211 mod 2^64 (from 0, not the FNV offset
    basis, as the reference does)."""
    seed = 0
    for name in names:
        for b in name.encode("utf-8"):
            seed = ((seed ^ b) * FNV_PRIME) & _MASK64
    return seed


def check_geometry(seq_len: int, batch_tokens: int, world_size: int, grad_accum: int, rank: int) -> int:
    """Validate the step geometry; return G, the global sequences per step."""
    if seq_len < 1:
        raise LoaderError(f"train.seq_len must be >= 1, got {seq_len}")
    if world_size < 1 or grad_accum < 1:
        raise LoaderError(f"world_size and grad_accum must be >= 1, got {world_size} and {grad_accum}")
    if not 0 <= rank < world_size:
        raise LoaderError(f"rank {rank} is outside [0, world_size={world_size})")
    if batch_tokens < seq_len or batch_tokens % seq_len != 0:
        raise LoaderError(f"train.batch_tokens={batch_tokens} is not a positive multiple of train.seq_len={seq_len}")
    g = batch_tokens // seq_len
    if g % (world_size * grad_accum) != 0:
        raise LoaderError(
            f"global sequences per step G = train.batch_tokens / train.seq_len = {g} is not divisible by "
            f"world_size * grad_accum = {world_size} * {grad_accum} = {world_size * grad_accum}; "
            f"choose train.batch_tokens as a multiple of seq_len * world_size * grad_accum")
    return g


def _state_error(kind: str, what: str, saved: Any, current: Any) -> LoaderError:
    return LoaderError(f"cannot load {kind} loader state: {what} differs (state has {saved!r}, "
                      f"this loader has {current!r})")


class _ShardSet:
    """The training shards in use: names, token counts (from headers) and lazily opened memmaps."""

    def __init__(self, data_dir: str | os.PathLike, train_shards: int, vocab_size: int | None):
        files = list_shards(data_dir, "train")
        if train_shards > 0:
            if train_shards > len(files):
                raise LoaderError(f"data.train_shards={train_shards} but {data_dir} holds only {len(files)} "
                                 f"fineweb_train_*.bin shards")
            files = files[:train_shards]
        self.dir = Path(data_dir)
        self.paths: list[Path] = files
        self.names: list[str] = [p.name for p in files]
        self.sizes: list[int] = [read_header(p) for p in files]  # token counts, header only
        self.vocab_size = vocab_size
        self._maps: dict[int, np.ndarray] = {}

    def tokens(self, i: int) -> np.ndarray:
        """Shard i's tokens (uint16 memmap), opened and range-checked on first use."""
        mm = self._maps.get(i)
        if mm is None:
            mm = open_shard(self.paths[i], self.vocab_size)
            self._maps[i] = mm
        return mm

    def open_all(self) -> None:
        for i in range(len(self.paths)):
            self.tokens(i)


def _split(rank_rows: np.ndarray, grad_accum: int) -> Batch:
    """rank_rows: (G/W, seq_len + 1) int64, this rank's windows windows[r::W] in order -> micro-batches.

    Micro-batch a takes rank_rows[a::A], i.e. the global windows[r + W*a :: W*A] (module docstring)."""
    out: Batch = []
    for a in range(grad_accum):
        part = torch.from_numpy(np.ascontiguousarray(rank_rows[a::grad_accum]))  # (G/(W*A), L+1)
        out.append((part[:, :-1].contiguous(), part[:, 1:].contiguous()))
    return out


# ---- Coprime-stride multi-shard loader ----------------------------------------------------------


class ShardCursor:
    """One pass over a shard's blocks in a pseudo-random order without repeats.

    Blocks are seq_len-token slices starting at a random phase p; block b covers tokens [p + b*L, p + b*L + L]
    (L + 1 tokens, the last one is the final target). The j-th visited block is (start + j*stride) mod blocks;
    stride is coprime with blocks, so one pass is a permutation."""

    __slots__ = ("phase", "blocks", "start", "stride", "taken", "seq_len")

    def __init__(self, phase: int, blocks: int, start: int, stride: int, seq_len: int, taken: int = 0):
        self.phase, self.blocks, self.start, self.stride = phase, blocks, start, stride
        self.seq_len, self.taken = seq_len, taken

    @classmethod
    def create(cls, rng: np.random.Generator, n_tokens: int, seq_len: int) -> ShardCursor:
        """Draw phase, start and stride for a shard of n_tokens (must hold at least one block)."""
        max_phase = min(seq_len - 1, n_tokens - seq_len - 1)
        if max_phase < 0:
            raise LoaderError(f"a shard of {n_tokens} tokens holds no window of {seq_len} + 1 tokens")
        phase = int(rng.integers(0, max_phase + 1))
        blocks = (n_tokens - 1 - phase) // seq_len  # >= 1 because phase <= n_tokens - seq_len - 1
        start = int(rng.integers(0, blocks))
        stride = 1
        if blocks > 1:
            while True:
                stride = int(rng.integers(1, blocks))
                if math.gcd(stride, blocks) == 1:
                    break
        return cls(phase, blocks, start, stride, seq_len)

    @property
    def remaining(self) -> int:
        return self.blocks - self.taken

    def next_offset(self) -> int:
        """Token offset of the next window (reads offset .. offset + seq_len inclusive)."""
        if self.taken >= self.blocks:
            raise IndexError("cursor exhausted")
        b = (self.start + self.taken * self.stride) % self.blocks
        self.taken += 1
        return self.phase + b * self.seq_len

    def to_list(self) -> list[int]:
        return [self.phase, self.blocks, self.start, self.stride, self.taken]

    @classmethod
    def from_list(cls, v: Sequence[int], seq_len: int) -> ShardCursor:
        phase, blocks, start, stride, taken = (int(x) for x in v)
        return cls(phase, blocks, start, stride, seq_len, taken)


class CoprimeLoader:
    """docs/DESIGN.md#data-loader with the two documented differences (module docstring)."""

    kind = "coprime"

    def __init__(self, data_dir: str | os.PathLike, *, seq_len: int, batch_tokens: int, rank: int = 0,
                 world_size: int = 1, grad_accum: int = 1, data_cfg: DataConfig | None = None,
                 vocab_size: int | None = None):
        cfg = data_cfg if data_cfg is not None else DataConfig()
        self.global_seqs = check_geometry(seq_len, batch_tokens, world_size, grad_accum, rank)
        self.seq_len, self.rank, self.world_size, self.grad_accum = seq_len, rank, world_size, grad_accum
        self.cfg = cfg
        self.shards = _ShardSet(data_dir, cfg.train_shards, vocab_size)
        # Eligible: at least one full block; weights use floor((N - 1) / L) before a cursor exists.
        self.full_blocks = [max((n - 1) // seq_len, 0) for n in self.shards.sizes]
        self.eligible: list[int] = [i for i, b in enumerate(self.full_blocks) if b > 0]
        if not self.eligible:
            raise LoaderError(f"no training shard in {self.shards.dir} holds a window of train.seq_len + 1 = "
                             f"{seq_len + 1} tokens (sizes: {self.shards.sizes})")
        self.rng = np.random.Generator(np.random.PCG64(shard_seed(self.shards.names)))
        self.cursors: dict[int, ShardCursor] = {}
        self.steps_taken = 0
        self.last_global_windows: list[tuple[int, int]] = []
        """(shard index, token offset) of every window of the last step's global list, in order."""

    # -- sampling ----------------------------------------------------------------------------------

    def mix_bounds(self) -> tuple[int, int]:
        """(lo, hi): shards mixed per batch at progress 0 and 1, clipped to #eligible and G."""
        e, g = len(self.eligible), self.global_seqs
        return min(self.cfg.mix_min_shards, e, g), min(self.cfg.mix_max_shards, e, g)

    def progress(self, step: int | None = None) -> float:
        c = self.steps_taken if step is None else step
        return min(c / self.cfg.progress_batches, 1.0)

    def _pull(self, shard: int) -> int:
        cur = self.cursors.get(shard)
        if cur is None or cur.remaining <= 0:
            cur = ShardCursor.create(self.rng, self.shards.sizes[shard], self.seq_len)
            self.cursors[shard] = cur
        return cur.next_offset()

    def _draw_global(self) -> list[tuple[int, int]]:
        """One step's global list of G windows as (shard index, token offset); advances the state."""
        rng, g = self.rng, self.global_seqs
        progress = self.progress()
        alpha = self.cfg.alpha_start + (self.cfg.alpha_end - self.cfg.alpha_start) * progress
        elig = self.eligible
        remaining = np.array([max(self.cursors[i].remaining, 1) if i in self.cursors else self.full_blocks[i]
                              for i in elig], dtype=np.float64)
        weights = remaining ** alpha
        probs = weights / weights.sum()
        lo, hi = self.mix_bounds()
        m = int(round(lo + progress * (hi - lo)))
        chosen = rng.choice(len(elig), size=m, replace=False, p=probs)  # positions in `elig`
        p_chosen = probs[chosen] / probs[chosen].sum()
        counts = 1 + rng.multinomial(g - m, p_chosen)  # (m,) windows per chosen shard, sum G
        order = rng.permutation(m)
        buckets: list[list[tuple[int, int]]] = []
        for pos in order:
            shard = elig[int(chosen[pos])]
            bucket = [(shard, self._pull(shard)) for _ in range(int(counts[pos]))]
            buckets.append([bucket[int(j)] for j in rng.permutation(len(bucket))])
        out: list[tuple[int, int]] = []
        heads = [0] * len(buckets)
        live = [b for b in range(len(buckets)) if buckets[b]]
        while live:
            for b in rng.permutation(live):
                b = int(b)
                out.append(buckets[b][heads[b]])
                heads[b] += 1
            live = [b for b in live if heads[b] < len(buckets[b])]
        assert len(out) == g
        return out

    def next_step(self) -> Batch:
        windows = self._draw_global()
        self.last_global_windows = windows
        self.steps_taken += 1
        width = self.seq_len + 1
        mine = windows[self.rank::self.world_size]  # rank striding
        rows = np.empty((len(mine), width), dtype=np.int64)  # (G/W, L+1)
        for j, (shard, off) in enumerate(mine):
            rows[j] = self.shards.tokens(shard)[off:off + width]
        return _split(rows, self.grad_accum)

    # -- state ---------------------------------------------------------------------------------------

    def _geometry(self) -> dict:
        return {"seq_len": self.seq_len, "global_seqs": self.global_seqs}

    def state_dict(self) -> dict:
        st = self.rng.bit_generator.state
        return {
            "kind": self.kind,
            "version": STATE_VERSION,
            "shards": list(self.shards.names),
            "geometry": self._geometry(),
            "steps_taken": int(self.steps_taken),
            # PCG64's 128-bit integers as decimal strings: exact in any JSON reader.
            "rng": {"bit_generator": st["bit_generator"],
                    "state": str(st["state"]["state"]), "inc": str(st["state"]["inc"]),
                    "has_uint32": int(st["has_uint32"]), "uinteger": int(st["uinteger"])},
            "cursors": [[int(i), *c.to_list()] for i, c in sorted(self.cursors.items())],
            "info": {"world_size": self.world_size, "grad_accum": self.grad_accum},
        }

    def load_state_dict(self, state: dict) -> None:
        _check_state(state, self.kind, self.shards.names, self._geometry())
        r = state["rng"]
        if r["bit_generator"] != self.rng.bit_generator.state["bit_generator"]:
            raise _state_error(self.kind, "bit generator", r["bit_generator"], "PCG64")
        self.rng.bit_generator.state = {
            "bit_generator": r["bit_generator"],
            "state": {"state": int(r["state"]), "inc": int(r["inc"])},
            "has_uint32": int(r["has_uint32"]), "uinteger": int(r["uinteger"]),
        }
        cursors = {int(v[0]): ShardCursor.from_list(v[1:], self.seq_len) for v in state["cursors"]}
        for i, c in cursors.items():  # every window a cursor can still give must lie inside its shard
            if i not in self.eligible or not (0 <= c.phase and 0 <= c.start < c.blocks and c.stride >= 1 and 0 <= c.taken
                                              <= c.blocks and c.phase + c.blocks * self.seq_len < self.shards.sizes[i]):
                raise LoaderError(f"cannot load {self.kind} loader state: cursor {c.to_list()} reaches outside shard {i}")
        self.cursors = cursors
        self.steps_taken = int(state["steps_taken"])
        self.last_global_windows = []

    def open_all(self) -> None:
        """Open and range-check every shard now (reads every token once), e.g. before the training clock
        starts; otherwise each shard is checked on first use, inside the timed loop."""
        self.shards.open_all()

    def describe(self) -> dict:
        return {"kind": self.kind, "shards": len(self.shards.names), "eligible_shards": len(self.eligible),
                "train_tokens": int(sum(self.shards.sizes)), "global_seqs": self.global_seqs,
                "seqs_per_micro": self.global_seqs // (self.world_size * self.grad_accum),
                "mix_shards": list(self.mix_bounds())}


def _check_state(state: dict, kind: str, names: list[str], geometry: dict) -> None:
    if not isinstance(state, dict) or state.get("kind") != kind:
        got = state.get("kind") if isinstance(state, dict) else type(state).__name__
        raise LoaderError(f"cannot load loader state of kind {got!r} into a {kind} loader")
    if state.get("version") != STATE_VERSION:
        raise _state_error(kind, "state version", state.get("version"), STATE_VERSION)
    if list(state.get("shards", [])) != names:
        raise _state_error(kind, "shard list", state.get("shards"), names)
    if dict(state.get("geometry", {})) != geometry:
        raise _state_error(kind, "geometry (seq_len, global sequences per step)", state.get("geometry"), geometry)


# ---- Sequential loader (the baseline's stream, world-size invariant) -----------------------------


class SequentialLoader:
    """One token stream over the sorted shards; each step consumes the next G*seq_len + 1 tokens."""

    kind = "sequential"

    def __init__(self, data_dir: str | os.PathLike, *, seq_len: int, batch_tokens: int, rank: int = 0,
                 world_size: int = 1, grad_accum: int = 1, data_cfg: DataConfig | None = None,
                 vocab_size: int | None = None):
        cfg = data_cfg if data_cfg is not None else DataConfig()
        self.global_seqs = check_geometry(seq_len, batch_tokens, world_size, grad_accum, rank)
        self.seq_len, self.rank, self.world_size, self.grad_accum = seq_len, rank, world_size, grad_accum
        self.shards = _ShardSet(data_dir, cfg.train_shards, vocab_size)
        self.total = int(sum(self.shards.sizes))
        if self.total < 2:
            raise LoaderError(f"the training shards in {self.shards.dir} hold {self.total} tokens; "
                             f"at least 2 are needed")
        # Global stream offsets: shard i covers [starts[i], starts[i] + sizes[i]).
        self.starts = np.concatenate([[0], np.cumsum(self.shards.sizes)[:-1]]).astype(np.int64)
        self.position = 0
        """Stream offset (in [0, total)) of the first token of the next step's chunk."""
        self.steps_taken = 0

    @property
    def step_tokens(self) -> int:
        return self.global_seqs * self.seq_len + 1

    def _read(self, start: int, n: int) -> np.ndarray:
        """n tokens of the (cyclic) stream from offset start, as int64."""
        out = np.empty(n, dtype=np.int64)
        filled, off = 0, start % self.total
        while filled < n:
            # side="right" skips empty shards, which share their start with the next shard.
            i = int(np.searchsorted(self.starts, off, side="right")) - 1
            local = off - int(self.starts[i])
            k = min(n - filled, self.shards.sizes[i] - local)
            out[filled:filled + k] = self.shards.tokens(i)[local:local + k]
            filled += k
            off = (off + k) % self.total
        return out

    def next_step(self) -> Batch:
        base, width = self.position, self.seq_len + 1
        mine = range(self.rank, self.global_seqs, self.world_size)  # rank striding over window indices
        rows = np.empty((len(mine), width), dtype=np.int64)  # (G/W, L+1)
        for j, i in enumerate(mine):
            rows[j] = self._read(base + i * self.seq_len, width)  # window i = chunk[i*L : i*L + L + 1]
        self.position = (base + self.step_tokens) % self.total
        self.steps_taken += 1
        return _split(rows, self.grad_accum)

    def _geometry(self) -> dict:
        return {"seq_len": self.seq_len, "global_seqs": self.global_seqs}

    def state_dict(self) -> dict:
        return {"kind": self.kind, "version": STATE_VERSION, "shards": list(self.shards.names),
                "geometry": self._geometry(), "steps_taken": int(self.steps_taken),
                "position": int(self.position),
                "info": {"world_size": self.world_size, "grad_accum": self.grad_accum}}

    def load_state_dict(self, state: dict) -> None:
        _check_state(state, self.kind, self.shards.names, self._geometry())
        pos = int(state["position"])
        if not 0 <= pos < self.total:
            raise _state_error(self.kind, "stream position range", pos, f"[0, {self.total})")
        self.position = pos
        self.steps_taken = int(state["steps_taken"])

    def open_all(self) -> None:
        """As `CoprimeLoader.open_all`."""
        self.shards.open_all()

    def describe(self) -> dict:
        return {"kind": self.kind, "shards": len(self.shards.names),
                "eligible_shards": sum(1 for n in self.shards.sizes if n > 0), "train_tokens": self.total,
                "global_seqs": self.global_seqs,
                "seqs_per_micro": self.global_seqs // (self.world_size * self.grad_accum)}


def build_train_loader(data_dir: str | os.PathLike, *, seq_len: int, batch_tokens: int, rank: int,
                       world_size: int, grad_accum: int, data_cfg: DataConfig,
                       vocab_size: int | None) -> CoprimeLoader | SequentialLoader:
    """The loader named by data_cfg.loader, over data_dir's fineweb_train_*.bin shards."""
    classes = {"coprime": CoprimeLoader, "sequential": SequentialLoader}
    if data_cfg.loader not in classes:
        raise LoaderError(f"data.loader must be one of {sorted(classes)}, got {data_cfg.loader!r}")
    return classes[data_cfg.loader](data_dir, seq_len=seq_len, batch_tokens=batch_tokens, rank=rank,
                                    world_size=world_size, grad_accum=grad_accum, data_cfg=data_cfg,
                                    vocab_size=vocab_size)
