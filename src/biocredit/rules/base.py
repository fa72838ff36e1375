"""The learning-rule seam.

A rule receives what a minibatch produced (the forward pass and the targets) and writes, for every
parameter it trains, the direction of steepest *descent* into ``p.grad`` (the trainer's optimiser
then steps along -grad, exactly as for a gradient). Parameters a rule does not train keep
``grad = None`` and are never touched. A rule may own extra state (feedback matrices, inverse
networks and their optimiser), saved with :meth:`state_dict` so a resumed run continues exactly.

Every rule also returns the signal it sent to each hidden layer (Lillicrap's "Δh", with
Δh = -dL/dh for backprop), so the trainer can compare any rule with backprop on the same minibatch
through one shared function (:func:`biocredit.metrics.update_angles`) without knowing the rule.

Ensembles (many seeds at once, :mod:`biocredit.ensemble`): a rule whose tensor algebra acts on the last
two dimensions only (``@``, ``.mT``, reductions over ``dim=-1``/``-2``) and that draws its noise through
:meth:`LearningRule.randn` sets ``ensemble = True``; :meth:`LearningRule.stack` then turns the rules of S
seeds into one rule over stacked tensors, with the same maths and each seed's noise from its own generator.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from biocredit.losses import loss_value, output_delta
from biocredit.nets import MLP, Forward, activation_derivative, mm


@dataclass
class StepResult:
    loss: Tensor  # the minibatch loss (a scalar, detached)
    output: Tensor  # y for the minibatch (detached)
    delta_h: list[Tensor | None]  # Δh_i sent to hidden layer i = 1..L-1 (index 0 unused), None if none


class LearningRule:
    """Base class. Subclasses set ``name`` and ``PARAMS`` (their hyper-parameters with defaults)."""

    name: ClassVar[str]
    PARAMS: ClassVar[dict[str, Any]] = {}
    compare_to_backprop: ClassVar[bool] = True  # False only for backprop itself (the reference)
    ensemble: ClassVar[bool] = False  # True: batch-dimension agnostic, can train S seeds as one stacked rule

    def __init__(self, net: MLP, params: Mapping[str, Any], loss: str, reduction: str, generator: torch.Generator):
        self.params = self.resolve_params(params)
        self.loss = loss
        self.reduction = reduction
        self.generator = generator
        self.generators: list[torch.Generator] | None = None  # one per seed in a stacked ensemble rule

    @classmethod
    def resolve_params(cls, params: Mapping[str, Any] | None) -> dict[str, Any]:
        params = dict(params or {})
        unknown = sorted(set(params) - set(cls.PARAMS))
        if unknown:
            known = ", ".join(sorted(cls.PARAMS)) or "none"
            raise KeyError(f"unknown parameter(s) {', '.join(unknown)} for rule {cls.name!r} (known: {known})")
        return {**copy.deepcopy(cls.PARAMS), **params}

    # --- the seam -------------------------------------------------------------------------------
    def compute_grads(self, net: MLP, x: Tensor, target: Tensor) -> StepResult:
        raise NotImplementedError

    def on_epoch_start(self, net: MLP, epoch: int, batches: Callable[[], Iterator[tuple[Tensor, Tensor]]]) -> dict[str, float]:
        """Hook for rules with a phase of their own each epoch, before its forward updates (e.g. DTP's
        inverse-training pass over ``batches()``, the epoch's minibatches in training order). Returns metrics
        to log with the epoch's row."""
        return {}

    def after_step(self, net: MLP) -> None:
        """Hook run after the optimiser step (e.g. to keep a sparsity mask)."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass

    # --- ensembles ---------------------------------------------------------------------------------
    def randn(self, shape: tuple[int, ...] | torch.Size) -> Tensor:
        """Standard normal noise of ``shape`` from the run's generator; in a stacked ensemble the leading
        dimension is the seed and seed s's slice comes from seed s's own generator (as in a separate run)."""
        if self.generators is None:
            return torch.randn(tuple(shape), generator=self.generator)
        return torch.stack([torch.randn(tuple(shape[1:]), generator=g) for g in self.generators])

    @classmethod
    def stack(cls, rules: list[LearningRule]) -> LearningRule:
        """One rule over S seeds: every tensor of the rules' state (also inside lists) stacked along a new first
        dimension, the seeds' generators kept apart. Only for rules with ``ensemble = True``."""
        if not cls.ensemble:
            raise TypeError(f"rule {cls.name!r} cannot be trained as a stacked ensemble")
        out = copy.copy(rules[0])
        for key in vars(rules[0]):
            if key in ("generator", "generators"):
                continue
            setattr(out, key, _stack([vars(r)[key] for r in rules]))
        out.generator, out.generators = None, [r.generator for r in rules]
        return out

    # --- helpers shared by the explicit rules ---------------------------------------------------
    def loss_and_delta(self, net: MLP, fwd: Forward, target: Tensor) -> tuple[Tensor, Tensor]:
        loss = loss_value(self.loss, fwd.a[-1], fwd.h[-1], target, self.reduction)
        return loss.detach(), output_delta(self.loss, net.activations[-1], fwd, target, self.reduction)


def _stack(values: list[Any]) -> Any:
    """Stack the same attribute of S rules: tensors along a new first dim, lists/tuples/dicts element-wise."""
    first = values[0]
    if isinstance(first, Tensor):
        return torch.stack(values)
    if isinstance(first, (list, tuple)) and any(isinstance(v, (Tensor, list, tuple, dict)) for v in first):
        return type(first)(_stack(list(vs)) for vs in zip(*values, strict=True))
    if isinstance(first, dict) and any(isinstance(v, (Tensor, list, tuple, dict)) for v in first.values()):
        return {k: _stack([v[k] for v in values]) for k in first}
    return first


def unstack(value: Any, s: int) -> Any:
    """Seed s's part of stacked state (tensors sliced along their first dim; containers element-wise)."""
    if isinstance(value, Tensor):
        return value[s].clone()
    if isinstance(value, (list, tuple)):
        return type(value)(unstack(v, s) for v in value)
    if isinstance(value, dict):
        return {k: unstack(v, s) for k, v in value.items()}
    return value


def set_layer_grads(net: MLP, i: int, delta: Tensor, h_prev: Tensor) -> None:
    """dL/dW_i = delta_i^T h_{i-1} and dL/db_i = sum over the batch of delta_i (delta already carries the reduction)."""
    net.W[i - 1].grad = mm(delta.mT, h_prev)
    if net.b is not None:
        net.b[i - 1].grad = delta.sum(dim=-2)


def propagate_through_feedback(
    net: MLP, fwd: Forward, delta_L: Tensor, feedback: list[Tensor | None]
) -> tuple[list[Tensor | None], list[Tensor | None]]:
    """Send the output error down through feedback matrices instead of W^T (Lillicrap 2016, Eq. for deep FA).

    ``feedback[j]`` is B_j (j = 2..L), shaped like W_j^T (n_{j-1} x n_j). Returns (delta, delta_h) with
    delta[i] = dL/da_i as the rule sees it and Δh_i = -(delta_{i+1} B_{i+1}^T) the signal sent to hidden layer i
    (times ∂s_i/∂h_i where the net transmits s_i = T_i(h_i), see :meth:`MLP.transmit`).
    With B_{i+1} = W_{i+1}^T this is exactly backprop.
    """
    L = net.n_layers
    delta: list[Tensor | None] = [None] * (L + 1)
    delta_h: list[Tensor | None] = [None] * L
    delta[L] = delta_L
    for i in range(L - 1, 0, -1):
        grad_h = mm(delta[i + 1], feedback[i + 1].mT)  # (batch, n_{i+1}) @ (n_{i+1}, n_i): dL/ds_i
        if fwd.s is not None and (ds := net.transmission_derivative(i)) is not None:
            grad_h = grad_h * ds  # through the transmission s_i = T_i(h_i) (sign, samples: zero)
        delta_h[i] = -grad_h
        delta[i] = grad_h * activation_derivative(net.activations[i - 1], fwd.a[i], fwd.h[i])
    return delta, delta_h
