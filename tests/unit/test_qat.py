"""Late QAT: the forward really uses int-grid matrices, gradients pass straight through, and the
trainer switches it on below the LR threshold."""

import json

import torch

from pgolf.model.gpt import GPT
from pgolf.model.layers import fake_quant_ste
from pgolf.model.roles import Role, role_of
from pgolf.presets import resolve
from pgolf.runtime import DistEnv
from pgolf.train.loop import Trainer


def test_fake_quant_grid_and_straight_through():
    torch.manual_seed(0)
    w = torch.randn(8, 32, requires_grad=True)
    q = fake_quant_ste(w, 6)
    s = w.detach().abs().amax(-1, keepdim=True) / 31
    k = q.detach() / s
    assert torch.allclose(k, k.round(), atol=1e-4) and k.abs().max() <= 31 + 1e-4
    assert (q.detach() - w.detach()).abs().max() <= s.max() / 2 + 1e-7
    q.sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))  # identity gradient


def test_qat_forward_equals_model_with_quantized_matrices():
    cfg, _ = resolve("tiny", [], env={})
    torch.manual_seed(0)
    m = GPT(cfg.model)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = torch.randint(0, 512, (2, 32))
    ref = GPT(cfg.model)
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        for p in ref.parameters():
            if role_of(p) is Role.MATRIX:
                p.copy_(fake_quant_ste(p, 6))
    m.set_qat(6)
    assert m.qat_bits == 6
    assert torch.equal(m(x), ref(x))
    m.set_qat(0)
    assert not torch.equal(m(x), ref(x))


def test_trainer_turns_on_late_qat(tmp_path, tiny_data):
    cfg, _ = resolve("tiny", [f"data.path={tiny_data['dataset_dir']}", f"data.tokenizer_path={tiny_data['tokenizer']}",
                              "train.late_qat_threshold=0.5", "train.iterations=12", "train.warmdown_iters=8",
                              "train.val_every=0"], env={})
    tr = Trainer(cfg, DistEnv(), tmp_path, progress=False, echo=False)
    res = tr.run()
    log = (tmp_path / "log.txt").read_text()
    assert "late_qat:on bits:6" in log
    ev = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines() if '"event"' in x]
    assert ev and ev[0]["lr_mult"] < 0.5 and ev[0]["step"] >= 8
    assert tr.raw_model.qat_bits == 6 and res.val["val_loss"] < 7
