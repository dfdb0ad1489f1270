"""Calibration data for GPTQ: sequences the model writes itself, or training batches (docs/DESIGN.md#quant-calibration).

Self-generated (the default, PR #1019): `calib_seqs` sequences of `calib_seq_len` tokens; the first token
of each is drawn uniformly from the vocabulary, every later one from softmax(logits / temperature) of
the model's own prediction. No training or validation token is read, so calibration can run after the
training clock stops.

Two samplers (quant.calib_kv_cache):
- KV cache (default): one new position per step, keys and values of the earlier ones cached
  (`GPT.decode_hidden`); O(L) position-forwards per sequence instead of O(L^2). Every position uses the
  rotary tables of the L - 1 positions the Hessian pass will read, so generation and Hessian forwards
  see the same positions.
- no cache (PR #1019 as written): the whole prefix is re-read at every step; the prefix length sets the
  NTK rotary base, so beyond rope_ref_len every step sees a slightly different base. Below rope_ref_len
  the two samplers are the same math (tests/parity/test_kv_cache.py).

Same sequences at every world size: the sequences are cut into generation batches of `calib_batch`
consecutive sequences, batch k is generated with its own generator seeded from (seed, k), and batches
are dealt round-robin to ranks (batch k -> rank k % world). The Hessian sums are then all-reduced
(`collect_hessians`), so one process and eight produce the same H up to float summation order.

Training-batch calibration (calib_source = "train") lives in the trainer: it must run inside the
training wallclock (the cap is shortened by `calib_reserve_seconds`), because calibrating on training
data after the 600 s window was ruled out (docs/DESIGN.md#quant-calibration). Its Hessians are saved with the run.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pgolf.runtime import DistEnv, autocast

GEN_SEED_STRIDE = 1_000_003
"""Batch k's generator seed is seed * GEN_SEED_STRIDE + k (distinct streams per batch)."""


def rank_batches(n_seqs: int, batch: int, env: DistEnv) -> list[tuple[int, int, int]]:
    """[(batch index k, first sequence, end sequence)] of this rank: batch k covers sequences
    [k * batch, min((k + 1) * batch, n_seqs)) and belongs to rank k % world_size."""
    n_batches = (n_seqs + batch - 1) // batch
    return [(k, k * batch, min((k + 1) * batch, n_seqs)) for k in range(env.rank, n_batches, env.world_size)]


@torch.no_grad()
def generate_batch(model: nn.Module, n: int, seq_len: int, *, vocab_size: int, temperature: float,
                   generator: torch.Generator, device: torch.device,
                   autocast_dtype: torch.dtype | None = None, kv_cache: bool = True) -> Tensor:
    """(n, seq_len) int64 tokens sampled from the model (first token uniform). The head runs on the last
    position only; kv_cache selects the sampler (module docstring)."""
    x = torch.randint(0, vocab_size, (n, 1), generator=generator, device=device)  # (n, 1)
    cache = model.new_kv_cache(seq_len - 1) if kv_cache and seq_len > 1 else None
    with autocast(device, autocast_dtype):
        for _ in range(seq_len - 1):
            if cache is not None:
                h = model.decode_hidden(x, cache)  # (n, 1, D): the newest position only
            else:
                h = model.forward_hidden(x)[:, -1:]  # (n, 1, D)
            logits = model.logits_from_hidden(h)[:, 0, :vocab_size].float()  # (n, V) fp32
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, 1, generator=generator)  # (n, 1)
            x = torch.cat([x, nxt], dim=1)
    return x


def self_generated_batches(model: nn.Module, quant_cfg, *, vocab_size: int, seed: int, env: DistEnv,
                           autocast_dtype: torch.dtype | None = None, progress=None) -> list[Tensor]:
    """This rank's share of the self-generated calibration sequences, as (b, seq_len) tensors on env.device."""
    q = quant_cfg
    was_training = model.training
    model.eval()
    out = []
    try:
        for k, a, b in rank_batches(q.calib_seqs, q.calib_batch, env):
            g = torch.Generator(device=env.device)
            g.manual_seed(seed * GEN_SEED_STRIDE + k)
            out.append(generate_batch(model, b - a, q.calib_seq_len, vocab_size=vocab_size,
                                      temperature=q.calib_temperature, generator=g, device=env.device,
                                      autocast_dtype=autocast_dtype, kv_cache=q.calib_kv_cache))
            if progress is not None:
                progress.update(b - a)
    finally:
        model.train(was_training)
    return out


def hessian_inputs(seqs: list[Tensor]) -> list[Tensor]:
    """Calibration forward inputs: the first seq_len - 1 tokens of each sequence (docs/DESIGN.md#quant-calibration)."""
    return [s[:, :-1] for s in seqs]
