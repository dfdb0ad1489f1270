"""Score-first test-time training (docs/DESIGN.md#eval-ttt), optionally with causal SLOT while scoring (`ttt+slot`).

The target index range [0, n_targets) is cut into chunks of `chunk_tokens`; each window of the plan
is assigned to the chunk holding its FIRST scored target (scored ranges increase with the window
index, so a chunk's windows are a contiguous range). For chunk c = 0, 1, ...:

1. SCORE its windows (split across ranks) under torch.no_grad() with the current weights;
2. TRAIN (not after the last chunk) on chunk c's targets only: sequences of the plan's seq_len cut
   from stream[chunk_start : chunk_end + 1] (inputs stream[s : e], targets stream[s + 1 : e + 1], i.e.
   target indices [s, e) inside the chunk; a shorter last sequence is kept), `epochs` passes in global
   batches of `batch_seqs` sequences (each batch split contiguously across ranks; the summed token NLL
   and the token count are all-reduced, so the update is the same at every world size), SGD with
   momentum or AdamW, LR = lr * mult_i * 0.5 (1 + cos(pi c / (C - 1))) (cosine over chunks), where
   mult_i rises linearly from first_block_lr_mult (block 0) to 1.0 (last block), non-block parameters
   at mult 1, the first freeze_blocks blocks frozen, global-norm gradient clip.

Why it is legal: every target of chunk c is scored by a window assigned to a chunk <= c (its first
scored target is at or before it), so it is scored before any update that trained on it; the
windows of chunk c + 1 score targets >= the end of chunk c, so they come after all chunk-c updates.

The LEDGER in info["ledger"] lets an auditor check this without trusting the argument: a global
clock ticks once per scoring phase and once per optimizer update; every window records the tick at
which it was scored (all-reduced, -1 = never), every update records its tick and the target index
range [lo, hi) of the sequences it trained on. `audit_ledger` checks that each update trained only on
targets already scored and that every target scored after it lies at or after its range's end.

Reference mode mode="prequant" (NON-COMPLIANT, research only): `epochs` passes over ALL validation
targets first (cosine over epochs), then one scoring pass, as the withdrawn entry did (docs/DESIGN.md#noncompliant-prequant-ttt /
8.2); its ledger fails the audit and the flip test shows the leak.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from pgolf.config import ScoreConfig
from pgolf.model.roles import retag, role_of, role_policy, roles_by_name
from pgolf.runtime import DistEnv, autocast, rank_share
from pgolf.scoring.bpb import Score, ScoreAccumulator
from pgolf.scoring.modes import label_for
from pgolf.scoring.plan import ScorePlan
from pgolf.scoring.sliding import accumulate_scored, window_batch
from pgolf.scoring.slot import SlotRunner, rank_segments, segments


def chunk_windows(plan: ScorePlan, chunk_tokens: int) -> np.ndarray:
    """-> bounds (C + 1,): the windows of chunk c are [bounds[c], bounds[c + 1])."""
    n_chunks = -(-plan.n_targets // chunk_tokens)
    first = plan.starts + plan.score_from
    return np.searchsorted(first, np.arange(n_chunks + 1) * chunk_tokens, side="left").astype(np.int64)


def block_lr_mults(n_blocks: int, first_mult: float) -> list[float]:
    if n_blocks == 1:
        return [1.0]
    return [first_mult + (1.0 - first_mult) * i / (n_blocks - 1) for i in range(n_blocks)]


def _param_groups(model: torch.nn.Module, first_mult: float, freeze_blocks: int) -> list[dict]:
    """SGD/AdamW groups: one per block (its LR multiple), then the non-block parameters at 1.0. The first
    `freeze_blocks` blocks and every role the role policy marks as not TTT-trainable are frozen."""
    for p in model.parameters():
        if not role_policy(role_of(p)).ttt:
            p.requires_grad_(False)
    blocks = list(model.blocks)
    mults = block_lr_mults(len(blocks), first_mult)
    in_block = set()
    groups = []
    for i, (blk, mult) in enumerate(zip(blocks, mults)):
        ps = [p for p in blk.parameters() if p.requires_grad]
        in_block.update(id(p) for p in blk.parameters())
        if i < freeze_blocks:
            for p in ps:
                p.requires_grad_(False)
            continue
        groups.append({"params": ps, "mult": mult})
    rest = [p for p in model.parameters() if id(p) not in in_block and p.requires_grad]
    if rest:
        groups.append({"params": rest, "mult": 1.0})
    return groups


def _sequences(lo: int, hi: int, seq_len: int) -> list[tuple[int, int]]:
    """Target ranges [s, e) of seq_len (the last may be shorter) tiling [lo, hi)."""
    return [(s, min(s + seq_len, hi)) for s in range(lo, hi, seq_len)]


class GlobalTrainer:
    """SGD / AdamW on all (TTT-trainable) weights over sequences of a stream, data parallel (ttt, lora phases)."""

    def __init__(self, model: torch.nn.Module, stream: np.ndarray, env: DistEnv, cfg, autocast_dtype):
        self.model, self.stream, self.env, self.cfg = model, stream, env, cfg
        self.autocast_dtype = autocast_dtype
        self.groups = _param_groups(model, cfg.first_block_lr_mult, cfg.freeze_blocks)
        self.params = [p for g in self.groups for p in g["params"]]
        if cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD([{"params": g["params"]} for g in self.groups], lr=cfg.lr,
                                       momentum=cfg.momentum)
        else:
            self.opt = torch.optim.AdamW([{"params": g["params"]} for g in self.groups], lr=cfg.lr,
                                         weight_decay=0.0)

    def set_lr(self, factor: float) -> float:
        for pg, g in zip(self.opt.param_groups, self.groups):
            pg["lr"] = self.cfg.lr * g["mult"] * factor
        return self.cfg.lr * factor

    def step(self, seqs: list[tuple[int, int]]) -> float:
        """One update on the global batch `seqs` (target ranges); this rank takes its contiguous share."""
        env, model = self.env, self.model
        lo, hi = rank_share(0, len(seqs), env)
        mine = seqs[lo:hi]
        model.train()
        self.opt.zero_grad(set_to_none=True)
        nll_sum = torch.zeros((), dtype=torch.float64, device=env.device)
        n_tok = 0
        by_len: dict[int, list[int]] = {}
        for s, e in mine:
            by_len.setdefault(e - s, []).append(s)
        for length, starts in by_len.items():
            buf = np.stack([np.asarray(self.stream[s:s + length + 1], dtype=np.int64) for s in starts])
            t = torch.from_numpy(buf).to(env.device)
            with autocast(env.device, self.autocast_dtype):
                logits = model(t[:, :-1])
            lg = logits.reshape(-1, logits.size(-1))
            loss = F.cross_entropy(lg.to(torch.promote_types(lg.dtype, torch.float32)), t[:, 1:].reshape(-1),
                                   reduction="sum")
            loss.backward()
            nll_sum += loss.detach().double()
            n_tok += t[:, 1:].numel()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = torch.cat([g.reshape(-1).to(torch.float64) for g in grads]) if grads else torch.zeros(0)
        stats = torch.stack([nll_sum, torch.tensor(float(n_tok), dtype=torch.float64, device=env.device)])
        env.all_reduce_(flat)
        env.all_reduce_(stats)
        total = float(stats[1])
        off = 0
        for p in self.params:
            n = p.numel()
            p.grad = (flat[off:off + n] / total).view_as(p).to(p.dtype)
            off += n
        if self.cfg.grad_clip > 0 and self.params:
            torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(stats[0]) / total


def audit_ledger(ledger: dict, plan: ScorePlan) -> list[str]:
    """Violations of score-first order (empty list = clean). See the module docstring."""
    out = []
    at = np.asarray(ledger["window_scored_at"])
    lo_w = plan.starts + plan.score_from
    hi_w = plan.starts + plan.wlen
    if (at < 0).any():
        out.append(f"{int((at < 0).sum())} windows never scored")
    order = np.argsort(at, kind="stable")
    at_sorted = at[order]
    suffix_min = np.minimum.accumulate(lo_w[order][::-1])[::-1]  # min first scored target from k on
    for clock, lo, hi in zip(ledger["update_clock"], ledger["update_lo"], ledger["update_hi"]):
        # every trained target was scored before the update
        w0 = int(np.searchsorted(hi_w, lo, side="right"))
        w1 = int(np.searchsorted(lo_w, hi, side="left"))
        if w1 > w0 and int(at[w0:w1].max()) >= clock:
            out.append(f"update @{clock} trained on targets [{lo}, {hi}) not all scored before it")
        # every target scored after the update lies at or after the trained range's end
        k = int(np.searchsorted(at_sorted, clock, side="right"))
        if k < len(at_sorted) and int(suffix_min[k]) < hi:
            out.append(f"update @{clock} trained on [{lo}, {hi}) but target {int(suffix_min[k])} is scored after it")
    return out


@torch.no_grad()
def _score_range(model, stream, plan, lo, hi, batch_windows, luts_t, acc, device, autocast_dtype, nll_out) -> None:
    model.eval()
    for b in range(lo, hi, batch_windows):
        idx = range(b, min(b + batch_windows, hi))
        x, y, scored = window_batch(stream, plan, idx, device)
        with autocast(device, autocast_dtype):
            logits = model(x)
        accumulate_scored(logits, x, y, scored, plan, idx, luts_t, acc, nll_out)


def score_ttt(model: torch.nn.Module, stream: np.ndarray, plan: ScorePlan, luts_t: dict, env: DistEnv,
              cfg_score: ScoreConfig, *, with_slot: bool = False, autocast_dtype: torch.dtype | None = None,
              nll_out: np.ndarray | None = None, warm_segments: int = 8, warm_from: str = "mean",
              progress=None) -> tuple[Score, dict]:
    """Score-first TTT (or the prequant reference) over the plan. The caller's model is not modified.

    -> (Score, info): info carries "compliant", "label", timings, the training losses per chunk and the
    ledger ("window_scored_at" (W,), "update_clock" / "update_lo" / "update_hi" / "update_chunk").
    with_slot: score each chunk's windows with causal SLOT (cfg_score.slot; warm-start segments are
    cut inside each chunk, see slot.py).
    """
    t_start = time.perf_counter()
    cfg = cfg_score.ttt
    bw = cfg_score.sliding.batch_windows
    roles = roles_by_name(model)
    model = copy.deepcopy(model)  # new Parameter objects: carry the roles over by name
    retag(model, roles)
    device = env.device
    acc = ScoreAccumulator(device)
    trainer = GlobalTrainer(model, stream, env, cfg, autocast_dtype)
    runner = (SlotRunner(model, stream, plan, luts_t, cfg_score.slot, device, autocast_dtype=autocast_dtype,
                         nll_out=nll_out, warm_from=warm_from) if with_slot else None)
    W = plan.num_windows
    scored_at = torch.full((W,), -1, dtype=torch.int64, device=device)
    upd_clock, upd_lo, upd_hi, upd_chunk = [], [], [], []
    train_loss: list[float] = []
    clock = 0
    secs = {"score": 0.0, "train": 0.0}

    def score(lo: int, hi: int) -> None:
        nonlocal clock
        t0 = time.perf_counter()
        model.eval()
        if runner is not None:
            runner.score_range(lo, hi, env, bw, warm_segments, acc, progress)
            mine = rank_segments(segments(lo, hi, bw, warm_segments), env)
        else:
            a, b = rank_share(lo, hi, env)
            _score_range(model, stream, plan, a, b, bw, luts_t, acc, device, autocast_dtype, nll_out)
            mine = [(a, b)]
            if progress is not None:
                progress.update(b - a)
        for a, b in mine:
            scored_at[a:b] = clock
        clock += 1
        secs["score"] += time.perf_counter() - t0

    def train(lo_t: int, hi_t: int, chunk: int, factor: float) -> None:
        nonlocal clock
        t0 = time.perf_counter()
        trainer.set_lr(factor)
        seqs = _sequences(lo_t, hi_t, plan.seq_len)
        losses = []
        for _ in range(cfg.epochs):
            for k in range(0, len(seqs), cfg.batch_seqs):
                batch = seqs[k:k + cfg.batch_seqs]
                losses.append(trainer.step(batch))
                upd_clock.append(clock)
                upd_lo.append(batch[0][0])
                upd_hi.append(batch[-1][1])
                upd_chunk.append(chunk)
                clock += 1
        if losses:
            train_loss.append(float(np.mean(losses)))
        secs["train"] += time.perf_counter() - t0

    if cfg.mode == "prequant":
        # NON-COMPLIANT reference: train on every validation target, then score everything once.
        E = cfg.epochs
        seqs_all = _sequences(0, plan.n_targets, plan.seq_len)
        t_train = time.perf_counter()
        for e in range(E):
            factor = 0.5 * (1 + math.cos(math.pi * e / (E - 1))) if E > 1 else 1.0
            trainer.set_lr(factor)
            for k in range(0, len(seqs_all), cfg.batch_seqs):
                batch = seqs_all[k:k + cfg.batch_seqs]
                trainer.step(batch)
                upd_clock.append(clock)
                upd_lo.append(batch[0][0])
                upd_hi.append(batch[-1][1])
                upd_chunk.append(-1)
                clock += 1
        secs["train"] += time.perf_counter() - t_train
        score(0, W)
        n_chunks = 1
    else:
        bounds = chunk_windows(plan, cfg.chunk_tokens)
        n_chunks = len(bounds) - 1
        for c in range(n_chunks):
            if bounds[c + 1] > bounds[c]:
                score(int(bounds[c]), int(bounds[c + 1]))
            if c < n_chunks - 1 and cfg.epochs > 0:
                factor = 0.5 * (1 + math.cos(math.pi * c / (n_chunks - 1)))
                train(c * cfg.chunk_tokens, min((c + 1) * cfg.chunk_tokens, plan.n_targets), c, factor)

    result = acc.all_reduce(env).result()
    env.all_reduce_(scored_at, op="max")
    info = {"mode": "ttt+slot" if with_slot else "ttt", "ttt_mode": cfg.mode, "chunks": n_chunks,
            "updates": len(upd_clock), "epochs": cfg.epochs, "lr": cfg.lr, "optimizer": cfg.optimizer,
            "chunk_tokens": cfg.chunk_tokens, "train_loss_per_chunk": train_loss,
            "seconds_score": secs["score"], "seconds_train": secs["train"],
            "seconds": time.perf_counter() - t_start,
            "ledger": {"window_scored_at": scored_at.cpu().numpy(),
                       "update_clock": np.asarray(upd_clock, dtype=np.int64),
                       "update_lo": np.asarray(upd_lo, dtype=np.int64),
                       "update_hi": np.asarray(upd_hi, dtype=np.int64),
                       "update_chunk": np.asarray(upd_chunk, dtype=np.int64)}}
    if runner is not None:
        info["slot"] = runner.info(env)
    info["compliant"], info["label"] = label_for("ttt+slot" if with_slot else "ttt", ttt_mode=cfg.mode,
                                                 slot_coupling=cfg_score.slot.coupling)
    return result, info
