"""Self-generated calibration on 2 gloo ranks == one process (STACK.md 5.2; ARCHITECTURE.md 4.7 rule 7):
the ranks generate disjoint batches of sequences and all-reduce the Hessian sums, so every rank ends with
the one-process Hessians (the matrices' and the tied head's)."""

from __future__ import annotations

import pytest
import torch

from pgolf.presets import resolve
from pgolf.quant.calib import hessian_inputs, self_generated_batches
from pgolf.quant.hessian import collect_hessians
from pgolf.runtime import DistEnv
from tests.helpers.dist import spawn_gloo
from tests.helpers.models import perturbed_tiny_model

pytestmark = pytest.mark.dist

SETS = ["quant.calib_seqs=5", "quant.calib_batch=2", "quant.calib_seq_len=40"]  # 3 batches: 2 on rank 0, 1 on rank 1


def _calibrate(env: DistEnv) -> dict[str, torch.Tensor]:
    cfg, _ = resolve("tiny", SETS, env={})
    model = perturbed_tiny_model().float()
    seqs = self_generated_batches(model, cfg.quant, vocab_size=cfg.model.vocab_size, seed=3, env=env)
    return collect_hessians(model, hessian_inputs(seqs), env, head=True)


@pytest.mark.timeout(120)
def test_two_rank_calibration_equals_one_process():
    want = _calibrate(DistEnv())
    got = spawn_gloo(2, _calibrate, timeout=90.0)
    assert "tok_emb" in want and set(got[0]) == set(want) == set(got[1])
    for name, h in want.items():
        assert torch.equal(got[0][name], got[1][name]), name  # the all-reduce hands every rank the same sums
        # Same sequences, sums in another order (two partial sums of fp32 X^T X): fp32 rounding only.
        assert float((got[0][name] - h).abs().max()) <= 1e-6 * float(h.abs().max()), name
