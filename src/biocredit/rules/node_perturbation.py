"""Node perturbation, the "reinforcement learning" baseline of Lillicrap et al. 2016 (preprint Fig. 1).

For every example, the units' activities h_i (i = 1..L) are perturbed together by Gaussian noise
ξ_i ~ N(0, σ²I); the change in that example's loss, δL = L(h + ξ) − L(h), is a scalar reinforcement
signal broadcast to every unit. ĝ_i = δL ξ_i / σ² estimates dL/dh_i without any error transport
(E[ĝ_i] = dL/dh_i to first order in σ); each layer then makes its local update
ΔW_i ∝ −(ĝ_i ∘ f'(a_i)) h_{i−1}ᵀ with the clean activities (Williams 1992; Werfel, Xie & Seung 2005).
"""

from __future__ import annotations

import torch
from torch import Tensor

from biocredit.losses import loss_value
from biocredit.nets import MLP, activation, activation_derivative
from biocredit.rules.base import LearningRule, StepResult, set_layer_grads


class NodePerturbation(LearningRule):
    name = "node_perturbation"
    ensemble = True
    PARAMS = {"sigma": 0.01}  # sd of the perturbation; "by manual search" in the paper (value not given)

    def __init__(self, net: MLP, params, loss: str, reduction: str, generator: torch.Generator):
        super().__init__(net, params, loss, reduction, generator)
        if loss != "squared_error" or "softmax" in net.activations:
            raise ValueError("node_perturbation is implemented for squared_error with elementwise activations")

    def _perturbed_loss(self, net: MLP, x: Tensor, target: Tensor, xi: list[Tensor]) -> Tensor:
        """Per-example loss of a forward pass with ξ_i added to every layer's activity h_i."""
        h = x
        for i in range(1, net.n_layers + 1):
            a, _ = net.layer(i, h)
            h = activation(net.activations[i - 1], a) + xi[i]
            if i == net.n_layers:
                return loss_value(self.loss, a + xi[i], h, target, "none")
        raise AssertionError("unreachable")

    @torch.no_grad()
    def compute_grads(self, net: MLP, x: Tensor, target: Tensor) -> StepResult:
        sigma = float(self.params["sigma"])
        fwd = net.forward_all(x)
        clean = loss_value(self.loss, fwd.a[-1], fwd.h[-1], target, "none")
        # ξ for all layers in ONE draw per step (per seed in an ensemble), split by layer: a generator call costs
        # ~3 µs, the same order as this step's arithmetic on the 30-20-10 net
        widths = [h.shape[-1] for h in fwd.h[1:]]
        noise = (self.randn((*fwd.h[1].shape[:-1], sum(widths))) * sigma).to(x.device, x.dtype)
        xi: list[Tensor] = [None, *noise.split(widths, dim=-1)]  # type: ignore[list-item]
        reinforcement = self._perturbed_loss(net, x, target, xi) - clean  # δL, one scalar per example
        if self.reduction == "mean":
            reinforcement = reinforcement / x.shape[-2]
        delta_h: list[Tensor | None] = [None] * net.n_layers
        for i in range(1, net.n_layers + 1):
            g_h = reinforcement.unsqueeze(-1) * xi[i] / sigma**2  # estimate of dL/dh_i
            if i < net.n_layers:
                delta_h[i] = -g_h
            delta = g_h * activation_derivative(net.activations[i - 1], fwd.a[i], fwd.h[i])
            set_layer_grads(net, i, delta, fwd.h[i - 1])
        value = clean.sum(dim=-1) if self.reduction == "sum" else clean.mean(dim=-1)
        return StepResult(loss=value, output=fwd.h[-1], delta_h=delta_h)
