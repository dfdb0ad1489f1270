"""Mode `lora`: per-document score-first LoRA test-time training, with optional phased global TTT.

Documents (`scoring.docs`) are scored in STREAM ORDER. A rank keeps score.lora.docs_per_batch slots; each
slot holds one document with its own adapters (`pgolf.model.lora`: A drawn from a generator seeded by
(score.lora.seed, document index), B = 0, so every document starts at the base model) and its own
optimizer state, and a slot whose document is done takes the next one (continuous batching). Each
document's targets are cut into chunks of C = score.lora.chunk_tokens; at every step, for the chunk each
busy slot is at:

1. one forward with the current adapters over the window of the document's inputs [max(start, a + C -
   context), chunk end) for the chunk [a, a + C) (earlier tokens of the same document are the only context;
   the window never depends on where the document ends), padded to `context` so a row's arithmetic never
   depends on what else is in the batch;
2. SCORE the chunk's targets from that forward (full softmax, at least fp32, float64 sums);
3. UPDATE (not on a document's last chunk): the sum over documents of each one's mean NLL on its chunk,
   backward into the adapters only, one step of a per-row Adam (each row keeps its own moments and step
   count, so no document's update reads another's); score.lora.steps > 1 repeats the update.

The base weights never change in per-document LoRA. Phased global TTT (score.lora.phase_docs = cumulative
document counts K): once the first K documents (stream order) are all scored, every rank stops, all base
weights are trained on exactly those documents with SGD (ttt's trainer, data parallel), and scoring goes
on with fresh adapters on the updated base. Why it is legal: every target is scored with adapters trained
only on earlier targets of its own document and with base weights trained only on documents that come
before it in the stream and were scored before the pause; nothing is scored twice; the processing order is
the stream's, so the ordinary flip test (changing stream[m] moves no target before m) holds
(docs/DESIGN.md#doc-lora-ttt, #phased-global-ttt).

The LEDGER (info["ledger"]) records a clock for every scored chunk, adapter update and global phase with
the absolute target ranges involved; `audit_lora_ledger` checks it target by target.
score.lora.order=update_first trains on each chunk before scoring it: a labelled NON-COMPLIANT reference.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from pgolf.config import LoraConfig, ScoreConfig, TTTConfig
from pgolf.data.tokenizer import target_bytes_torch
from pgolf.model.lora import LoraAdapters
from pgolf.model.roles import retag, roles_by_name
from pgolf.runtime import DistEnv, autocast
from pgolf.scoring.bpb import SCORED_TAP, Score, ScoreAccumulator
from pgolf.scoring.docs import doc_spans, doc_targets
from pgolf.scoring.modes import label_for
from pgolf.scoring.ttt import GlobalTrainer

DOC_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DocQueue:
    """targets (D, 2) of every document in stream order, the documents with targets (`docs`), and the
    segments: document index ranges [a, b) scored between two global phases."""

    targets: np.ndarray
    docs: np.ndarray
    segments: list[tuple[int, int]]

    @staticmethod
    def build(stream: np.ndarray, bos_id: int, phase_docs: tuple[int, ...] = ()) -> DocQueue:
        tg = doc_targets(doc_spans(stream, bos_id), len(stream))
        docs = np.flatnonzero(tg[:, 1] > tg[:, 0])
        # a phase after the last document would train weights nothing is scored with any more: dropped
        cuts = [0, *sorted(k for k in set(phase_docs) if 0 < k < len(docs)), len(docs)]
        return DocQueue(tg, docs, [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a])

    def rank_docs(self, a: int, b: int, env: DistEnv) -> np.ndarray:
        """This rank's contiguous share of documents [a, b) of `docs`, balanced by target count."""
        d = self.docs[a:b]
        sizes = self.targets[d, 1] - self.targets[d, 0]
        before = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        owner = (before * env.world_size) // max(int(sizes.sum()), 1)
        return d[owner == env.rank]


class _RowAdam:
    """Adam(W) over batched adapter tensors whose row b belongs to slot b: per-row moments and step counts."""

    def __init__(self, params: list[Tensor], cfg: LoraConfig):
        self.params, self.cfg = params, cfg
        self.m = [torch.zeros_like(p) for p in params]
        self.v = [torch.zeros_like(p) for p in params]
        self.t = torch.zeros(params[0].size(0), dtype=torch.float64, device=params[0].device)

    @torch.no_grad()
    def reset(self, row: int) -> None:
        for m, v in zip(self.m, self.v):
            m[row].zero_()
            v[row].zero_()
        self.t[row] = 0

    @torch.no_grad()
    def step(self, rows: Tensor) -> None:
        """One step of the slots `rows` (indices); the others are left exactly as they are."""
        c = self.cfg
        self.t[rows] += 1
        bc1 = (1 - c.beta1 ** self.t[rows]).float()
        bc2 = (1 - c.beta2 ** self.t[rows]).float()
        for p, m, v in zip(self.params, self.m, self.v):
            if p.grad is None:
                continue
            g = p.grad[rows]
            shape = (-1,) + (1,) * (p.dim() - 1)
            m[rows] = c.beta1 * m[rows] + (1 - c.beta1) * g
            v[rows] = c.beta2 * v[rows] + (1 - c.beta2) * g * g
            upd = (m[rows] / bc1.view(shape)) / ((v[rows] / bc2.view(shape)).sqrt() + c.eps)
            p[rows] = p[rows] * (1 - c.lr * c.weight_decay) - c.lr * upd
            p.grad = None


class _Ledger:
    """Clock-stamped record of every score, adapter update and global phase (absolute target ranges)."""

    def __init__(self) -> None:
        self.clock = 0
        self.rows: dict[str, list[list[int]]] = {"score": [], "update": [], "global": []}

    def add(self, kind: str, doc: int, lo: int, hi: int) -> None:
        self.rows[kind].append([self.clock, doc, lo, hi])

    def arrays(self, env: DistEnv) -> dict[str, np.ndarray]:
        """Every rank's records, gathered (a segment's clocks all precede the phase that follows it)."""
        out = {}
        for kind, rows in self.rows.items():
            a = np.asarray(rows, dtype=np.int64).reshape(-1, 4)
            out[kind] = np.concatenate(env.all_gather_object(a)) if env.distributed else a
        return out


class LoraRunner:
    """Scores one stream with per-document LoRA TTT (module docstring). The caller's model is not changed."""

    def __init__(self, model: torch.nn.Module, stream: np.ndarray, luts_t: dict, env: DistEnv, cfg: ScoreConfig, *,
                 autocast_dtype: torch.dtype | None = None, nll_out: np.ndarray | None = None):
        cfg.check_lora_window()
        self.cfg, self.lcfg, self.env, self.stream, self.luts_t = cfg, cfg.lora, env, stream, luts_t
        roles = roles_by_name(model)
        self.model = copy.deepcopy(model)  # new Parameter objects: carry the roles over by name
        retag(self.model, roles)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.mcfg = self.model.cfg
        self.device, self.autocast_dtype, self.nll_out = env.device, autocast_dtype, nll_out
        self.ctx = self.lcfg.context or cfg.seq_len
        self.queue = DocQueue.build(stream, self.mcfg.bos_id, self.lcfg.phase_docs)
        self.acc = ScoreAccumulator(self.device)
        self.ledger = _Ledger()
        self.stats = {"chunks": 0, "updates": 0, "steps": 0, "phases": [], "seconds_score": 0.0,
                      "seconds_global": 0.0}
        self.score_first = self.lcfg.order == "score_first"

    # ------------------------------------------------------------------------------------------------ a step
    def _forward(self, x: Tensor, lora: LoraAdapters) -> Tensor:
        with autocast(self.device, self.autocast_dtype):
            logits = self.model(x, rope_len=self.ctx, lora=lora)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def _batch(self, work: list[tuple[int, int, int]]):
        """work = [(slot, doc, chunk)] -> x, y, mask (n, ctx), chunk spans [a, e), window starts, last-chunk flags."""
        C, tg, n = self.lcfg.chunk_tokens, self.queue.targets, len(work)
        x = np.zeros((n, self.ctx), dtype=np.int64)
        y = np.zeros((n, self.ctx), dtype=np.int64)
        mask = np.zeros((n, self.ctx), dtype=bool)
        spans, starts, lasts = [], [], []
        for i, (_, d, c) in enumerate(work):
            lo, hi = int(tg[d, 0]), int(tg[d, 1])
            a, e = lo + c * C, min(lo + (c + 1) * C, hi)
            # the window starts from the chunk's NOMINAL end a + C, never from where the document happens
            # to end: otherwise a later BOS (the document's end) would shift the context of earlier targets
            w0 = max(lo, a + C - self.ctx)
            seg = np.asarray(self.stream[w0:e + 1], dtype=np.int64)
            x[i, :e - w0], y[i, :e - w0] = seg[:-1], seg[1:]
            mask[i, a - w0:e - w0] = True
            spans.append((a, e))
            starts.append(w0)
            lasts.append(e >= hi)
        t = lambda v: torch.from_numpy(v).to(self.device)  # noqa: E731
        return t(x), t(y), t(mask), spans, np.asarray(starts, dtype=np.int64), np.asarray(lasts)

    def _score(self, work, spans, logits: Tensor, x: Tensor, y: Tensor, mask: Tensor, starts: np.ndarray) -> None:
        with torch.no_grad():
            lg = logits[mask]
            nll = F.cross_entropy(lg, y[mask], reduction="none")
            self.acc.add(nll, target_bytes_torch(self.luts_t, x[mask], y[mask]))
            if self.nll_out is not None:
                pos = (torch.as_tensor(starts, device=x.device)[:, None]
                       + torch.arange(x.size(1), device=x.device)[None, :])[mask]
                self.nll_out[pos.cpu().numpy()] = nll.double().cpu().numpy()
                if (tap := SCORED_TAP.get()) is not None:
                    tap(pos, F.log_softmax(lg, -1))
        for (_, d, _), (a, e) in zip(work, spans):
            self.ledger.add("score", int(d), a, e)
        self.ledger.clock += 1

    def _update(self, opt: _RowAdam, logits: Tensor, y: Tensor, mask: Tensor, train: np.ndarray, work, spans) -> None:
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view_as(y)
        m = mask & torch.as_tensor(train, device=mask.device)[:, None]
        per_doc = (nll * m).sum(1) / m.sum(1).clamp_min(1)
        per_doc.sum().backward()  # a sum over documents: each one's gradient is its own
        opt.step(torch.as_tensor([s for (s, _, _), tr in zip(work, train) if tr], device=self.device))
        self.stats["updates"] += int(train.sum())
        for (_, d, _), (a, e), tr in zip(work, spans, train):
            if tr:
                self.ledger.add("update", int(d), a, e)
        self.ledger.clock += 1

    def _step(self, adapters: LoraAdapters, opt: _RowAdam, work: list[tuple[int, int, int]]) -> None:
        steps = self.lcfg.steps
        x, y, mask, spans, starts, lasts = self._batch(work)
        index = torch.as_tensor([s for s, _, _ in work], device=self.device)
        # a document's last chunk is scored but never trained on (no later target would use the update);
        # the update_first reference trains on every chunk, the last included, before scoring it
        train = ~lasts if self.score_first else np.ones_like(lasts)
        with torch.enable_grad():
            logits = self._forward(x, adapters.rows(index))
            if self.score_first:
                self._score(work, spans, logits.detach(), x, y, mask, starts)
            for k in range(steps if train.any() else 0):
                self._update(opt, logits if k == 0 else self._forward(x, adapters.rows(index)), y, mask, train,
                             work, spans)
            if not self.score_first:
                self._score(work, spans, self._forward(x, adapters.rows(index)).detach(), x, y, mask, starts)
        self.stats["chunks"] += len(work)
        self.stats["steps"] += 1

    # ------------------------------------------------------------------------------------------------ documents
    def _load(self, adapters: LoraAdapters, opt: _RowAdam, slot: int, doc: int) -> None:
        """Fresh adapters and optimizer state in `slot` for document `doc` (B = 0: the base model)."""
        lc = self.lcfg
        g = torch.Generator().manual_seed(lc.seed * DOC_SEED_STRIDE + int(doc))
        one = LoraAdapters.fresh(self.mcfg, lc.targets, lc.rank, lc.scale, [g], self.device)
        with torch.no_grad():
            for key in adapters.a:
                adapters.a[key][slot] = one.a[key][0]
                adapters.b[key][slot] = 0
        opt.reset(slot)

    def score_docs(self, docs: np.ndarray, progress=None) -> None:
        """Score these documents (stream order) with continuous batching over docs_per_batch slots."""
        lc = self.lcfg
        n_slots = max(1, min(lc.docs_per_batch, len(docs)))
        if not len(docs):
            return
        adapters = LoraAdapters.fresh(self.mcfg, lc.targets, lc.rank, lc.scale,
                                      [torch.Generator().manual_seed(0) for _ in range(n_slots)], self.device)
        opt = _RowAdam(adapters.parameters(), lc)
        chunks = -(-(self.queue.targets[docs, 1] - self.queue.targets[docs, 0]) // lc.chunk_tokens)
        slot_doc: list[int | None] = [None] * n_slots
        slot_chunk = [0] * n_slots
        nxt = 0
        while True:
            for s in range(n_slots):  # refill free slots in stream order
                if slot_doc[s] is None and nxt < len(docs):
                    slot_doc[s], slot_chunk[s] = nxt, 0
                    self._load(adapters, opt, s, int(docs[nxt]))
                    nxt += 1
            work = [(s, int(docs[j]), slot_chunk[s]) for s, j in enumerate(slot_doc) if j is not None]
            if not work:
                break
            self._step(adapters, opt, work)
            for s, j in enumerate(slot_doc):
                if j is not None:
                    slot_chunk[s] += 1
                    if slot_chunk[s] >= chunks[j]:
                        slot_doc[s] = None
                        if progress is not None:
                            progress.update(1)

    def _global_phase(self, upto: int, k: int) -> None:
        """Train the base weights on documents docs[:upto] (all scored), data parallel, SGD with a cosine."""
        lc, t0 = self.lcfg, time.perf_counter()
        docs = self.queue.docs[:upto]
        tg = self.queue.targets
        # each document's inputs and its targets (the next BOS included), in stream order
        buf = np.concatenate([np.asarray(self.stream[int(tg[d, 0]):int(tg[d, 1]) + 1]) for d in docs])
        T = self.cfg.seq_len
        seqs = [(s, min(s + T, len(buf) - 1)) for s in range(0, len(buf) - 1, T)]
        tcfg = TTTConfig(lr=lc.phase_lr, optimizer="sgd", momentum=lc.phase_momentum, grad_clip=lc.phase_grad_clip,
                         first_block_lr_mult=1.0, batch_seqs=lc.phase_batch_seqs)
        for p in self.model.parameters():
            p.requires_grad_(True)
        trainer = GlobalTrainer(self.model, buf, self.env, tcfg, self.autocast_dtype)
        batches = [seqs[i:i + lc.phase_batch_seqs] for i in range(0, len(seqs), lc.phase_batch_seqs)]
        n = len(batches) * lc.phase_epochs
        losses = []
        for e in range(lc.phase_epochs):
            for j, batch in enumerate(batches):
                trainer.set_lr(0.5 * (1 + math.cos(math.pi * (e * len(batches) + j) / max(n - 1, 1))))
                losses.append(trainer.step(batch))
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        for d in docs:
            self.ledger.add("global", int(d), int(tg[d, 0]), int(tg[d, 1]))
        self.ledger.clock += 1
        secs = time.perf_counter() - t0
        self.stats["seconds_global"] += secs
        self.stats["phases"].append({"phase": k, "after_docs": int(upto), "steps": len(losses), "seconds": secs,
                                     "train_loss": float(np.mean(losses)) if losses else None})

    def run(self, progress=None) -> tuple[Score, dict]:
        t0 = time.perf_counter()
        segs = self.queue.segments
        for k, (a, b) in enumerate(segs):
            ts, start = time.perf_counter(), self.ledger.clock
            self.score_docs(self.queue.rank_docs(a, b, self.env), progress)
            # every rank's scores of this segment precede the phase: the clock jumps past the longest share
            d = self.queue.docs[a:b]
            chunks = int((-(-(self.queue.targets[d, 1] - self.queue.targets[d, 0]) // self.lcfg.chunk_tokens)).sum())
            self.ledger.clock = start + chunks * (1 + self.lcfg.steps) + 1
            self.stats["seconds_score"] += time.perf_counter() - ts
            if k < len(segs) - 1:
                self._global_phase(b, k)
        score = self.acc.all_reduce(self.env).result()
        compliant, label = label_for("lora", lora_order=self.lcfg.order)
        counts = torch.tensor([float(self.stats["chunks"]), float(self.stats["updates"])], dtype=torch.float64,
                              device=self.device)
        self.env.all_reduce_(counts)
        info = {"mode": "lora", "documents": int(len(self.queue.docs)), "segments": len(segs),
                "chunks": int(counts[0]), "updates": int(counts[1]), "phases": self.stats["phases"],
                "order": self.lcfg.order, "seconds_score": self.stats["seconds_score"],
                "seconds_global": self.stats["seconds_global"], "seconds": time.perf_counter() - t0,
                "ledger": self.ledger.arrays(self.env), "compliant": compliant, "label": label}
        return score, info


def score_lora(model: torch.nn.Module, stream: np.ndarray, luts_t: dict, env: DistEnv, cfg: ScoreConfig, *,
               autocast_dtype: torch.dtype | None = None, nll_out: np.ndarray | None = None,
               progress=None) -> tuple[Score, dict]:
    """Mode lora over the whole stream -> (Score, info with "ledger", timings, counts, phases, label)."""
    runner = LoraRunner(model, stream, luts_t, env, cfg, autocast_dtype=autocast_dtype, nll_out=nll_out)
    return runner.run(progress)


def lora_settings(cfg: ScoreConfig) -> ScoreConfig:
    """The settings a lora result records (the chunk window resolved)."""
    return replace(cfg, lora=replace(cfg.lora, context=cfg.lora.context or cfg.seq_len))


def audit_lora_ledger(ledger: dict, n_targets: int, targets: np.ndarray) -> list[str]:
    """Violations of score-first order in a lora ledger (empty = clean), target by target:
    every target scored exactly once, inside its own document; every adapter update of document d trained
    only on targets of d already scored, and every later score of d lies after the trained range; every
    global phase trained only on targets scored before it."""
    out: list[str] = []
    score, update, glob = (np.asarray(ledger[k], dtype=np.int64).reshape(-1, 4) for k in ("score", "update", "global"))
    at = np.full(n_targets, -1, dtype=np.int64)
    count = np.zeros(n_targets, dtype=np.int64)
    for c, d, lo, hi in score:
        if not targets[d, 0] <= lo < hi <= targets[d, 1]:
            out.append(f"score @{c}: targets [{lo}, {hi}) are not inside document {d}")
            continue
        at[lo:hi] = c
        count[lo:hi] += 1
    if (count != 1).any():
        out.append(f"{int((count == 0).sum())} targets never scored, {int((count > 1).sum())} scored more than once")
    by_doc: dict[int, np.ndarray] = {int(d): score[score[:, 1] == d] for d in np.unique(score[:, 1])}
    for u, d, lo, hi in update:
        if not targets[d, 0] <= lo < hi <= targets[d, 1]:
            out.append(f"update @{u}: targets [{lo}, {hi}) are not inside document {d}")
            continue
        if (at[lo:hi] < 0).any() or int(at[lo:hi].max()) >= u:
            out.append(f"update @{u} of document {d} trained on targets [{lo}, {hi}) not all scored before it")
        later = by_doc.get(int(d), np.zeros((0, 4), np.int64))
        later = later[later[:, 0] > u]
        if len(later) and int(later[:, 2].min()) < hi:
            out.append(f"update @{u} of document {d} trained on [{lo}, {hi}) but target {int(later[:, 2].min())} "
                       "of that document is scored after it")
    for g in np.unique(glob[:, 0]) if len(glob) else []:
        phase = glob[glob[:, 0] == g]
        for _, d, lo, hi in phase:
            if (at[lo:hi] < 0).any() or int(at[lo:hi].max()) >= g:
                out.append(f"global phase @{g} trained on document {d} [{lo}, {hi}) before all of it was scored")
        end = int(phase[:, 3].max())  # the base weights after the phase saw the stream up to here
        early = np.flatnonzero(at[:end] > g)
        if len(early):
            out.append(f"global phase @{g} trained on targets up to {end}, but target {int(early[0])} before that "
                       "is scored after it")
    return out
