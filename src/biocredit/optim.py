"""Optimisers for the forward weights, chosen by ``train.optimizer`` in config.yaml."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from itertools import chain
from typing import Any

import torch
from torch import Tensor


class Optimizer:
    """What these optimisers need of ``torch.optim.Optimizer`` (``param_groups``, ``state``, ``state_dict`` and
    ``load_state_dict`` in torch's format, so checkpoints written with either read back in both), without it:
    ``torch.optim.Optimizer.__init__`` imports torch._dynamo, 1.5 s of every training job's start-up (a small
    synthetic job trains for a few seconds), and its ``step`` wrapper (hooks, profiler records) costs ~40 µs
    per call, a tenth of a per-example step on the synthetic nets."""

    def __init__(self, params: Iterable[Tensor] | Iterable[dict], defaults: dict[str, Any]) -> None:
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        self.defaults = dict(defaults)
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        for g in groups:
            self.param_groups.append({**self.defaults, **g, "params": list(g["params"])})

    def state_dict(self) -> dict[str, Any]:
        index: dict[int, int] = {}
        groups = []
        for g in self.param_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = [index.setdefault(id(p), len(index)) for p in g["params"]]
            groups.append(packed)
        return {"state": {index[id(p)]: v for p, v in self.state.items()}, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict["param_groups"]
        if [len(g["params"]) for g in saved] != [len(g["params"]) for g in self.param_groups]:
            raise ValueError("optimizer state does not match the parameter groups (another net?)")
        params = {i: p for i, p in zip(chain.from_iterable(g["params"] for g in saved),
                                       chain.from_iterable(g["params"] for g in self.param_groups), strict=True)}
        for g, s in zip(self.param_groups, saved, strict=True):
            g.update({k: v for k, v in s.items() if k != "params"})
        self.state = defaultdict(dict)
        for i, st in state_dict["state"].items():
            p = params[int(i)]
            self.state[p] = {k: v.to(p.device, p.dtype) if isinstance(v, Tensor) and v.is_floating_point() else v
                             for k, v in st.items()}


class SGD(Optimizer):
    """Plain SGD with L2 weight decay and (heavy-ball) momentum, the same update as ``torch.optim.SGD``
    (dampening 0, no Nesterov): g ← ∇ + λθ;  v ← μv + g;  θ ← θ − lr·v."""

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


class CenteredRMSpropInsideEps(Optimizer):
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


def make_optimizer(param_groups: list[dict], train_cfg: dict) -> Optimizer:
    """``sgd`` (with optional momentum) or ``rmsprop_dtp`` (the DTP code's centred RMSprop)."""
    name = train_cfg.get("optimizer", "sgd")
    if name == "sgd":
        return SGD(param_groups, lr=train_cfg["lr"], momentum=train_cfg.get("momentum", 0.0))
    if name == "rmsprop_dtp":
        return CenteredRMSpropInsideEps(param_groups, lr=train_cfg["lr"])
    raise ValueError(f"unknown optimizer {name!r}")
