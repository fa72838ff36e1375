"""Errors, normalised squared error and angles between updates (Lillicrap 2016 definitions)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from biocredit.nets import MLP, mm
from biocredit.rules.backprop import backprop_explicit
from biocredit.rules.base import StepResult


def angle_deg(a: Tensor, b: Tensor) -> float:
    """θ = arccos(aᵀb / (‖a‖‖b‖)) in degrees, over all elements; NaN if either vector is zero."""
    return float(flat_angle_deg(a.reshape(-1), b.reshape(-1)))


def flat_angle_deg(a: Tensor, b: Tensor) -> Tensor:
    """The angle between vectors along the last dimension (any leading dims), in degrees; NaN where one is zero."""
    a, b = a.double(), b.double()
    na, nb = a.norm(dim=-1), b.norm(dim=-1)
    cos = (a * b).sum(dim=-1) / (na * nb)
    angle = torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))
    return torch.where((na == 0) | (nb == 0), torch.full_like(angle, math.nan), angle)


def rowwise_angle_deg(a: Tensor, b: Tensor) -> Tensor:
    """The angle between matching rows (one per example), in degrees; NaN where a row is zero."""
    a, b = a.double(), b.double()
    cos = (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))
    return torch.rad2deg(torch.acos(cos.clamp(-1.0, 1.0)))


def update_angles(
    net: MLP, x: Tensor, target: Tensor, step: StepResult, loss: str, reduction: str, pbp: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, float]:
    """Compare a rule's updates on this minibatch with backprop's on the same minibatch.

    Call right after ``rule.compute_grads`` (before the optimiser step). Returns, per hidden layer i:
    ``angle_dh_i``: mean over examples of Δh_rule ∠ Δh_BP (Lillicrap's Δh_FA∠Δh_BP);
    ``angle_dW_i``: the angle between the rule's and backprop's weight updates of W_i.
    ``angle_dh_pbp_{L-1}`` (if ``pbp``): Δh_rule ∠ Δh_PBP for the top hidden layer, with pseudo-backprop's
    Δh_PBP = W⁺e (Lillicrap preprint Fig. 4; e generalised to −δ_L, the output error signal).
    Layers a rule does not train or send a signal to are left out. For a net that draws in its forward pass
    (input noise, sampled units), ``generator`` should replay the draws of the rule's own forward pass (a copy
    of the run generator's state from before the step, as the trainer passes): BP is then compared on the same
    sample, and measuring never consumes the training stream.
    """
    return {k: float(v) for k, v in update_angle_tensors(net, x, target, step, loss, reduction, pbp, generator).items()}


def update_angle_tensors(
    net: MLP, x: Tensor, target: Tensor, step: StepResult, loss: str, reduction: str, pbp: bool = False,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """:func:`update_angles` as tensors: 0-d for one net, shape (S,) for a stacked ensemble of S nets."""
    bp_grads, bp_dh, delta_L = backprop_explicit(net, x, target, loss, reduction, generator)
    bp_by_param = dict(zip((id(p) for p in net.parameters()), bp_grads, strict=False))
    out: dict[str, Tensor] = {}
    for i in range(1, net.n_layers):  # hidden layers: their weights are W_1..W_{L-1}
        if step.delta_h[i] is not None:
            out[f"angle_dh_{i}"] = torch.nanmean(rowwise_angle_deg(step.delta_h[i], bp_dh[i]), dim=-1)
        W = net.W[i - 1]
        if W.grad is not None:
            out[f"angle_dW_{i}"] = flat_angle_deg(W.grad.flatten(-2), bp_by_param[id(W)].flatten(-2))
    top = net.n_layers - 1
    if pbp and top >= 1 and step.delta_h[top] is not None:
        with torch.no_grad():
            dh_pbp = mm(-delta_L, torch.linalg.pinv(net.W[-1]).mT)  # rows: W⁺e per example (e = −δ_L)
        out[f"angle_dh_pbp_{top}"] = torch.nanmean(rowwise_angle_deg(step.delta_h[top], dh_pbp), dim=-1)
    return out


def classification_error(y: Tensor, labels: Tensor) -> float:
    """Percentage of examples whose largest output is not the label."""
    return 100.0 * float((y.argmax(dim=1) != labels).double().mean())


def normalised_squared_error(y: Tensor, target: Tensor) -> float:
    """NSE = Σ‖y* − y‖² / Σ‖y* − mean(y*)‖² (1 = predicting the mean, 0 = perfect)."""
    return float(nse_tensor(y, target))


def nse_tensor(y: Tensor, target: Tensor, spread: Tensor | None = None) -> Tensor:
    """:func:`normalised_squared_error` over the last two dims (examples × outputs); leading dims are nets.
    ``spread``: :func:`target_spread` of ``target`` if already known."""
    return ((target - y) ** 2).sum((-2, -1)) / (target_spread(target) if spread is None else spread)


def target_spread(target: Tensor) -> Tensor:
    """Σ‖y* − mean(y*)‖² over the last two dims (examples × outputs): the NSE's denominator."""
    return ((target - target.mean(-2, keepdim=True)) ** 2).sum((-2, -1))
