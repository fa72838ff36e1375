"""Layer stacks: sizes, activations and initialisation, nothing about learning.

Notation follows the papers: layer i computes a_i = W_i h_{i-1} + b_i and h_i = f_i(a_i), with
h_0 = x and h_L = y the output. Weights are stored (out, in) and batches as rows, so in code
a_i = h_{i-1} @ W_i.T + b_i.
Every operation works on the last two dimensions only, so an ensemble of S nets (:meth:`MLP.stack`: weights
(S, out, in), biases (S, out), batches (S, B, n)) runs through the same code as one net.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn


def activation(name: str, a: Tensor) -> Tensor:
    if name == "sigmoid":
        return torch.sigmoid(a)
    if name == "tanh":
        return torch.tanh(a)
    if name == "relu":
        return torch.relu(a)
    if name == "linear":
        return a
    if name == "softmax":
        return torch.softmax(a, dim=-1)
    raise ValueError(f"unknown activation {name!r}")


def activation_derivative(name: str, a: Tensor, h: Tensor) -> Tensor:
    """f'(a), written with the already computed h = f(a) where that is cheaper."""
    if name == "sigmoid":
        return h * (1 - h)
    if name == "tanh":
        return 1 - h * h
    if name == "relu":
        return (a > 0).to(a.dtype)
    if name == "linear":
        return torch.ones_like(a)
    raise ValueError(f"activation {name!r} has no elementwise derivative (softmax pairs with cross_entropy)")


def init_tensor(shape: tuple[int, ...], init: dict, generator: torch.Generator) -> Tensor:
    """Draw a tensor from ``init`` = {distribution, scale} with an explicit generator (never the global RNG)."""
    dist, scale = init["distribution"], float(init["scale"])
    if dist == "uniform":  # U[-scale, scale]
        return (torch.rand(shape, generator=generator) * 2 - 1) * scale
    if dist == "normal":
        return torch.randn(shape, generator=generator) * scale
    if dist == "lecun_uniform":  # U[-scale*sqrt(3/fan_in), ...]: unit variance pre-activations for unit inputs
        bound = scale * (3.0 / shape[-1]) ** 0.5
        return (torch.rand(shape, generator=generator) * 2 - 1) * bound
    if dist == "orthogonal":  # a uniform matrix orthogonalised by SVD (all singular values = scale), as in the DTP code
        m = torch.rand(shape, generator=generator) * 2 - 1
        u, _, vh = torch.linalg.svd(m, full_matrices=False)
        return (u @ vh) * scale
    raise ValueError(f"unknown init distribution {dist!r}")


def mm(a: Tensor, b: Tensor) -> Tensor:
    """``a @ b`` over the last two dims, by the same kernel for one net (2-D operands) and for a stacked
    ensemble (3-D), so that a seed's numbers do not depend on whether it trains alone or with others.

    PyTorch's CPU ``bmm`` computes small products (rows × cols × inner < 400) with its own loop and larger
    ones slice by slice with the BLAS ``mm``; a 2-D ``@`` always calls the BLAS, whose result for a small
    transposed operand differs in the last bit. Sending 2-D products through ``bmm`` too keeps the two bitwise
    equal (large products, e.g. every MNIST layer, take the same BLAS call as before).
    """
    if a.dim() == 2 and b.dim() == 2:
        return torch.bmm(a.unsqueeze(0), b.unsqueeze(0)).squeeze(0)
    return a @ b


@dataclass
class Forward:
    """What one minibatch produced: pre-activations a[i] (i = 1..L, a[0] unused) and activations h[0..L]."""

    a: list[Tensor | None]
    h: list[Tensor]

    @property
    def y(self) -> Tensor:
        return self.h[-1]


class MLP(nn.Module):
    """A fully connected stack ``sizes[0] - ... - sizes[-1]``."""

    def __init__(
        self,
        sizes: list[int],
        hidden_activation: str,
        output_activation: str,
        bias: bool = True,
        init: dict | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        init = init or {"distribution": "uniform", "scale": 0.05}
        generator = generator or torch.Generator().manual_seed(0)
        self.sizes = list(sizes)
        self.activations = [hidden_activation] * (len(sizes) - 2) + [output_activation]
        self.W = nn.ParameterList(
            nn.Parameter(init_tensor((n_out, n_in), init, generator)) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=False)
        )
        # Biases start at 0 (the DTP code; Lillicrap states none).
        self.b = nn.ParameterList(nn.Parameter(torch.zeros(n)) for n in sizes[1:]) if bias else None

    @property
    def n_layers(self) -> int:
        return len(self.W)

    def layer(self, i: int, h_prev: Tensor) -> tuple[Tensor, Tensor]:
        """Layer i (1-based, as in the papers): returns (a_i, h_i)."""
        a = mm(h_prev, self.W[i - 1].mT)
        if self.b is not None:
            a = a + self.b[i - 1].unsqueeze(-2)
        return a, activation(self.activations[i - 1], a)

    def forward_all(self, x: Tensor) -> Forward:
        a: list[Tensor | None] = [None]
        h = [x]
        for i in range(1, self.n_layers + 1):
            a_i, h_i = self.layer(i, h[-1])
            a.append(a_i)
            h.append(h_i)
        return Forward(a=a, h=h)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, self.n_layers + 1):
            _, x = self.layer(i, x)
        return x

    def weight_and_bias(self, i: int) -> list[nn.Parameter]:
        return [self.W[i - 1]] + ([self.b[i - 1]] if self.b is not None else [])

    @classmethod
    def stack(cls, nets: list[MLP]) -> MLP:
        """One net holding S same-shaped nets: W_i of shape (S, out, in), b_i (S, out); inputs (S, batch, in)."""
        out = copy.deepcopy(nets[0])
        with torch.no_grad():
            out.W = nn.ParameterList(nn.Parameter(torch.stack([n.W[i] for n in nets])) for i in range(len(out.W)))
            if out.b is not None:
                out.b = nn.ParameterList(nn.Parameter(torch.stack([n.b[i] for n in nets])) for i in range(len(out.b)))
        return out


def build_net(net_cfg: dict, generator: torch.Generator) -> MLP:
    return MLP(
        net_cfg["sizes"],
        net_cfg["hidden_activation"],
        net_cfg["output_activation"],
        bias=net_cfg.get("bias", True),
        init=net_cfg.get("init"),
        generator=generator,
    )
