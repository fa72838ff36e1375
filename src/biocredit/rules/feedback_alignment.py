"""Feedback alignment (Lillicrap, Cownden, Tweed, Akerman 2016).

The error reaches hidden layer i through a fixed random matrix B_{i+1} instead of W_{i+1}^T:
Δh_FA = B e in the one-hidden-layer case (preprint Fig. 1), Δh_{i} = B_{i+1}(Δh_{i+1} ∘ f'(a_{i+1})) for
deep nets (preprint Fig. 2c). Weight updates are the usual local products ΔW_i ∝ δ_i h_{i-1}^T.
Sparse FA (preprint Fig. 2a text): a fraction of the elements of W and of B removed at the start and kept at 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from biocredit.nets import MLP, init_tensor
from biocredit.rules.base import LearningRule, StepResult, propagate_through_feedback, set_layer_grads


class FeedbackAlignment(LearningRule):
    name = "feedback_alignment"
    ensemble = True
    PARAMS = {
        "feedback_init": {"distribution": "uniform", "scale": 0.5},  # B ~ U[-0.5, 0.5] in preprint Fig. 1
        "feedback_sparsity": 0.0,  # fraction of the elements of every B set to 0
        "weight_sparsity": 0.0,  # fraction of the elements of every W set to 0 (and kept there)
    }

    def __init__(self, net: MLP, params: Mapping[str, Any], loss: str, reduction: str, generator: torch.Generator):
        super().__init__(net, params, loss, reduction, generator)
        p = self.params
        # B_j (j = 2..L) shaped like W_j^T; drawn from the run's generator, so a fresh B for every seed.
        self.B: list[Tensor | None] = [None, None]
        for j in range(2, net.n_layers + 1):
            W = net.W[j - 1]
            B = init_tensor(tuple(W.T.shape), p["feedback_init"], generator)
            if p["feedback_sparsity"] > 0:
                B = B * (torch.rand(B.shape, generator=generator) >= p["feedback_sparsity"])
            self.B.append(B.to(W.device))
        self.masks: list[Tensor] | None = None
        if p["weight_sparsity"] > 0:
            self.masks = [
                (torch.rand(W.shape, generator=generator) >= p["weight_sparsity"]).to(W.device, W.dtype) for W in net.W
            ]
            with torch.no_grad():
                for W, m in zip(net.W, self.masks, strict=False):
                    W.mul_(m)

    @torch.no_grad()
    def compute_grads(self, net: MLP, x: Tensor, target: Tensor) -> StepResult:
        fwd = net.forward_all(x)
        loss, delta_L = self.loss_and_delta(net, fwd, target)
        delta, delta_h = propagate_through_feedback(net, fwd, delta_L, self.B)
        for i in range(1, net.n_layers + 1):
            set_layer_grads(net, i, delta[i], fwd.input_of(i))
        if self.masks is not None:
            for W, m in zip(net.W, self.masks, strict=False):
                W.grad.mul_(m)
        return StepResult(loss=loss, output=fwd.h[-1], delta_h=delta_h)

    # No after-step re-masking of W: a removed synapse gets a zero gradient (above) and starts at zero, and every
    # optimiser and weight decay of this project maps (W = 0, grad = 0) to W = 0 exactly (SGD with or without
    # momentum and L2, the decoupled decay W <- (1 - alpha) W, the centred RMSprop: 0 / sqrt(eps) = 0), so the
    # zeros stay without a second pass over every W per step (tests/test_rules.py checks each optimiser).

    def state_dict(self) -> dict[str, Any]:
        return {"B": self.B, "masks": self.masks}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.B = state["B"]
        self.masks = state["masks"]
