"""Per-row low-rank adapters (LoRA) for test-time training, one independent set per document of a batch.

Row b of a batch is one document; every adapter tensor has a leading batch dimension, so B documents
adapt side by side in batched matmuls and no document's adapter ever sees another's rows. An adapter
adds scale * (x A^T) B^T to a projection, with A (B, r, in) and B (B, out, r); B starts at zero, so
every document starts exactly at the base model (docs/DESIGN.md#doc-lora-ttt). Targets, all reading
RMS-normed activations:

| target | input                      | added to                                   | in -> out   |
|--------|----------------------------|--------------------------------------------|-------------|
| q      | the attention-normed input | the query projection (before QK-norm/RoPE) | D -> D      |
| k, v   | the same                   | the key / value projection                 | D -> Hkv*Dh |
| o      | the same block input       | the attention output after the out-proj    | D -> D      |
| mlp    | the MLP-normed input       | the MLP output                             | D -> D      |
| head   | the final-normed hidden    | the logits before the softcap              | D -> V      |

Layer index -1 is the head. The model reads adapters through `delta`; it never owns them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from pgolf.config import ModelConfig

TARGETS = ("q", "k", "v", "o", "mlp", "head")
HEAD = -1


def target_dims(cfg: ModelConfig, target: str) -> tuple[int, int]:
    """(in, out) of an adapter target for this model."""
    d = cfg.model_dim
    return {"q": (d, d), "k": (d, cfg.kv_dim), "v": (d, cfg.kv_dim), "o": (d, d), "mlp": (d, d),
            "head": (d, cfg.vocab_size)}[target]


class LoraAdapters:
    """Adapters of B documents: a[(layer, target)] (B, r, in) and b[(layer, target)] (B, out, r), fp32."""

    def __init__(self, a: dict[tuple[int, str], Tensor], b: dict[tuple[int, str], Tensor], scale: float):
        self.a, self.b, self.scale = a, b, scale

    @staticmethod
    def fresh(cfg: ModelConfig, targets: Iterable[str], rank: int, scale: float, generators: list[torch.Generator],
              device: torch.device) -> LoraAdapters:
        """New adapters for len(generators) documents: A ~ U(-1/sqrt(in), 1/sqrt(in)) drawn from each
        document's own generator (so a document's adapter does not depend on its batch), B = 0."""
        a, b = {}, {}
        layers = [(i, t) for i in range(cfg.num_layers) for t in targets if t != "head"]
        if "head" in targets:
            layers.append((HEAD, "head"))
        for key in layers:
            n_in, n_out = target_dims(cfg, key[1])
            bound = 1.0 / n_in ** 0.5
            rows = [(torch.rand(rank, n_in, generator=g) * 2 - 1) * bound for g in generators]
            a[key] = torch.stack(rows).to(device).requires_grad_(True)
            b[key] = torch.zeros(len(generators), n_out, rank, device=device, requires_grad=True)
        return LoraAdapters(a, b, scale)

    def parameters(self) -> list[Tensor]:
        return [t for k in self.a for t in (self.a[k], self.b[k])]

    def delta(self, layer: int, target: str, x: Tensor) -> Tensor | None:
        """x (B, T, in) -> the adapter's addition (B, T, out) in x's dtype, or None if there is no adapter."""
        key = (layer, target)
        if key not in self.a:
            return None
        a, b = self.a[key].to(x.dtype), self.b[key].to(x.dtype)
        return self.scale * torch.bmm(torch.bmm(x, a.transpose(1, 2)), b.transpose(1, 2))

    def rows(self, index: Tensor) -> LoraAdapters:
        """The adapters of a subset of the documents (views for the forward; gradients flow back)."""
        return LoraAdapters({k: v[index] for k, v in self.a.items()}, {k: v[index] for k, v in self.b.items()},
                            self.scale)
