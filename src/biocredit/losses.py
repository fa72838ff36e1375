"""Output losses and their error signal delta_L = dL/da_L at the output pre-activation.

Lillicrap et al. 2016: L = 1/2 ||e||^2 with e = y* - y (squared_error). Lee et al. 2015: softmax
output with the negative log-likelihood (cross_entropy). ``reduction`` says how per-example losses
combine over a minibatch: ``sum`` (the sum of per-example updates, the online rule of Lillicrap) or
``mean`` (the batch-mean of the DTP code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from biocredit.nets import Forward, activation_derivative


def _reduce(per_example: Tensor, reduction: str) -> Tensor:
    """'sum' or 'mean' over the minibatch; 'none' keeps one loss per example."""
    if reduction == "none":
        return per_example
    return per_example.sum(dim=-1) if reduction == "sum" else per_example.mean(dim=-1)


def squared_errors(target: Tensor, y: Tensor) -> Tensor:
    """(y* − y)², element by element: the terms of the squared-error loss and of the NSE."""
    return (target - y) ** 2


def loss_value(name: str, fwd_a_L: Tensor, y: Tensor, target: Tensor, reduction: str) -> Tensor:
    """The minibatch loss from the output pre-activation a_L and output y = f(a_L)."""
    if name == "squared_error":
        return _reduce(0.5 * squared_errors(target, y).sum(dim=-1), reduction)
    if name == "cross_entropy":  # target is one-hot; computed from a_L for stability
        return _reduce(-(target * F.log_softmax(fwd_a_L, dim=-1)).sum(dim=-1), reduction)
    raise ValueError(f"unknown loss {name!r}")


def output_delta(name: str, output_activation: str, fwd: Forward, target: Tensor, reduction: str) -> Tensor:
    """delta_L = dL/da_L, per example (rows); divided by the batch size when reduction='mean'."""
    a_L, y = fwd.a[-1], fwd.h[-1]
    if name == "squared_error":
        e = target - y  # e = y* - y
        delta = -e * activation_derivative(output_activation, a_L, y)
    elif name == "cross_entropy":
        if output_activation != "softmax":
            raise ValueError("cross_entropy needs output_activation: softmax")
        delta = torch.softmax(a_L, dim=-1) - target
    else:
        raise ValueError(f"unknown loss {name!r}")
    return delta / target.shape[-2] if reduction == "mean" else delta
