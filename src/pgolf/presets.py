"""Named presets: functions returning a full RunConfig (variants derive with dataclasses.replace),
and `resolve()`: a preset overridden once by the environment and `--set` (see pgolf.config.overrides).

- `record`: the V20 stack of docs/DESIGN.md#model on 8xH100 (600 s), qk_gain 5.0, BigramHash 3072x112.
- `cpu`:    the best model we can train in 600 s on a 2-core CPU (tuned in dev/LOG.md).
- `tiny`:   every component on, at toy size, for tests (seconds on CPU).
- `baseline`: the challenge's naive baseline shape (9 plain layers, ReLU^2, no V20 extras), 8xH100.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace

from pgolf.config import (
    BudgetConfig,
    ConfigError,
    DataConfig,
    LoraConfig,
    ModelConfig,
    OptimConfig,
    QuantConfig,
    RunConfig,
    ScoreConfig,
    SlidingConfig,
    SlotConfig,
    TrainConfig,
    TTTConfig,
    apply_overrides,
    env_overrides,
    parse_set,
)
from pgolf.config.overrides import Override


def record() -> RunConfig:
    return RunConfig(
        preset="record",
        model=ModelConfig(),
        data=DataConfig(),
        train=TrainConfig(),
        optim=OptimConfig(),
        quant=QuantConfig(),
        score=ScoreConfig(modes=("sliding",)),
        budget=BudgetConfig(),
    )


def baseline() -> RunConfig:
    """The naive challenge baseline's shape: plain GPT blocks, none of the V20 additions."""
    r = record()
    return replace(
        r,
        preset="baseline",
        model=replace(
            r.model, num_layers=9, mlp_mult=2.0, mlp_activation="relu2", rope_dims=0, rope_ref_len=0,
            qk_gain_init=1.5, ln_scale=False, xsa_last_n=0, bigram_buckets=0, smear_gate=False,
            ve_layers=(), unet_skips=False, resid_mix=False,
        ),
        train=replace(r.train, seq_len=1024, batch_tokens=524_288, warmdown_iters=1200, ema_decay=0.0,
                      grad_clip_norm=0.0, val_every=1000),
        optim=replace(r.optim, matrix_lr=0.04, scalar_lr=0.04, tied_embed_lr=0.05, muon_momentum=0.95,
                      muon_momentum_warmup_start=0.85, muon_momentum_warmup_steps=500, muon_wd=0.0,
                      adam_wd=0.0),
        score=replace(r.score, seq_len=1024),
    )


def cpu() -> RunConfig:
    """A 10-minute run on a 2-core CPU: 4 x 256, small batches, torch.compile, precision `auto`.

    Shape and batch were chosen by measurement on 2-core VMs (dev/LOG.md, 2026-11-26 and 2026-12-04): at
    this budget more optimizer steps beat a larger model or batch. `auto` trains in bf16 autocast only where
    this CPU runs bf16 matmuls fast (AMX units) and in fp32 elsewhere (an AVX2 / AVX-512 CPU without bf16
    units emulates bf16 many times slower). The warmdown is the last 40% of the wallclock budget, so the
    schedule fits whatever number of steps this machine makes. Attention is document-isolated: in 600-s
    runs it scored 0.0029 BPB better (sliding, one seed each) at the same tokens/s (dev/LOG.md, 2026-12-04).
    """
    r = record()
    return replace(
        r,
        preset="cpu",
        model=replace(r.model, num_layers=4, model_dim=256, num_heads=4, num_kv_heads=2, mlp_mult=3.0,
                      rope_dims=16, rope_ref_len=512, xsa_last_n=4, bigram_buckets=1024, bigram_dim=64,
                      ve_dim=64, ve_layers=(2, 3), doc_isolation=True),
        data=replace(r.data, path="data/dev/datasets/fineweb10B_sp1024",
                     tokenizer_path="data/dev/tokenizers/fineweb_1024_bpe.model", mix_min_shards=1,
                     mix_max_shards=4, progress_batches=400),
        train=replace(r.train, seq_len=512, batch_tokens=4096, warmup_steps=2, warmdown_frac=0.4, val_every=200,
                      val_max_tokens=65_536, log_every=50, ema_decay=0.99, compile="on", precision="auto"),
        optim=replace(r.optim, muon_momentum_warmup_steps=100),
        # Self-generated calibration re-reads the prefix at every step (cost ~ seqs * len^2): 32 x 128
        # takes ~15-35 s on 2 cores, 32 x 256 four times that. With that little calibration data, more
        # damping and the per-row clip choice halve GPTQ's penalty (dev/LOG.md, 2026-11-26).
        quant=replace(r.quant, calib_seqs=32, calib_seq_len=128, calib_batch=32, damp=0.1, clip_select="row"),
        score=replace(r.score, seq_len=512, sliding=SlidingConfig(stride=64, batch_windows=16),
                      ttt=replace(r.score.ttt, chunk_tokens=16_384, batch_seqs=8)),
        budget=replace(r.budget, target_hardware="2-core CPU"),
    )


def cpu_baseline() -> RunConfig:
    """The naive baseline's architecture and optimizer at the cpu preset's budget (9 plain layers x 256)."""
    c, b = cpu(), baseline()
    return replace(
        c,
        preset="cpu_baseline",
        model=replace(b.model, model_dim=c.model.model_dim, num_heads=c.model.num_heads,
                      num_kv_heads=c.model.num_kv_heads),
        train=replace(c.train, ema_decay=0.0, grad_clip_norm=0.0),
        optim=replace(b.optim, muon_momentum_warmup_steps=c.optim.muon_momentum_warmup_steps),
    )


def tiny() -> RunConfig:
    """Toy sizes with every component on; used by the test suite and `make demo` smoke stages."""
    r = record()
    return replace(
        r,
        preset="tiny",
        model=ModelConfig(vocab_size=512, num_layers=2, model_dim=64, num_heads=4, num_kv_heads=2,
                          mlp_mult=2.0, rope_dims=8, rope_ref_len=32, xsa_last_n=2, bigram_buckets=64,
                          bigram_dim=16, ve_dim=16, ve_layers=(1,)),
        data=replace(r.data, path="data/tiny/datasets/fineweb10B_sp512",
                     tokenizer_path="data/tiny/tokenizers/fineweb_512_bpe.model", mix_min_shards=1,
                     mix_max_shards=2, progress_batches=10),
        train=TrainConfig(seq_len=64, batch_tokens=512, iterations=20, max_wallclock_seconds=0.0, ema_decay=0.9,
                          warmup_steps=2, warmdown_iters=5, val_every=10, val_max_tokens=4096, log_every=5,
                          compile="off", precision="fp32"),
        optim=replace(r.optim, muon_momentum_warmup_steps=5),
        quant=replace(r.quant, calib_seqs=4, calib_seq_len=64, calib_batch=2, block_size=16),
        score=ScoreConfig(modes=("sliding",), seq_len=64, precision="fp32",
                          sliding=SlidingConfig(stride=16, batch_windows=8),
                          slot=SlotConfig(phase_iters=(2, 3), phase_history=(3, 5), phase_alpha=(0.0, 0.0),
                                          focal=16),
                          ttt=TTTConfig(chunk_tokens=256, epochs=1, batch_seqs=4),
                          # a chunk fits the 64-token window; the tests' lora numbers predate the cpu defaults
                          lora=LoraConfig(chunk_tokens=64, lr=0.003)),
        budget=replace(r.budget, target_hardware="any CPU"),
    )


PRESETS: dict[str, Callable[[], RunConfig]] = {
    "record": record,
    "cpu": cpu,
    "tiny": tiny,
    "baseline": baseline,
    "cpu_baseline": cpu_baseline,
}


def get_preset(name: str) -> RunConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None


def resolve(preset: str, sets: Iterable[str] = (), env: Mapping[str, str] | None = None,
            seed: int | None = None) -> tuple[RunConfig, list[Override]]:
    """Preset -> env (legacy, then PGOLF_) -> --set -> --seed. Returns the tree and what was applied.

    env None reads the process environment (this module and `runtime.py` are the only places under
    pgolf that read os.environ)."""
    if env is None:
        env = os.environ
    base = get_preset(preset)
    applied = env_overrides(env) + parse_set(sets)
    if seed is not None:
        applied.append(Override("seed", seed, "--seed"))
    return apply_overrides(base, applied), applied
