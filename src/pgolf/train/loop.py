"""The training loop (docs/DESIGN.md#training): same code on a 2-core CPU, one GPU and N GPUs.

Fixed global batch, the same windows at any world size and accumulation; gradients averaged, then clipped
by their global norm; a warm-up whose state is restored; a clock that excludes warm-up and validation and
stops after the step that crosses the cap (wallclock-based warmdown); EMA weights at the end; atomic
checkpoints and bit-identical resume on CPU for iteration-based schedules; a non-finite loss stops the run
and keeps the last good checkpoint.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from pgolf.config import RunConfig, config_hash, to_dict
from pgolf.data.loader import build_train_loader
from pgolf.data.shards import list_shards, load_val_tokens
from pgolf.data.tokenizer import build_byte_luts, check_vocab, load_tokenizer, luts_to_torch
from pgolf.errors import PgolfError
from pgolf.files import atomic_open
from pgolf.model.build import build_gpt
from pgolf.model.kernels import select_attention
from pgolf.optim.build import build_optimizers
from pgolf.optim.schedule import lr_multiplier, muon_momentum
from pgolf.rundir import (
    CKPT_DIR,
    ENV,
    LAST_CKPT,
    MODEL_FINAL,
    READS,
    TRAIN_SUMMARY,
    Run,
    RunLogger,
    TrainSummary,
    write_config,
)
from pgolf.runtime import DistEnv, Precision, autocast, compile_on, seed_everything, sync, train_precision
from pgolf.scoring.plan import plain_plan
from pgolf.scoring.sliding import score_windows
from pgolf.telemetry import PhaseTimer, Progress, environment_fingerprint
from pgolf.train.calibrate import calibrate_on_train
from pgolf.train.checkpoint import load_checkpoint, restore, rng_state, save_checkpoint, set_rng_state
from pgolf.train.ema import EMA


class NonFiniteLossError(PgolfError, RuntimeError):
    """The training loss became NaN or inf; the run stops and keeps its last good checkpoint."""


@dataclass
class TrainResult:
    run_dir: Path
    steps: int
    train_seconds: float
    stopped_by: str
    tokens_per_second: float
    step_avg_ms: float
    val: dict | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def derive_grad_accum(cfg: RunConfig, world_size: int, device_type: str = "cuda") -> int:
    """train.grad_accum, or when 0: the challenge's 8 // world_size on GPU (memory-bound), 1 on CPU.

    The choice never changes the math (the loader stripes the same global windows over any split).
    """
    if cfg.train.grad_accum:
        return cfg.train.grad_accum
    a = max(1, 8 // world_size) if device_type == "cuda" else 1
    global_seqs = cfg.train.batch_tokens // cfg.train.seq_len
    while a > 1 and global_seqs % (world_size * a):
        a -= 1
    return a


class Trainer:
    """One training run. `Trainer(cfg, env, run_dir).run()`; `resume=True` continues run_dir."""

    def __init__(self, cfg: RunConfig, env: DistEnv, run_dir: str | Path, *, resume: bool = False,
                 progress: bool = True, echo: bool = True, log: RunLogger | None = None):
        self.cfg, self.env, self.run_dir = cfg, env, Path(run_dir)
        self.resume = resume
        self.progress = progress
        self.log = log or RunLogger(self.run_dir, env.is_main, echo=echo)
        self.reads: list[dict] = []

    # ------------------------------------------------------------------------------------------ setup

    def setup(self) -> None:
        """Build the model, loader, optimizers and validation data (before the clock; `run` calls it)."""
        cfg, env = self.cfg, self.env
        seed_everything(cfg.seed)
        self.device = env.device
        self.precision = self._precision()
        self.amp_dtype, self.compile = self.precision.dtype, compile_on(cfg, self.device)
        self.accum = derive_grad_accum(cfg, env.world_size, self.device.type)
        attn, attn_name, warn = select_attention(cfg.train.attention, self.device, cfg.model.doc_isolation)
        if warn:
            self.log.log(warn)
        self.attn_name = attn_name
        self.model = build_gpt(cfg.model, cfg.seed, self.device, attn)
        self.vocab = cfg.model.vocab_size
        data_dir = Path(cfg.data.path)
        self.train_files = list_shards(data_dir, "train")
        self.loader = self._new_loader()
        if hasattr(self.loader, "open_all"):
            self.loader.open_all()  # validate every train shard before the clock starts
        for p in self.train_files[: cfg.data.train_shards or None]:
            self.reads.append({"file": str(p), "purpose": "train"})
        # Validation stream + byte LUTs, for periodic and final validation only (never for gradients).
        self.val_tokens = load_val_tokens(data_dir, self.vocab)
        for p in list_shards(data_dir, "val"):
            self.reads.append({"file": str(p), "purpose": "periodic_eval"})
        sp = check_vocab(load_tokenizer(cfg.data.tokenizer_path), cfg.data.tokenizer_path, self.vocab)
        self.luts_t = luts_to_torch(build_byte_luts(sp, self.vocab), self.device)
        self.raw_model = self.model
        self.fwd_model = torch.compile(self.model, dynamic=False) if self.compile else self.model
        if env.distributed:
            self.ddp = DistributedDataParallel(self.fwd_model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                           broadcast_buffers=False)
        else:
            self.ddp = None
        self.opt = build_optimizers(self.raw_model, cfg.optim, tie_embeddings=cfg.model.tie_embeddings,
                                    dist_env=env, device=self.device)
        self.ema = EMA(self.raw_model, cfg.train.ema_decay) if cfg.train.ema_decay > 0 else None
        self.step = 0
        self.train_seconds = 0.0
        self.val_history: list[dict] = []

    def _precision(self) -> Precision:
        """train.precision for this machine; a resumed run computes in the precision it recorded (env.json),
        so "auto" is decided once per run, not once per process."""
        if self.resume:
            rec = (Run(self.run_dir).env() or {}).get("train_precision")
            if rec and rec.get("requested") == self.cfg.train.precision:
                return Precision.from_json(rec)
        return train_precision(self.cfg, self.env)

    def _new_loader(self):
        cfg = self.cfg
        return build_train_loader(cfg.data.path, seq_len=cfg.train.seq_len, batch_tokens=cfg.train.batch_tokens,
                                  rank=self.env.rank, world_size=self.env.world_size, grad_accum=self.accum,
                                  data_cfg=cfg.data, vocab_size=self.vocab)

    def _header(self) -> None:
        cfg, env = self.cfg, self.env
        fp = environment_fingerprint(self.device, env.world_size)
        self.log.write_json(ENV, {**fp, "attention": self.attn_name, "compile": self.compile,
                                  "autocast": str(self.amp_dtype), "train_precision": self.precision.to_json()})
        write_config(self.log, cfg)
        counts = self.raw_model.param_count_by_role()
        self.log.log(f"pgolf {fp['pgolf']} torch {fp['torch']} python {fp['python']} device:{self.device} "
                     f"gpu:{fp.get('gpu', '-')}")
        self.log.log(f"preset:{cfg.preset} config_hash:{config_hash(cfg)[:16]} seed:{cfg.seed}")
        self.log.log(f"model_params:{self.raw_model.num_params()} " + " ".join(f"{k}:{v}" for k, v in counts.items() if v))
        self.log.log(f"world_size:{env.world_size} grad_accum_steps:{self.accum} "
                     f"global_batch_tokens:{cfg.train.batch_tokens} seq_len:{cfg.train.seq_len}")
        self.log.log(f"attention:{self.attn_name} compile:{self.compile} precision:{self.precision.name} "
                     f"({self.precision.reason})")
        d = self.loader.describe()
        self.log.log(f"train_loader:{d.get('kind')} train_shards:{d.get('shards')} "
                     f"train_tokens:{d.get('train_tokens')}")
        self.log.log(f"val_loader:shards:{len(list_shards(cfg.data.path, 'val'))} tokens:{len(self.val_tokens)}")
        for role, g in self.opt.groups_summary().items():
            self.log.log(f"optim:{role} " + " ".join(f"{k}:{v}" for k, v in g.items()))

    # ------------------------------------------------------------------------------------------ state

    def _payload(self) -> dict:
        return {
            "model": {k: v.detach().cpu() for k, v in self.raw_model.state_dict().items()},
            "optim": self.opt.state_dict(),
            "ema": self.ema.state_dict() if self.ema else None,
            "loader": self.loader.state_dict(),
            "rng": rng_state(),
            "step": self.step,
            "qat_bits": self.raw_model.qat_bits,
            "train_seconds": self.train_seconds,
            "val_history": self.val_history,
            "config": to_dict(self.cfg),
            "config_hash": config_hash(self.cfg),
        }

    def save(self, name: str = LAST_CKPT) -> None:
        if self.env.is_main:
            save_checkpoint(self.run_dir / CKPT_DIR / name, self._payload())
        self.env.barrier()

    def _restore(self, path: Path) -> None:
        ck = load_checkpoint(path)
        restore(ck, path, config_hash=config_hash(self.cfg), model=self.raw_model, opt=self.opt, ema=self.ema,
                loader=self.loader)
        self.step = int(ck["step"])
        self.raw_model.set_qat(int(ck["qat_bits"]))
        self.train_seconds = float(ck["train_seconds"])
        self.val_history = list(ck.get("val_history", []))

    # ------------------------------------------------------------------------------------------ pieces

    def _sync(self) -> None:
        sync(self.device)

    def train_step(self, lr_mult: float, momentum: float) -> torch.Tensor:
        """One optimizer step on the next global batch; returns the mean loss as a 0-d tensor (no sync)."""
        micro = self.loader.next_step()
        net = self.ddp if self.ddp is not None else self.fwd_model
        total = torch.zeros((), device=self.device, dtype=torch.float32)
        for i, (x, y) in enumerate(micro):
            x = x.to(self.device, non_blocking=True)
            y = y.to(self.device, non_blocking=True)
            last = i == len(micro) - 1
            ctx = self.ddp.no_sync() if (self.ddp is not None and not last) else contextlib.nullcontext()
            with ctx:
                with autocast(self.device, self.amp_dtype):
                    logits = net(x)
                loss = torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.size(-1)), y.reshape(-1))
                (loss / len(micro)).backward()
            total += loss.detach() / len(micro)
        if self.cfg.train.grad_clip_norm > 0:
            self.opt.clip_grad_norm_(self.cfg.train.grad_clip_norm)
        self.opt.step(lr_mult, momentum)
        self.opt.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.raw_model)
        if self.env.distributed:  # report the global mean loss
            self.env.all_reduce_(total)
            total /= self.env.world_size
        return total

    def validate(self, model: torch.nn.Module | None = None, max_tokens: int | None = None) -> dict:
        """Plain validation of the (first train.val_max_tokens of the) stream: the `plain` mode's plan
        (non-overlapping windows of train.seq_len, the last partial one included), so the logged val_bpb
        and `pgolf eval --mode plain` score the same targets."""
        cfg = self.cfg
        model = model or self.raw_model
        limit = cfg.train.val_max_tokens if max_tokens is None else max_tokens
        stream = self.val_tokens[:limit] if limit else self.val_tokens
        # Validation batches are sized by tokens (no gradients): 128k tokens per forward, capped at 64 rows.
        # The uncompiled module: validation shapes vary, and recompiling for them costs more than it saves.
        was_training = model.training
        model.eval()
        try:
            s = score_windows(model, stream, plain_plan(len(stream), cfg.train.seq_len), self.luts_t, self.env,
                              batch_windows=max(1, min(64, 131_072 // cfg.train.seq_len)),
                              autocast_dtype=self.amp_dtype)
        finally:
            model.train(was_training)
        return {"val_loss": s.loss, "val_bpb": s.bpb, "val_targets": s.targets, "val_bytes": s.bytes}

    def _warmup(self) -> None:
        n = self.cfg.train.warmup_steps
        if n <= 0:
            return
        snap_model = {k: v.detach().clone() for k, v in self.raw_model.state_dict().items()}
        snap_opt = copy.deepcopy(self.opt.state_dict())  # state_dict() aliases the live state tensors
        snap_ema = self.ema.state_dict() if self.ema else None
        snap_loader = self.loader.state_dict()
        snap_rng = rng_state()
        if self.env.is_main and self.progress:
            what = "torch.compile of the step, typically 1-2 min on 2 CPU cores" if self.compile else "eager"
            print(f"warmup: {n} step(s) ({what}; not charged to the training clock, state restored after)",
                  flush=True)
        with PhaseTimer(self.log, "compile_warmup", self.device) as t:
            for _ in range(n):
                self.train_step(1.0, self.cfg.optim.muon_momentum_warmup_start)
            self._sync()
        self.raw_model.load_state_dict(snap_model)
        self.opt.load_state_dict(snap_opt)
        if self.ema is not None:
            self.ema.load_state_dict(snap_ema)
        self.loader.load_state_dict(snap_loader)
        set_rng_state(snap_rng)
        self.log.log(f"warmup_steps:{n} warmup_time:{t.seconds:.1f}s (not charged; state restored)")

    # ------------------------------------------------------------------------------------------ run

    def run(self, stop_after: int | None = None) -> TrainResult:
        """Train to the iteration cap or wallclock cap. stop_after: leave after that many steps in this
        process (for tests that kill/resume), without final EMA/validation."""
        self.setup()
        cfg, env = self.cfg, self.env
        if self.resume:
            self._restore(self.run_dir / CKPT_DIR / LAST_CKPT)
            self.log.log(f"resumed_from_step:{self.step} train_time:{self.train_seconds * 1000:.0f}ms "
                         f"precision:{self.precision.name} ({self.precision.reason})")
        else:
            self.log.start_fresh()  # another run's files in this directory would be mixed with this one's
            self._header()
        self.log.write_json(READS, self.reads)
        self._warmup()

        iters = cfg.train.iterations
        cap = cfg.train.max_wallclock_seconds
        if cap > 0 and self._train_calibration_on():
            # Training-batch GPTQ calibration must finish inside the wallclock (docs/DESIGN.md#quant-calibration): reserve it.
            cap = max(cap - cfg.quant.calib_reserve_seconds, 0.0)
            self.log.log(f"calibration_reserve:{cfg.quant.calib_reserve_seconds:.1f}s training_cap:{cap:.1f}s")
        tokens_per_step = cfg.train.batch_tokens
        stopped_by = "iterations"
        bad = torch.zeros((), dtype=torch.bool, device=self.device)  # sticky non-finite flag (no sync)
        steps_here = 0
        bar = Progress("train", total=iters if not cap else None, unit="step", enabled=self.progress and env.is_main,
                       interval=30.0)
        self._sync()
        t_start = time.perf_counter()
        base = self.train_seconds
        last_loss = float("nan")
        try:
            while True:
                elapsed = base + (time.perf_counter() - t_start)
                cap_hit = cap > 0 and elapsed >= cap
                if env.distributed:  # every rank stops after the same step
                    flag = torch.tensor(float(cap_hit), device=self.device)
                    cap_hit = bool(env.all_reduce_(flag, "max").item())
                done = self.step >= iters or cap_hit
                due_val = cfg.train.val_every > 0 and self.step > 0 and self.step % cfg.train.val_every == 0
                if due_val and not done:
                    self._sync()
                    base += time.perf_counter() - t_start  # pause the clock
                    with PhaseTimer(self.log, "periodic_val", self.device):
                        v = self.validate()
                    self._log_val(v, base)
                    t_start = time.perf_counter()
                if done:
                    if cap_hit:
                        stopped_by = "wallclock_cap"
                        self.log.log(f"stopping_early: wallclock_cap train_time:{elapsed * 1000:.0f}ms "
                                     f"step:{self.step}/{iters}")
                    break
                lr_mult = lr_multiplier(self.step, elapsed, cap, cfg.train.warmdown_iters, iters,
                                        cfg.train.warmdown_frac)
                mom = muon_momentum(self.step, cfg.optim.muon_momentum_warmup_start, cfg.optim.muon_momentum,
                                    cfg.optim.muon_momentum_warmup_steps)
                qat_t = cfg.train.late_qat_threshold
                if qat_t > 0 and lr_mult < qat_t and not self.raw_model.qat_bits:
                    self.raw_model.set_qat(cfg.quant.matrix_bits)  # compiled graphs re-trace on this change
                    self.log.log(f"late_qat:on bits:{cfg.quant.matrix_bits} step:{self.step} lr_mult:{lr_mult:.4f}")
                    self.log.metric(kind="event", event="late_qat_on", step=self.step, lr_mult=lr_mult)
                loss = self.train_step(lr_mult, mom)
                bad |= ~torch.isfinite(loss)
                self.step += 1
                steps_here += 1
                bar.update(1, eta=self._eta_seconds(elapsed, cap))
                log_now = self.step % cfg.train.log_every == 0 or self.step <= 5 or self.step == iters
                ck_now = cfg.train.checkpoint_every > 0 and self.step % cfg.train.checkpoint_every == 0
                if log_now or ck_now or self.device.type == "cpu":
                    if bool(bad.item()):  # sync point: at log cadence (every step on CPU, where it is free)
                        raise NonFiniteLossError(
                            f"non-finite training loss at or before step {self.step}; stopping. The last good "
                            f"checkpoint (if any) is kept in {self.run_dir / CKPT_DIR}")
                if log_now:
                    last_loss = float(loss.item())  # sync point: log cadence
                    el = base + (time.perf_counter() - t_start)
                    avg = 1000 * el / self.step
                    self.log.log(f"step:{self.step}/{iters} train_loss:{last_loss:.4f} train_time:{el * 1000:.0f}ms "
                                 f"step_avg:{avg:.2f}ms tok/s:{tokens_per_step * self.step / max(el, 1e-9):.0f} "
                                 f"lr_mult:{lr_mult:.4f}")
                    self.log.metric(kind="train", step=self.step, train_loss=last_loss, train_time_s=el,
                                    step_avg_ms=avg, lr_mult=lr_mult, muon_momentum=mom)
                if ck_now:
                    self._sync()
                    self.train_seconds = base + (time.perf_counter() - t_start)
                    self.save()
                if stop_after is not None and steps_here >= stop_after:
                    self._sync()
                    self.train_seconds = base + (time.perf_counter() - t_start)
                    bar.close()
                    return TrainResult(self.run_dir, self.step, self.train_seconds, "stop_after", 0.0, 0.0)
        finally:
            bar.close()
        self._sync()
        self.train_seconds = base + (time.perf_counter() - t_start)
        self.log.set_timing("train", self.train_seconds)  # total across resumes
        if bool(bad.item()):
            raise NonFiniteLossError(f"non-finite training loss before step {self.step}; stopping")
        step_avg = 1000 * self.train_seconds / max(self.step, 1)
        tps = tokens_per_step * self.step / max(self.train_seconds, 1e-9)
        if self.device.type == "cuda":
            self.log.log(f"peak memory allocated: {torch.cuda.max_memory_allocated() // 2**20} MiB "
                         f"reserved: {torch.cuda.max_memory_reserved() // 2**20} MiB")

        # Final: raw model validation, then EMA weights loaded and validated (diagnostic, pre-quantization).
        with PhaseTimer(self.log, "final_val", self.device):
            raw_v = self.validate()
            self._log_val(raw_v, self.train_seconds, tag="final_raw")
            if self.ema is not None:
                self.ema.copy_to(self.raw_model)
                ema_v = self.validate()
                self._log_val(ema_v, self.train_seconds, tag="final_ema")
            else:
                ema_v = raw_v
        self.save()
        run = Run(self.run_dir)
        if env.is_main:
            before = run.sha256(MODEL_FINAL)
            with atomic_open(self.run_dir / MODEL_FINAL) as fh:
                torch.save({k: v.detach().cpu() for k, v in self.raw_model.state_dict().items()}, fh)
            self.log.replaced(MODEL_FINAL, before, run.sha256(MODEL_FINAL))
        env.barrier()  # model_final.pt exists before any rank goes on (quantize_run loads it on every rank)
        calib_s = (calibrate_on_train(self.raw_model, self.loader, cfg.quant, env, self.run_dir, self.log,
                                      self.train_seconds) if self._train_calibration_on() else 0.0)
        summary = TrainSummary(steps=self.step, train_seconds=self.train_seconds, stopped_by=stopped_by,
                               step_avg_ms=step_avg, tokens_per_second=tps, final_val=ema_v, final_val_raw=raw_v,
                               ema=self.ema is not None, world_size=env.world_size, grad_accum=self.accum,
                               calib_seconds=calib_s, charged_seconds=self.train_seconds + calib_s,
                               config_hash=config_hash(cfg), weights_sha256=run.sha256(MODEL_FINAL))
        self.log.write_json(TRAIN_SUMMARY, summary.to_json())
        self.log.log(f"train_done steps:{self.step} train_time:{self.train_seconds * 1000:.0f}ms "
                     f"step_avg:{step_avg:.2f}ms tok/s:{tps:.0f}")
        return TrainResult(self.run_dir, self.step, self.train_seconds, stopped_by, tps, step_avg, ema_v)

    def _eta_seconds(self, elapsed: float, cap: float) -> float | None:
        """Training seconds left: to the wallclock cap, or to the iteration cap at the mean step time so far
        (whichever comes first); None before the first step."""
        if self.step == 0:
            return None
        by_iters = (self.cfg.train.iterations - self.step) * elapsed / self.step
        return min(by_iters, cap - elapsed) if cap > 0 else by_iters

    def _train_calibration_on(self) -> bool:
        q = self.cfg.quant
        return q.method == "gptq" and q.calib_source == "train"

    def _log_val(self, v: dict, el: float, tag: str = "") -> None:
        prefix = f"{tag} " if tag else ""
        self.log.log(f"{prefix}step:{self.step}/{self.cfg.train.iterations} val_loss:{v['val_loss']:.4f} "
                     f"val_bpb:{v['val_bpb']:.4f} train_time:{el * 1000:.0f}ms "
                     f"step_avg:{1000 * el / max(self.step, 1):.2f}ms")
        rec = {"kind": "val", "tag": tag or "periodic", "step": self.step, "train_time_s": el, **v}
        self.val_history.append(rec)
        self.log.metric(**rec)


def train(cfg: RunConfig, env: DistEnv, run_dir: str | Path, *, resume: bool = False, progress: bool = True,
          echo: bool = True, log: RunLogger | None = None) -> TrainResult:
    return Trainer(cfg, env, run_dir, resume=resume, progress=progress, echo=echo, log=log).run()
