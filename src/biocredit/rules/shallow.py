"""Shallow learning (Lillicrap 2016, "shallow"): only the output layer learns; hidden layers stay as initialised."""

from __future__ import annotations

import torch
from torch import Tensor

from biocredit.nets import MLP
from biocredit.rules.base import LearningRule, StepResult, set_layer_grads


class Shallow(LearningRule):
    name = "shallow"
    ensemble = True

    @torch.no_grad()
    def compute_grads(self, net: MLP, x: Tensor, target: Tensor) -> StepResult:
        fwd = net.forward_all(x)
        loss, delta_L = self.loss_and_delta(net, fwd, target)
        set_layer_grads(net, net.n_layers, delta_L, fwd.input_of(net.n_layers))
        return StepResult(loss=loss, output=fwd.h[-1], delta_h=[None] * net.n_layers)
