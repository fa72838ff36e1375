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
                g = p.grad if wd == 0 else p.grad.add(p, alpha=wd)
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
        for group in self.param_groups:
            lr, rho, mu, eps, wd = group["lr"], group["rho"], group["momentum"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad if wd == 0 else p.grad + wd * p
                st = self.state[p]
                if not st:
                    st["g_avg"], st["g2_avg"], st["v"] = torch.zeros_like(p), torch.zeros_like(p), torch.zeros_like(p)
                st["g_avg"].mul_(rho).add_(g, alpha=1 - rho)
                st["g2_avg"].mul_(rho).addcmul_(g, g, value=1 - rho)
                denom = (st["g2_avg"] - st["g_avg"] ** 2 + eps).sqrt_()
                st["v"].mul_(mu).addcdiv_(g, denom, value=-lr)
                p.add_(st["v"])


def make_optimizer(param_groups: list[dict], train_cfg: dict) -> torch.optim.Optimizer:
    """``sgd`` (with optional momentum) or ``rmsprop_dtp`` (the DTP code's centred RMSprop)."""
    name = train_cfg.get("optimizer", "sgd")
    if name == "sgd":
        return SGD(param_groups, lr=train_cfg["lr"], momentum=train_cfg.get("momentum", 0.0))
    if name == "rmsprop_dtp":
        return CenteredRMSpropInsideEps(param_groups, lr=train_cfg["lr"])
    raise ValueError(f"unknown optimizer {name!r}")
