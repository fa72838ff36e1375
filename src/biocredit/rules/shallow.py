"""Shallow learning (Lillicrap 2016, "shallow"): only the output layer learns; hidden layers stay as initialised."""

from __future__ import annotations

import torch
from torch import Tensor

from biocredit.nets import MLP
from biocredit.rules.base import LearningRule, StepResult, set_layer_grads


class Shallow(LearningRule):
    name = "shallow"
    ensemble = True

    def __init__(self, net: MLP, params, loss: str, reduction: str, generator: torch.Generator):
        super().__init__(net, params, loss, reduction, generator)
        if getattr(net, "tied", False):
            raise ValueError("shallow learning keeps the hidden layer fixed, but a tied decoder (W_2 = W_1^T) would "
                             "move it; use an untied net (net.tied: false)")

    @torch.no_grad()
    def compute_grads(self, net: MLP, x: Tensor, target: Tensor) -> StepResult:
        fwd = net.forward_all(x)
        loss, delta_L = self.loss_and_delta(net, fwd, target)
        set_layer_grads(net, net.n_layers, delta_L, fwd.input_of(net.n_layers))
        return StepResult(loss=loss, output=fwd.h[-1], delta_h=[None] * net.n_layers)
