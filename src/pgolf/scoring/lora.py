"""Mode `lora`: per-document score-first LoRA test-time training, with optional phased global TTT.

Documents (`scoring.docs`) are queued longest first (ties by stream order) and cut into batches of
score.lora.docs_per_batch; a batch's documents adapt side by side, each with its own adapters
(`pgolf.model.lora`: A drawn from a generator seeded by (score.lora.seed, document index), B = 0, so
every document starts at the base model and its scores do not depend on its batch). Each document's
targets are cut into chunks of C = score.lora.chunk_tokens; for chunk c, in lockstep over the batch:

1. one forward with the current adapters over the window of the document's last `context` inputs up
   to the chunk's end (earlier tokens of the same document are the only context);
2. SCORE the chunk's targets from that forward (full softmax, fp32 or better, float64 sums);
3. UPDATE (not on a document's last chunk): the sum over documents of each one's mean NLL on the chunk,
   backward into the adapters only, one optimizer step (AdamW on the batched adapter tensors is
   elementwise, so no document's step reads another's gradients); score.lora.steps > 1 repeats the
   update on the same chunk.

The base weights never change in per-document LoRA. Phased global TTT (score.lora.phase_docs) pauses
after the batches holding the first K queued documents have been scored (K rounded up to whole
batches, so the pause is exact and the same at every world size), trains all base weights on exactly
those documents with SGD (ttt's trainer, data parallel), and goes on with fresh adapters on the updated
base. Why it is legal: every target is scored by weights and adapters trained only on targets scored
before it, of its own document (adapters) or of documents scored before the pause (base weights), and
nothing is scored twice (docs/DESIGN.md#doc-lora-ttt, #phased-global-ttt).

The LEDGER (info["ledger"]) records a global clock for every scored chunk, every adapter update and
every global phase, with the absolute target ranges involved; `audit_lora_ledger` checks it target by
target. score.lora.order=update_first trains on each chunk before scoring it: a labelled NON-COMPLIANT
reference whose ledger the audit refuses.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from pgolf.config import ScoreConfig, TTTConfig
from pgolf.data.tokenizer import target_bytes_torch
from pgolf.model.lora import LoraAdapters
from pgolf.model.roles import retag, roles_by_name
from pgolf.runtime import DistEnv, autocast, rank_share
from pgolf.scoring.bpb import SCORED_TAP, Score, ScoreAccumulator
from pgolf.scoring.docs import doc_spans, doc_targets
from pgolf.scoring.modes import label_for
from pgolf.scoring.ttt import GlobalTrainer

DOC_SEED_STRIDE = 1_000_003


@dataclass(frozen=True)
class DocQueue:
    """Which documents are scored together, in which order: targets (D, 2) per document (stream order),
    batches (lists of document indices, queue order) and the phase boundaries as batch counts."""

    targets: np.ndarray
    batches: list[np.ndarray]
    phase_ends: list[int]

    @staticmethod
    def build(stream: np.ndarray, bos_id: int, docs_per_batch: int, phase_docs: tuple[int, ...]) -> DocQueue:
        tg = doc_targets(doc_spans(stream, bos_id), len(stream))
        ids = np.flatnonzero(tg[:, 1] > tg[:, 0])
        lengths = tg[ids, 1] - tg[ids, 0]
        order = ids[np.lexsort((ids, -lengths))]  # longest first, then stream order
        batches = [order[i:i + docs_per_batch] for i in range(0, len(order), docs_per_batch)]
        # a phase after the last batch would train weights nothing is scored with any more: dropped
        ends = sorted({-(-k // docs_per_batch) for k in phase_docs})
        return DocQueue(tg, batches, [e for e in ends if 0 < e < len(batches)])

    def segments(self) -> list[tuple[int, int]]:
        """Batch ranges [a, b) scored between two global phases (the last segment ends the queue)."""
        cuts = [0, *self.phase_ends]
        if cuts[-1] < len(self.batches):
            cuts.append(len(self.batches))
        return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


class _Ledger:
    """Clock-stamped record of every score, adapter update and global phase (absolute target ranges)."""

    def __init__(self) -> None:
        self.clock = 0
        self.rows: dict[str, list[list[int]]] = {"score": [], "update": [], "global": []}

    def add(self, kind: str, doc: int, lo: int, hi: int) -> None:
        self.rows[kind].append([self.clock, doc, lo, hi])

    def tick(self) -> None:
        self.clock += 1

    def arrays(self, env: DistEnv) -> dict[str, np.ndarray]:
        """Every rank's records, gathered (clocks are comparable: segments tick in lockstep)."""
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
        self.queue = DocQueue.build(stream, self.mcfg.bos_id, self.lcfg.docs_per_batch, self.lcfg.phase_docs)
        self.acc = ScoreAccumulator(self.device)
        self.ledger = _Ledger()
        self.stats = {"chunks": 0, "updates": 0, "train_loss": 0.0, "phases": [], "seconds_score": 0.0,
                      "seconds_global": 0.0}
        self.score_first = self.lcfg.order == "score_first"

    # ------------------------------------------------------------------------------------------------
    def _forward(self, x: torch.Tensor, lora: LoraAdapters) -> torch.Tensor:
        with autocast(self.device, self.autocast_dtype):
            logits = self.model(x, rope_len=self.ctx, lora=lora)
        return logits.to(torch.promote_types(logits.dtype, torch.float32))

    def _windows(self, docs: np.ndarray, c: int):
        """Chunk c of each document that has one: (rows, x, y, chunk mask, absolute chunk [lo, hi), last?)."""
        C, tg = self.lcfg.chunk_tokens, self.queue.targets
        rows, spans, lasts, wins = [], [], [], []
        for r, d in enumerate(docs):
            lo, hi = (int(v) for v in tg[d])
            a, e = lo + c * C, min(lo + (c + 1) * C, hi)
            if a >= hi:
                continue
            w0 = max(lo, e - self.ctx)
            rows.append(r)
            spans.append((a, e))
            lasts.append(e >= hi)
            wins.append((w0, e))
        if not rows:
            return None
        W = max(e - w0 for w0, e in wins)
        n = len(rows)
        x = np.zeros((n, W), dtype=np.int64)
        y = np.zeros((n, W), dtype=np.int64)
        mask = np.zeros((n, W), dtype=bool)
        for i, ((w0, e), (a, _)) in enumerate(zip(wins, spans)):
            seg = np.asarray(self.stream[w0:e + 1], dtype=np.int64)
            x[i, :e - w0], y[i, :e - w0] = seg[:-1], seg[1:]
            mask[i, a - w0:e - w0] = True
        t = lambda v: torch.from_numpy(v).to(self.device)  # noqa: E731
        starts = np.asarray([w0 for w0, _ in wins], dtype=np.int64)
        return np.asarray(rows), t(x), t(y), t(mask), spans, np.asarray(lasts), starts

    def _score(self, docs, spans, logits, x, y, mask, starts) -> None:
        with torch.no_grad():
            sel = mask
            lg = logits[sel]
            nll = F.cross_entropy(lg, y[sel], reduction="none")
            self.acc.add(nll, target_bytes_torch(self.luts_t, x[sel], y[sel]))
            if self.nll_out is not None:
                pos = (torch.as_tensor(starts, device=x.device)[:, None]
                       + torch.arange(x.size(1), device=x.device)[None, :])[sel]
                self.nll_out[pos.cpu().numpy()] = nll.double().cpu().numpy()
                if (tap := SCORED_TAP.get()) is not None:
                    tap(pos, F.log_softmax(lg, -1))
        for d, (a, e) in zip(docs, spans):
            self.ledger.add("score", int(d), a, e)
        self.ledger.tick()

    def _update(self, opt, logits, y, mask, train_rows: np.ndarray, docs, spans) -> None:
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1), reduction="none").view_as(y)
        m = mask & torch.as_tensor(train_rows, device=mask.device)[:, None]
        per_doc = (nll * m).sum(1) / m.sum(1).clamp_min(1)
        loss = per_doc.sum()  # a sum over documents: each one's gradient is independent of the batch
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        self.stats["updates"] += int(train_rows.sum())
        self.stats["train_loss"] += float(per_doc.detach()[torch.as_tensor(train_rows)].sum())
        for d, (a, e), tr in zip(docs, spans, train_rows):
            if tr:
                self.ledger.add("update", int(d), a, e)
        self.ledger.tick()

    def score_batch(self, docs: np.ndarray) -> None:
        lc = self.lcfg
        gens = [torch.Generator().manual_seed(lc.seed * DOC_SEED_STRIDE + int(d)) for d in docs]
        adapters = LoraAdapters.fresh(self.mcfg, lc.targets, lc.rank, lc.scale, gens, self.device)
        opt = torch.optim.AdamW(adapters.parameters(), lr=lc.lr, betas=(lc.beta1, lc.beta2), eps=lc.eps,
                                weight_decay=lc.weight_decay)
        n_chunks = max(-(-(int(self.queue.targets[d, 1] - self.queue.targets[d, 0])) // lc.chunk_tokens) for d in docs)
        for c in range(n_chunks):
            w = self._windows(docs, c)
            if w is None:
                break
            rows, x, y, mask, spans, lasts, starts = w
            ids = docs[rows]
            index = torch.as_tensor(rows, device=self.device)
            # a row trains on its chunk unless it is its document's last (no later target would use it);
            # the update_first reference trains on every chunk, the last included, before scoring it
            train_rows = ~lasts if self.score_first else np.ones_like(lasts)
            with torch.enable_grad():
                logits = self._forward(x, adapters.rows(index))
                if self.score_first:
                    self._score(ids, spans, logits.detach(), x, y, mask, starts)
                if train_rows.any():
                    self._update(opt, logits, y, mask, train_rows, ids, spans)
                    for _ in range(lc.steps - 1):
                        self._update(opt, self._forward(x, adapters.rows(index)), y, mask, train_rows, ids, spans)
                if not self.score_first:
                    self._score(ids, spans, self._forward(x, adapters.rows(index)).detach(), x, y, mask, starts)
            self.stats["chunks"] += len(rows)

    # ------------------------------------------------------------------------------------------------
    def _global_phase(self, upto: int, k: int) -> None:
        """Train the base weights on every document of batches [0, upto) (all scored), data parallel."""
        lc, t0 = self.lcfg, time.perf_counter()
        docs = np.concatenate(self.queue.batches[:upto])
        pieces = [np.asarray(self.stream[int(self.queue.targets[d, 0]):int(self.queue.targets[d, 1]) + 1])
                  for d in docs]
        buf = np.concatenate(pieces)  # each document's inputs and its targets (the next BOS included)
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
                step = e * len(batches) + j
                trainer.set_lr(0.5 * (1 + math.cos(math.pi * step / max(n - 1, 1))))
                losses.append(trainer.step(batch))
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        for d in docs:
            self.ledger.add("global", int(d), int(self.queue.targets[d, 0]), int(self.queue.targets[d, 1]))
        self.ledger.tick()
        secs = time.perf_counter() - t0
        self.stats["seconds_global"] += secs
        self.stats["phases"].append({"after_docs": int(len(docs)), "after_batches": upto, "steps": len(losses),
                                     "train_loss": float(np.mean(losses)) if losses else None, "seconds": secs,
                                     "phase": k})

    def run(self, progress=None) -> tuple[Score, dict]:
        t0 = time.perf_counter()
        segs = self.queue.segments()
        for k, (a, b) in enumerate(segs):
            lo, hi = rank_share(a, b, self.env)
            # every rank ticks the same number of clocks per segment so that clocks stay comparable
            ts = time.perf_counter()
            start_clock = self.ledger.clock
            for j in range(lo, hi):
                self.score_batch(self.queue.batches[j])
                if progress is not None:
                    progress.update(len(self.queue.batches[j]))
            self.ledger.clock = start_clock + self._segment_ticks(a, b)
            self.stats["seconds_score"] += time.perf_counter() - ts
            if b in self.queue.phase_ends:
                self._global_phase(b, k)
        score = self.acc.all_reduce(self.env).result()
        compliant, label = label_for("lora", lora_order=self.lcfg.order)
        info = {"mode": "lora", "documents": int(sum(len(b) for b in self.queue.batches)),
                "batches": len(self.queue.batches), "chunks": self.stats["chunks"], "updates": self.stats["updates"],
                "phases": self.stats["phases"], "order": self.lcfg.order, "seconds_score": self.stats["seconds_score"],
                "seconds_global": self.stats["seconds_global"], "seconds": time.perf_counter() - t0,
                "ledger": self.ledger.arrays(self.env), "compliant": compliant, "label": label}
        for key in ("chunks", "updates"):
            t = torch.tensor([float(info[key])], dtype=torch.float64, device=self.device)
            info[key] = int(self.env.all_reduce_(t).item())
        return score, info

    def _segment_ticks(self, a: int, b: int) -> int:
        """Clock ticks a segment takes on the rank that runs all of it sequentially: an upper bound for
        every rank's share, so the next segment's clocks are after every score of this one."""
        lc, per = self.lcfg, 2 + (self.lcfg.steps - 1)
        n = 0
        for j in range(a, b):
            longest = max(int(self.queue.targets[d, 1] - self.queue.targets[d, 0]) for d in self.queue.batches[j])
            n += -(-longest // lc.chunk_tokens) * per
        return n


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
    by_doc: dict[int, np.ndarray] = {}
    if len(score):
        order = np.lexsort((score[:, 0], score[:, 1]))
        s = score[order]
        for d in np.unique(s[:, 1]):
            by_doc[int(d)] = s[s[:, 1] == d]
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
    for g, d, lo, hi in glob:
        if (at[lo:hi] < 0).any() or int(at[lo:hi].max()) >= g:
            out.append(f"global phase @{g} trained on document {d} [{lo}, {hi}) before all of it was scored")
    return out
