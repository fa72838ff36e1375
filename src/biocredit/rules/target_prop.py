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

from biocredit.losses import loss_value
from biocredit.nets import MLP, init_tensor
from biocredit.optim import CenteredRMSpropInsideEps
from biocredit.rules.base import LearningRule, StepResult

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

    def inverse_step(self, net: MLP, h: list[Tensor]) -> Tensor:
        """One update of every inverse on the activities ``h`` of a minibatch; returns the summed inverse loss."""
        if self.inverse_opt is None:
            return torch.zeros(())
        params = [p for i in self.V for p in (self.V[i], self.c[i])]
        with torch.enable_grad():
            total = sum(self.inverse_losses(net, h, self.sigma, self.generator).values())
            grads = torch.autograd.grad(total, params)
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        self.inverse_opt.step()
        return total.detach()

    # --- the seam --------------------------------------------------------------------------------
    def on_epoch_start(self, net: MLP, epoch: int, batches: Callable[[], Iterator[tuple[Tensor, Tensor]]]) -> dict[str, float]:
        self.sigma = self.sigma_at(epoch)
        out = {"sigma": self.sigma}
        if self.params["schedule"] == "alternating" and self.inverse_opt is not None:
            total, n = None, 0
            for x, _ in batches():  # the forward weights do not change during this pass
                with torch.no_grad():
                    h = net.forward_all(x).h
                loss = self.inverse_step(net, h)
                total = loss if total is None else total + loss
                n += 1
            if n:
                out["inverse_loss"] = float(total) / n  # summed over layers, mean over the epoch's minibatches
        return out

    def compute_grads(self, net: MLP, x: Tensor, target: Tensor) -> StepResult:
        L = net.n_layers
        # One forward pass with every layer's input detached: h[i] keeps the graph of layer i alone, which is
        # all the layer-local losses need; the top layer's input is a leaf so that ∂L/∂h_{L-1} comes out.
        h: list[Tensor] = [x]
        with torch.enable_grad():
            for i in range(1, L + 1):
                h_in = net.transmit(i - 1, h[i - 1]).detach()  # s_{i-1}: what layer i reads (= h_{i-1} for a plain net)
                if i == L:
                    h_in.requires_grad_(True)
                a_i, h_i = net.layer(i, h_in)
                h.append(h_i)
            top = loss_value(self.loss, a_i, h_i, target, self.reduction)
            top_params = net.weight_and_bias(L)
            grads = torch.autograd.grad(top, top_params + [h_in])
        for p, g in zip(top_params, grads, strict=False):
            p.grad = g  # the top layer learns from the loss itself
        grad_h = grads[-1]  # ∂L/∂s_{L-1}; with reduction 'mean' the per-example step is η̂ / batch (authors' code)
        hd = [t.detach() for t in h]

        if self.params["schedule"] == "parallel":
            self.inverse_step(net, hd)

        with torch.no_grad():
            def inverse(i: int, h_i: Tensor) -> Tensor:  # g_i reads what the net feeds back of layer i
                return self.inverse(i, net.feedback_signal(i, h_i))

            h_target = propagate_targets(hd, hd[L - 1] - self.params["eta_hat"] * grad_h, inverse, self.difference)

        # Layer-local losses ‖f_i(h_{i-1}) − ĥ_i‖² (summed over units, mean over the batch), i = 1..L-1; their sum
        # has, w.r.t. W_i and b_i, exactly layer i's local gradient since every input and target is constant.
        hidden = list(range(1, L))
        if hidden:
            with torch.enable_grad():
                local = sum(squared_error(h[i], h_target[i]) for i in hidden)
                params = [p for i in hidden for p in net.weight_and_bias(i)]
                for p, g in zip(params, torch.autograd.grad(local, params), strict=True):
                    p.grad = g
        delta_h: list[Tensor | None] = [None] * L
        for i in hidden:
            delta_h[i] = h_target[i] - hd[i]  # the direction layer i is pushed, compared with −∂L/∂h_i of BP
        return StepResult(loss=top.detach(), output=hd[L], delta_h=delta_h)

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
