"""Calibration Hessians H = sum X^T X / n_sequences for every Role.MATRIX weight (docs/DESIGN.md#quant-calibration), and
optionally for the output head's weight (the tied token embedding or the untied head): its X is the
final normed hidden state h of `logits_from_hidden` (the table lookup is F.embedding, never recorded).

X (tokens, cols) is the input of the matmul that uses the weight. The model's modules call
`F.linear(x, self.q.to(x.dtype))` on raw parameters (no nn.Linear submodules), so a forward hook on a
module would only see the attention / MLP inputs, not the inputs of `o` and `down`. Instead,
`capture_linear_inputs` swaps `torch.nn.functional.linear` for a recorder while calibrating: when the
weight argument IS one of the tracked parameter objects, the input is handed to a callback. Every tracked
matrix must be seen at least once, otherwise `collect_hessians` raises (loud, never a silent zero H).

Requirements this places on the caller: run the eager (uncompiled) module, in the parameters' dtype and
without autocast, so that `.to(x.dtype)` returns the parameter itself (a cast copy would not be
recognised). The forward is only read, never changed: the recorder calls the original F.linear.

Q, K and V of a layer consume the same tensor, so the X^T X of an input is computed once and shared
(their Hessians are then identical objects' values, as in PR #1019). The result is NOT damped
(`gptq_quantize` damps). Across ranks the sums and the sequence count are all-reduced before the one
division ("sum, then divide", docs/DESIGN.md#house-rules).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pgolf.model.roles import Role, role_of


def matrix_params(model: nn.Module) -> dict[str, nn.Parameter]:
    """{name: parameter} of every Role.MATRIX parameter, in model order."""
    return {name: p for name, p in model.named_parameters() if role_of(p) is Role.MATRIX}


def head_param(model: nn.Module) -> dict[str, nn.Parameter]:
    """{name: parameter} of the output head's weight (`model.output_weight()`: tok_emb when tied), or {}
    for a model without one. Found by identity, not by name."""
    get = getattr(model, "output_weight", None)
    if get is None:
        return {}
    w = get()
    return {name: p for name, p in model.named_parameters() if p is w}


def hessian_params(model: nn.Module, *, head: bool = False) -> dict[str, nn.Parameter]:
    """The weights `collect_hessians` tracks: every matrix, plus the head's weight when head=True."""
    return {**matrix_params(model), **(head_param(model) if head else {})}


@contextlib.contextmanager
def capture_linear_inputs(weights: dict[str, Tensor], on_input: Callable[[str, Tensor], None]) -> Iterator[None]:
    """Within the block, every F.linear(x, w) whose w is one of `weights` (by identity) calls
    on_input(name, x) before the matmul. Restores F.linear on exit, also on error."""
    by_id = {id(w): name for name, w in weights.items()}
    original = F.linear

    def recording_linear(input: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
        name = by_id.get(id(weight))
        if name is not None and weights[name] is weight:
            on_input(name, input)
        return original(input, weight, bias)

    F.linear = recording_linear
    try:
        yield
    finally:
        F.linear = original


@torch.no_grad()
def collect_hessians(model: nn.Module, batches: Iterable[Tensor], dist_env=None, *,
                     head: bool = False) -> dict[str, Tensor]:
    """{param name: H (cols, cols) float32} = sum over all sequences of X^T X / n_sequences, for every
    matrix and, with head=True, the output head's weight (`hessian_params`).

    batches: token id tensors (B, T) already on the model's device (e.g. the first T tokens of each
    self-generated sequence); n_sequences = sum of B over batches (and ranks). dist_env: a
    `pgolf.runtime.DistEnv` (or None for one process); with world_size > 1 every rank passes its own
    share of the sequences and all ranks get the same H.
    """
    weights = hessian_params(model, head=head)
    H: dict[str, Tensor] = {name: torch.zeros(p.size(1), p.size(1), dtype=torch.float32, device=p.device)
                            for name, p in weights.items()}
    seen: set[str] = set()
    last: list = [None, None]  # (input tensor, its X^T X): q, k and v share one input

    def on_input(name: str, x: Tensor) -> None:
        if last[0] is not x:
            X = x.detach().reshape(-1, x.size(-1)).float()  # (tokens, cols)
            last[0], last[1] = x, X.T @ X  # (cols, cols)
        H[name] += last[1]
        seen.add(name)

    was_training = model.training
    model.eval()
    n_seq = 0
    try:
        with capture_linear_inputs(weights, on_input):
            for idx in batches:
                model(idx)
                last[0] = last[1] = None
                n_seq += int(idx.size(0))
    finally:
        model.train(was_training)
    missing = [name for name in weights if name not in seen]
    if n_seq > 0 and missing:
        raise RuntimeError(f"collect_hessians: no input seen for {missing[:3]} ({len(missing)} matrices); "
                           "run the eager model in its parameter dtype without autocast")
    device = next(iter(H.values())).device if H else torch.device("cpu")
    count = torch.tensor([float(n_seq)], dtype=torch.float64, device=device)
    if dist_env is not None and dist_env.world_size > 1:
        for name in H:
            dist_env.all_reduce_(H[name])
        dist_env.all_reduce_(count)
    total = float(count.item())  # CPU-GPU sync point (once per calibration)
    if total <= 0:
        raise ValueError("collect_hessians: no calibration sequences")
    return {name: h / total for name, h in H.items()}
