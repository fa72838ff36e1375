"""Backpropagation (the reference): exact gradients by autograd.

Through a net that transmits s_i = T_i(h_i) (sign, sampled binary units; see :mod:`biocredit.nets`) the
gradient follows the net's ``transmission_gradient``: ``zero`` gives the exact gradient of the discrete net, so
every layer below a sign learns nothing (Lee et al. 2015, discrete net, baseline 1; disc_bp1.py);
``straight_through`` gives the straight-through estimator (stochastic net baseline; sto_bp_ge.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from biocredit.losses import loss_value, output_delta
from biocredit.nets import MLP, mm
from biocredit.rules.base import LearningRule, StepResult, propagate_through_feedback


def backprop_grads(net: MLP, x: Tensor, target: Tensor, loss: str, reduction: str) -> tuple[Tensor, Tensor, list, list]:
    """Autograd pass: (loss, y, [dL/dW_i, dL/db_i per parameter], [Δh_i = -dL/dh_i for hidden i = 1..L-1])."""
    with torch.enable_grad():
        fwd = net.forward_all(x)
        hidden = fwd.h[1:-1]
        value = loss_value(loss, fwd.a[-1], fwd.h[-1], target, reduction)
        params = list(net.parameters())
        grads = torch.autograd.grad(value.sum(), params + hidden)  # sum: one loss per net of an ensemble
    n = len(params)
    delta_h = [None] + [-g for g in grads[n:]]
    return value.detach(), fwd.h[-1].detach(), list(grads[:n]), delta_h


@torch.no_grad()
def backprop_explicit(
    net: MLP, x: Tensor, target: Tensor, loss: str, reduction: str, generator: torch.Generator | None = None
) -> tuple[list, list, Tensor]:
    """The same gradients as :func:`backprop_grads`, by explicit algebra (δ_i = (W_{i+1}ᵀ δ_{i+1}) ∘ f'(a_i)).

    About 3× cheaper than autograd for the small nets of the synthetic tasks, so the trainer's angle
    measurements use it; tests check it against autograd. Returns ([dL/dW_i, dL/db_i, ...] in
    ``net.parameters()`` order, [Δh_i = −dL/dh_i for hidden i], δ_L = dL/da_L). ``generator``: where a net that
    draws (input noise, sampled units) takes its draws, by default the net's own.
    """
    fwd = net.forward_all(x, generator)
    delta_L = output_delta(loss, net.activations[-1], fwd, target, reduction)
    feedback = [None, None] + [W.mT for W in net.W[1:]]
    delta, delta_h = propagate_through_feedback(net, fwd, delta_L, feedback)
    gW = [mm(delta[i].mT, fwd.input_of(i)) for i in range(1, net.n_layers + 1)]  # layer i read s_{i-1}
    gb = [delta[i].sum(dim=-2) for i in range(1, net.n_layers + 1)] if net.b is not None else []
    return gW + gb, delta_h, delta_L


class Backprop(LearningRule):
    """Δh_i = W_{i+1}^T delta_{i+1}: the gradient of the loss (Rumelhart et al. 1986)."""

    name = "backprop"
    ensemble = True
    compare_to_backprop = False

    def compute_grads(self, net: MLP, x: Tensor, target: Tensor) -> StepResult:
        value, y, grads, delta_h = backprop_grads(net, x, target, self.loss, self.reduction)
        for p, g in zip(net.parameters(), grads, strict=False):
            p.grad = g
        return StepResult(loss=value, output=y, delta_h=delta_h)
