"""Target propagation (Bengio 2014) and difference target propagation (Lee, Zhang, Fischer, Bengio 2015).

Every hidden layer i gets a target ĥ_i instead of a gradient, and learns it with a layer-local loss
‖f_i(h_{i−1}) − ĥ_i‖² (inputs and targets held constant). Targets are carried down by learned
approximate inverses g_i(h_i) = tanh(V_i h_i + c_i) of the layers f_i (i = 2..L−1; the first layer
has no inverse, and the top layer needs none), following the authors' Theano code (conti_dtp.py):

    ĥ_{L−1} = h_{L−1} − η̂ ∂L/∂h_{L−1}                          (L: the minibatch NLL, through the top layer)
    TP:     ĥ_{i−1} = g_i(ĥ_i)                                   (Bengio 2014)
    DTP:    ĥ_{i−1} = h_{i−1} − g_i(h_i) + g_i(ĥ_i)              (Lee et al. 2015, Eq. 14)

The top layer is trained on the NLL itself. The inverses minimise the noise-preserving loss
‖g_i(f_i(h̃_{i−1})) − h̃_{i−1}‖², h̃_{i−1} = h_{i−1} + N(0, σ²) (Lee et al. 2015, Eq. 16), over V_i, c_i
only, with their own centred RMSprop (:class:`biocredit.optim.CenteredRMSpropInsideEps`, lr_inverse).
Squared errors are summed over units and averaged over the minibatch, as the authors' ``mse``.

Schedules: ``alternating`` (the authors' code: each epoch one full pass of inverse updates over the epoch's
minibatches, then the forward pass) or ``parallel`` (one inverse update on each minibatch just before its
forward update). σ may decay as σ_e = σ / (1 + e / sigma_decay_epochs), e = 1, 2, ... the epoch
(the authors' discrete and stochastic nets).

Nets that transmit s_i = T_i(h_i) instead of h_i (sign, sampled binary units; :meth:`MLP.transmit`) need no
change of the rule: each layer reads what the net transmits, the penultimate target steps along the gradient
w.r.t. the transmitted signal, ĥ_{L−1} = h_{L−1} − η̂ ∂L/∂s_{L−1} (sto_dtp.py: H2_ = H2 − H2b + H2b_), and the
inverses read what the net feeds back, g_i(h_i) = tanh(V_i · feedback_signal_i(h_i) + c_i) (disc_dtp.py:
tanh(V_2 sign(h_2) + c_2)). For a plain net all three are the formulas above.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor

from biocredit.losses import loss_value, output_delta
from biocredit.nets import MLP, Forward, activation_derivative, init_tensor
from biocredit.optim import CenteredRMSpropInsideEps
from biocredit.rules.base import LearningRule, StepResult, set_layer_grads

SCHEDULES = ("alternating", "parallel")
Inverse = Callable[[int, Tensor], Tensor]  # g(i, h_i) -> an estimate of h_{i-1}


def squared_error(a: Tensor, b: Tensor) -> Tensor:
    """‖a − b‖² summed over units, averaged over the minibatch (the authors' ``mse``)."""
    return ((a - b) ** 2).sum(dim=1).mean()


def propagate_targets(h: list[Tensor], h_target_top: Tensor, g: Inverse, difference: bool) -> list[Tensor | None]:
    """Targets ĥ_i for the hidden layers i = 1..L−1 (index 0 and L unused), from ĥ_{L−1} downwards.

    ``h`` holds the activities h_0..h_L; ``g(i, h_i)`` approximates f_i⁻¹. With ``difference`` the DTP
    correction ĥ_{i−1} = h_{i−1} − g_i(h_i) + g_i(ĥ_i) is used, else plain TP's ĥ_{i−1} = g_i(ĥ_i).
    """
    L = len(h) - 1
    h_target: list[Tensor | None] = [None] * (L + 1)
    h_target[L - 1] = h_target_top
    for i in range(L - 1, 1, -1):
        if difference:
            h_target[i - 1] = h[i - 1] - g(i, h[i]) + g(i, h_target[i])
        else:
            h_target[i - 1] = g(i, h_target[i])
    return h_target


class TargetProp(LearningRule):
    """Plain target propagation (Bengio 2014): ĥ_{i−1} = g_i(ĥ_i)."""

    name = "target_prop"
    difference = False
    PARAMS = {  # defaults: the authors' 7x240 MNIST DTP script (conti_dtp.py)
        "eta_hat": 0.327736,  # η̂, step of the penultimate target along −∂L/∂h_{L−1}
        "lr_inverse": 0.00501149,  # learning rate of the inverses' centred RMSprop
        "sigma": 0.359830,  # sd of the noise of the noise-preserving inverse loss
        "sigma_decay_epochs": None,  # σ_e = σ / (1 + e / this); None: constant σ
        "schedule": "alternating",  # alternating | parallel
        "inverse_init": {"distribution": "orthogonal", "scale": 1.0},  # V_i; c_i = 0
    }

    def __init__(self, net: MLP, params: Mapping[str, Any], loss: str, reduction: str, generator: torch.Generator):
        super().__init__(net, params, loss, reduction, generator)
        W = net.W[0]
        # V_i shaped like W_i^T (n_{i-1} x n_i), for i = 2..L-1, drawn from the run's generator after the net.
        self.V: dict[int, Tensor] = {}
        self.c: dict[int, Tensor] = {}
        for i in range(2, net.n_layers):
            n_prev, n_i = net.sizes[i - 1], net.sizes[i]
            V = init_tensor((n_prev, n_i), self.params["inverse_init"], generator)
            self.V[i] = V.to(W.device, W.dtype).requires_grad_(True)
            self.c[i] = torch.zeros(n_prev, device=W.device, dtype=W.dtype, requires_grad=True)
        inverse_params = [p for i in self.V for p in (self.V[i], self.c[i])]
        self.inverse_opt = (CenteredRMSpropInsideEps(inverse_params, lr=float(self.params["lr_inverse"]))
                            if inverse_params else None)
        self.sigma = self.sigma_at(1)

    @classmethod
    def resolve_params(cls, params: Mapping[str, Any] | None) -> dict[str, Any]:
        p = super().resolve_params(params)
        if p["schedule"] not in SCHEDULES:
            raise ValueError(f"schedule: {p['schedule']!r} is not one of {', '.join(SCHEDULES)}")
        for key in ("eta_hat", "lr_inverse", "sigma"):
            if not isinstance(p[key], (int, float)) or p[key] < 0:
                raise ValueError(f"{key}: {p[key]!r} must be a number >= 0")
        d = p["sigma_decay_epochs"]
        if d is not None and (not isinstance(d, (int, float)) or d <= 0):
            raise ValueError(f"sigma_decay_epochs: {d!r} must be a number > 0 (or null for a constant sigma)")
        return p

    def sigma_at(self, epoch: int) -> float:
        """σ_e = σ / (1 + e / sigma_decay_epochs) (the authors' decay, e = 1, 2, ...), or σ."""
        sigma, decay = float(self.params["sigma"]), self.params["sigma_decay_epochs"]
        return sigma if decay is None else sigma / (1.0 + epoch / float(decay))

    # --- the inverses ----------------------------------------------------------------------------
    def inverse(self, i: int, h_i: Tensor) -> Tensor:
        """g_i(h_i) = tanh(V_i h_i + c_i), the learned approximate inverse of layer i."""
        return torch.tanh(h_i @ self.V[i].T + self.c[i])

    def inverse_losses(self, net: MLP, h: list[Tensor], sigma: float, generator: torch.Generator) -> dict[int, Tensor]:
        """The noise-preserving loss ‖g_i(f_i(h̃_{i−1})) − h̃_{i−1}‖² of every inverse, h̃ = h + N(0, σ²).

        Differentiable in V_i, c_i only (f_i and h̃ are constants) when grad mode is on. Noise is drawn layer by
        layer, i = 2..L−1.
        """
        out = {}
        for i in self.V:
            h_prev = h[i - 1].detach()
            noise = torch.randn(h_prev.shape, generator=generator).to(h_prev.device, h_prev.dtype)
            h_noisy = h_prev + sigma * noise
            with torch.no_grad():
                _, f_noisy = net.layer(i, net.transmit(i - 1, h_noisy, generator))  # f_i reads T_{i-1}(h̃_{i-1})
            out[i] = squared_error(self.inverse(i, net.feedback_signal(i, f_noisy)), h_noisy)
        return out

    @torch.no_grad()
    def inverse_grads(self, net: MLP, h: list[Tensor], sigma: float, generator: torch.Generator) -> tuple[Tensor, list]:
        """The gradients of :meth:`inverse_losses` w.r.t. (V_i, c_i), by explicit algebra (no autograd graph).

        With r = feedback_signal_i(f_i(T_{i−1}(h̃_{i−1}))), g = tanh(V_i r + c_i) and ℓ_i = mean_batch ‖g − h̃_{i−1}‖²:
        ∂ℓ_i/∂z = 2 (g − h̃)(1 − g²) / batch, ∂ℓ_i/∂V_i = (∂ℓ_i/∂z)ᵀ r, ∂ℓ_i/∂c_i = Σ_batch ∂ℓ_i/∂z. The same noise
        draws as :meth:`inverse_losses` (tests check the two agree). Returns (Σ_i ℓ_i, [∂V_i, ∂c_i, ...]).
        """
        total, grads = torch.zeros((), device=h[0].device, dtype=h[0].dtype), []
        for i in self.V:
            h_prev = h[i - 1]
            noise = torch.randn(h_prev.shape, generator=generator).to(h_prev.device, h_prev.dtype)
            h_noisy = torch.add(h_prev, noise, alpha=sigma)
            _, f_noisy = net.layer(i, net.transmit(i - 1, h_noisy, generator))  # f_i reads T_{i-1}(h̃_{i-1})
            r = net.feedback_signal(i, f_noisy)  # what g_i reads of layer i
            g = torch.tanh(torch.addmm(self.c[i], r, self.V[i].T))
            e = g - h_noisy
            total += e.pow(2).sum() / len(e)
            dz = e.mul_(1 - g * g).mul_(2.0 / len(e))
            grads += [dz.T @ r, dz.sum(dim=0)]
        return total, grads

    def inverse_step(self, net: MLP, h: list[Tensor]) -> Tensor:
        """One update of every inverse on the activities ``h`` of a minibatch; returns the summed inverse loss."""
        if self.inverse_opt is None:
            return torch.zeros(())
        params = [p for i in self.V for p in (self.V[i], self.c[i])]
        total, grads = self.inverse_grads(net, h, self.sigma, self.generator)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self.inverse_opt.step()
        return total

    # --- the seam --------------------------------------------------------------------------------
    def on_epoch_start(self, net: MLP, epoch: int, batches: Callable[[], Iterator[tuple[Tensor, Tensor]]]) -> dict[str, float]:
        self.sigma = self.sigma_at(epoch)
        out = {"sigma": self.sigma}
        if self.params["schedule"] == "alternating" and self.inverse_opt is not None:
            total, n = None, 0
            top = max(self.V) - 1  # the inverses read h_1 .. h_{L-2}: no need to run the top two layers
            for x, _ in batches():  # the forward weights do not change during this pass
                with torch.no_grad():
                    h = [x]
                    for i in range(1, top + 1):
                        h.append(net.layer(i, net.transmit(i - 1, h[-1]))[1])
                loss = self.inverse_step(net, h)
                total = loss if total is None else total + loss
                n += 1
            if n:
                out["inverse_loss"] = float(total) / n  # summed over layers, mean over the epoch's minibatches
        return out

    @torch.no_grad()
    def compute_grads(self, net: MLP, x: Tensor, target: Tensor) -> StepResult:
        """One forward update, by explicit algebra (the gradients autograd would give for the same losses).

        Top layer: the loss itself, δ_L = ∂L/∂a_L. Penultimate target ĥ_{L−1} = h_{L−1} − η̂ ∂L/∂s_{L−1} with
        ∂L/∂s_{L−1} = δ_L W_L. Hidden layer i: the local loss mean_batch ‖h_i − ĥ_i‖² gives δ_i = 2 (h_i − ĥ_i) f_i'(a_i)
        / batch, ∂W_i = δ_iᵀ s_{i−1}, ∂b_i = Σ_batch δ_i (inputs and targets constant; s = h for a plain net).
        """
        L = net.n_layers
        fwd = net.forward_all(x)  # samples of stochastic units from the net's (the run's) generator
        h = fwd.h
        top = loss_value(self.loss, fwd.a[L], h[L], target, self.reduction)
        delta_L = output_delta(self.loss, net.activations[-1], fwd, target, self.reduction)
        set_layer_grads(net, L, delta_L, fwd.input_of(L))  # the top layer learns from the loss itself
        grad_h = delta_L @ net.W[L - 1]  # ∂L/∂s_{L-1}; with reduction 'mean' the per-example step is η̂ / batch

        if self.params["schedule"] == "parallel":
            self.inverse_step(net, h)

        def inverse(i: int, h_i: Tensor) -> Tensor:  # g_i reads what the net feeds back of layer i
            return self.inverse(i, net.feedback_signal(i, h_i))

        h_target = propagate_targets(h, h[L - 1] - self.params["eta_hat"] * grad_h, inverse, self.difference)

        delta_h: list[Tensor | None] = [None] * L
        for i in range(1, L):
            delta_h[i] = h_target[i] - h[i]  # the direction layer i is pushed, compared with −∂L/∂h_i of BP
            delta = (-2.0 / len(x)) * delta_h[i] * activation_derivative(net.activations[i - 1], fwd.a[i], h[i])
            set_layer_grads(net, i, delta, fwd.input_of(i))  # layer i read s_{i-1}
        return StepResult(loss=top, output=h[L], delta_h=delta_h)

    def local_losses(self, net: MLP, fwd: Forward, h_target: list[Tensor | None]) -> Tensor:
        """Σ_i mean_batch ‖f_i(s_{i−1}) − ĥ_i‖² over the hidden layers, with the inputs s_{i−1} of the pass ``fwd``
        held constant: a differentiable reference for the explicit gradients of :meth:`compute_grads` (tests)."""
        return sum(squared_error(net.layer(i, fwd.input_of(i).detach())[1], h_target[i]) for i in range(1, net.n_layers))

    # --- state -----------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "V": {i: v.detach().clone() for i, v in self.V.items()},
            "c": {i: c.detach().clone() for i, c in self.c.items()},
            "optimizer": self.inverse_opt.state_dict() if self.inverse_opt is not None else None,
            "sigma": self.sigma,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        with torch.no_grad():  # copy in place: the inverse optimiser keeps its references to V_i, c_i
            for i in self.V:
                self.V[i].copy_(state["V"][i])
                self.c[i].copy_(state["c"][i])
        if self.inverse_opt is not None:
            self.inverse_opt.load_state_dict(state["optimizer"])
        self.sigma = state["sigma"]


class DifferenceTargetProp(TargetProp):
    """Difference target propagation (Lee et al. 2015): ĥ_{i−1} = h_{i−1} − g_i(h_i) + g_i(ĥ_i)."""

    name = "difference_target_prop"
    difference = True
