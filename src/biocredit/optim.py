"""Optimisers for the forward weights, chosen by ``train.optimizer`` in config.yaml."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor


class SGD(torch.optim.Optimizer):
    """Plain SGD with L2 weight decay and (heavy-ball) momentum, the same update as ``torch.optim.SGD``
    (dampening 0, no Nesterov): g ← ∇ + λθ;  v ← μv + g;  θ ← θ − lr·v.

    Written out because constructing ``torch.optim.SGD`` imports torch._dynamo (~1 s per training job,
    which dominates the small synthetic runs and the test suite).
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float, momentum: float = 0.0,
                 weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        for group in self.param_groups:
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad.add_(p, alpha=wd)  # in place: a fresh 3 MB tensor per step
                # (784x1000) costs more than the update itself (allocation + page faults); p.grad is the rule's
                # per-step output, read by nothing after the step
                if mu:
                    st = self.state[p]
                    if "v" not in st:
                        st["v"] = g.clone()
                    else:
                        st["v"].mul_(mu).add_(g)
                    g = st["v"]
                p.add_(g, alpha=-lr)


class CenteredRMSpropInsideEps(torch.optim.Optimizer):
    """Centred RMSprop as in the DTP authors' Theano code (Lee et al. 2015):

        g_avg ← ρ g_avg + (1 − ρ) g;   g2_avg ← ρ g2_avg + (1 − ρ) g²
        v ← μ v − lr · g / sqrt(g2_avg − g_avg² + ε);   θ ← θ + v

    with ρ = 0.95 ("averaging"), μ = 0.9 (momentum) and ε = 1e-3 INSIDE the square root.
    ``torch.optim.RMSprop(centered=True, eps=1e-3)`` adds ε outside the root, which on small gradients gives
    steps about 30× larger (shared/PAPERS.md §2), hence this class.
    """

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], lr: float, rho: float = 0.95,
                 momentum: float = 0.9, eps: float = 1e-3, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "rho": rho, "momentum": momentum, "eps": eps, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        # One multi-tensor (torch._foreach_*) op per line over all of a group's tensors: the same elementwise
        # arithmetic as a loop over parameters, without its per-tensor dispatch overhead (DTP has 28 tensors).
        for group in self.param_groups:
            lr, rho, mu, eps, wd = group["lr"], group["rho"], group["momentum"], group["eps"], group["weight_decay"]
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            grads = [p.grad for p in params]
            if wd:
                grads = [g + wd * p for g, p in zip(grads, params, strict=True)]
            for p in params:
                if not self.state[p]:
                    self.state[p].update(g_avg=torch.zeros_like(p), g2_avg=torch.zeros_like(p), v=torch.zeros_like(p))
            g_avg = [self.state[p]["g_avg"] for p in params]
            g2_avg = [self.state[p]["g2_avg"] for p in params]
            v = [self.state[p]["v"] for p in params]
            torch._foreach_mul_(g_avg, rho)
            torch._foreach_add_(g_avg, grads, alpha=1 - rho)
            torch._foreach_mul_(g2_avg, rho)
            torch._foreach_addcmul_(g2_avg, grads, grads, value=1 - rho)
            denom = torch._foreach_mul(g_avg, g_avg)
            torch._foreach_sub_(denom, g2_avg)  # E[g]² − E[g²]
            torch._foreach_neg_(denom)
            torch._foreach_add_(denom, eps)
            torch._foreach_sqrt_(denom)
            torch._foreach_mul_(v, mu)
            torch._foreach_addcdiv_(v, grads, denom, value=-lr)
            torch._foreach_add_(params, v)


def make_optimizer(param_groups: list[dict], train_cfg: dict) -> torch.optim.Optimizer:
    """``sgd`` (with optional momentum) or ``rmsprop_dtp`` (the DTP code's centred RMSprop)."""
    name = train_cfg.get("optimizer", "sgd")
    if name == "sgd":
        return SGD(param_groups, lr=train_cfg["lr"], momentum=train_cfg.get("momentum", 0.0))
    if name == "rmsprop_dtp":
        return CenteredRMSpropInsideEps(param_groups, lr=train_cfg["lr"])
    raise ValueError(f"unknown optimizer {name!r}")
