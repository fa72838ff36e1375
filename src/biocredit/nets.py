"""Layer stacks: sizes, activations and initialisation, nothing about learning.

Notation follows the papers: layer i computes a_i = W_i h_{i-1} + b_i and h_i = f_i(a_i), with
h_0 = x and h_L = y the output. Weights are stored (out, in) and batches as rows, so in code
a_i = h_{i-1} @ W_i.T + b_i.

Transmission. What layer i+1 reads of layer i need not be h_i itself: a net may *transmit*
s_i = T_i(h_i) and compute a_{i+1} = W_{i+1} s_i + b_{i+1} (Lee et al. 2015, §3.3-3.4; the authors'
disc_*.py and sto_*.py scripts). T_i is one of

  identity   s_i = h_i (every net so far);
  sign       s_i = sign(h_i) = +1 where h_i > 0, else −1 (the scripts' ``sign``, so sign(0) = −1);
  bernoulli  s_i ~ Bernoulli(h_i), sampled to 0/1 (h_i: sigmoid probabilities; the scripts' ``samp``:
             s = 1[u < h], u ~ U[0, 1)).

The input may be corrupted in training, s_0 = x + N(0, σ_in²) (``input_noise``; sto_dtp.py), and so may what an
identity-transmitting hidden layer sends on, s_i = h_i + N(0, σ_h²) (``hidden_noise``; the auto-encoder of Lee et
al. 2015 §3.5 decodes a corrupted code [recalled]); ∂s_i/∂h_i = 1 for it. Training and
evaluation may transmit differently (``test_transmission``, e.g. a continuous net discretised at test), and
an evaluation may average the output over several stochastic passes (``test_passes``; sto_dtp.py averages
the softmax over 100). ``feedback_transmission`` is what a learned inverse g_i of a rule reads of layer i
(disc_dtp.py: g_2(h_2) = tanh(V_2 sign(h_2) + c_2)). For rules that differentiate through the net
(backprop), ``transmission_gradient`` says what ∂s_i/∂h_i is: ``zero`` (the derivative of sign, and of a
sample w.r.t. its probability, almost everywhere) or ``straight_through`` (∂s_i/∂h_i := 1, so
∂L/∂a_i = ∂L/∂s_i ⊙ f_i'(a_i): for sigmoid units the straight-through variant that keeps the sigmoid's
derivative, Bengio, Léonard & Courville 2013, arXiv 1308.3432; sto_bp_ge.py). Every random draw comes from an
explicit ``torch.Generator`` (the run's, or the one an evaluation passes in), never the global RNG.

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


TRANSMISSIONS = ("identity", "sign", "bernoulli")
FEEDBACK_TRANSMISSIONS = ("identity", "sign")
TRANSMISSION_GRADIENTS = ("zero", "straight_through")
EVAL_ELEMENTS = 4_000_000  # at most this many hidden units × passes × examples at once in a multi-pass evaluation


def sign(h: Tensor) -> Tensor:
    """+1 where h > 0, else −1 (the DTP scripts' ``sign``: util.py, ``T.switch(x > 0, 1, -1)``)."""
    return torch.where(h > 0, 1.0, -1.0).to(h.dtype)


class _Transmitted(torch.autograd.Function):
    """Forward: the transmitted signal s (computed outside). Backward: ∂s/∂h = 1 (straight-through) or 0."""

    @staticmethod
    def forward(ctx, h: Tensor, s: Tensor, straight_through: bool) -> Tensor:  # noqa: D102
        ctx.straight_through = straight_through
        return s.clone()

    @staticmethod
    def backward(ctx, grad_s: Tensor):  # noqa: D102
        return (grad_s if ctx.straight_through else torch.zeros_like(grad_s)), None, None


def init_tensor(shape: tuple[int, ...], init: dict, generator: torch.Generator) -> Tensor:
    """Draw a tensor from ``init`` = {distribution, scale} with an explicit generator (never the global RNG)."""
    dist, scale = init["distribution"], float(init["scale"])
    if dist == "uniform":  # U[-scale, scale]
        return (torch.rand(shape, generator=generator) * 2 - 1) * scale
    if dist == "normal":
        return torch.randn(shape, generator=generator) * scale
    if dist == "glorot_uniform":  # U[-scale*sqrt(6/(fan_in+fan_out)), ...]: the sto_*.py scripts' ``rand``
        bound = scale * (6.0 / (shape[0] + shape[-1])) ** 0.5
        return (torch.rand(shape, generator=generator) * 2 - 1) * bound
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
    equal. Large products (rows × cols × inner ≥ 400: every MNIST, DTP and CIFAR layer) take the 2-D ``@``
    itself: bmm would compute the same BLAS product, but under autograd its backward transposes and copies the
    gradient of a transposed weight (W.mT), which made backprop on the 784-1000-10 net ~1.8× slower.
    """
    if a.dim() == 2 and b.dim() == 2 and a.shape[0] * b.shape[1] * a.shape[1] < BMM_NAIVE_BELOW:
        return torch.bmm(a.unsqueeze(0), b.unsqueeze(0)).squeeze(0)
    return a @ b


BMM_NAIVE_BELOW = 400  # PyTorch's CPU bmm computes products smaller than this (rows × cols × inner) by its own loop


@dataclass
class Forward:
    """What one minibatch produced: pre-activations a[i] (i = 1..L, a[0] unused), activations h[0..L] and the
    transmitted signals s[0..L-1] that layers 1..L read (None: s = h, every layer reads h_{i-1} itself)."""

    a: list[Tensor | None]
    h: list[Tensor]
    s: list[Tensor] | None = None

    @property
    def y(self) -> Tensor:
        return self.h[-1]

    def input_of(self, i: int) -> Tensor:
        """What layer i read: s_{i-1}."""
        return self.h[i - 1] if self.s is None else self.s[i - 1]


class ParameterList(nn.ParameterList):
    """``nn.ParameterList`` whose ``[i]`` for an int is a dict lookup: the stock one goes through
    ``_get_abs_string_index`` and ``Module.__getattr__`` (~4 µs), and a per-example step on the synthetic nets
    indexes W and b a dozen times."""

    def __getitem__(self, idx):
        if type(idx) is int:
            n = len(self)
            if -n <= idx < n:
                return self._parameters[str(idx % n)]
            raise IndexError(f"index {idx} is out of range")
        return super().__getitem__(idx)


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
        transmission: list[str] | None = None,
        test_transmission: list[str] | None = None,
        feedback_transmission: list[str] | None = None,
        transmission_gradient: str = "zero",
        input_noise: float = 0.0,
        test_passes: int = 1,
        tied: bool = False,
        hidden_noise: float = 0.0,
    ) -> None:
        super().__init__()
        init = init or {"distribution": "uniform", "scale": 0.05}
        generator = generator or torch.Generator().manual_seed(0)
        self.sizes = list(sizes)
        self.activations = [hidden_activation] * (len(sizes) - 2) + [output_activation]
        n_hidden = len(sizes) - 2
        self.transmission = list(transmission or ["identity"] * n_hidden)  # T_i, i = 1..L-1 (index i-1)
        self.test_transmission = list(test_transmission or self.transmission)
        self.feedback_transmission = list(feedback_transmission or ["identity"] * n_hidden)
        for key, kinds, allowed in (("transmission", self.transmission, TRANSMISSIONS),
                                    ("test_transmission", self.test_transmission, TRANSMISSIONS),
                                    ("feedback_transmission", self.feedback_transmission, FEEDBACK_TRANSMISSIONS)):
            if len(kinds) != n_hidden or any(k not in allowed for k in kinds):
                raise ValueError(f"{key}: {kinds!r} must list one of {', '.join(allowed)} per hidden layer ({n_hidden})")
        if transmission_gradient not in TRANSMISSION_GRADIENTS:
            raise ValueError(f"transmission_gradient: {transmission_gradient!r} is not one of {TRANSMISSION_GRADIENTS}")
        self.straight_through = transmission_gradient == "straight_through"
        self.input_noise = float(input_noise)
        self.hidden_noise = float(hidden_noise)
        if self.hidden_noise > 0 and "identity" not in self.transmission:
            raise ValueError("hidden_noise: no hidden layer transmits h itself (transmission identity) to add noise to")
        self.test_passes = int(test_passes)
        self.generator = generator  # the run's: samples of stochastic units and input noise in training
        self.W = ParameterList(
            nn.Parameter(init_tensor((n_out, n_in), init, generator)) for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=False)
        )
        # Biases start at 0 (the DTP code; Lillicrap states none).
        self.b = ParameterList(nn.Parameter(torch.zeros(n)) for n in sizes[1:]) if bias else None
        # A tied auto-encoder [n, n_h, n]: the decoder's weights are the encoder's transposed, W_2 ≡ W_1ᵀ (Lee et
        # al. 2015, §3.5 [recalled]). W_2 stays a parameter of its own (every rule and metric sees a plain two-layer
        # net); it is drawn as usual, so the generator's stream is that of the untied net, and then set to W_1ᵀ.
        # :meth:`tie_gradients` and :meth:`retie` keep it so through training.
        self.tied = bool(tied)
        # A stacked ensemble whose layers are computed seed by seed (set by biocredit.ensemble for image data on
        # the CPU): the same bits as each seed's separate run. One (S, B, n) tensor through PyTorch's CPU kernels
        # rounds differently in two places: the vectorised sigmoid computes a tensor's last (numel mod vector
        # width) elements by a scalar loop whose result differs in the last bit (a 10 × 10 output layer alone has
        # such a tail, inside an (S, 10, 10) tensor it has none), and autograd's backward of a batched product
        # lays out the weight gradient differently from that of a 2-D product (backprop's dL/dW). Products and
        # sums of the explicit rules agree bitwise as they are (tests/test_ensemble.py).
        self.seedwise = False
        if self.tied:
            if len(sizes) != 3 or sizes[0] != sizes[2]:
                raise ValueError(f"tied: weight tying is for an auto-encoder [n, n_hidden, n], not sizes {list(sizes)}")
            with torch.no_grad():
                self.W[1].copy_(self.W[0].mT)

    @property
    def n_layers(self) -> int:
        return len(self.W)

    def layer(self, i: int, h_prev: Tensor) -> tuple[Tensor, Tensor]:
        """Layer i (1-based, as in the papers): returns (a_i, h_i)."""
        if self.seedwise:  # one seed at a time, each exactly as alone (see __init__)
            Ws, hs = self.W[i - 1].unbind(0), h_prev.unbind(0)  # unbind: its backward is one stack, not S copies
            bs = self.b[i - 1].unbind(0) if self.b is not None else [None] * len(Ws)
            parts = [self._layer(i, h, W, b) for h, W, b in zip(hs, Ws, bs, strict=True)]
            return torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
        return self._layer(i, h_prev, self.W[i - 1], self.b[i - 1] if self.b is not None else None)

    def _layer(self, i: int, h_prev: Tensor, W: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor]:
        a = mm(h_prev, W.mT)
        if b is not None:
            a = a + b.unsqueeze(-2)
        return a, activation(self.activations[i - 1], a)

    # --- transmission --------------------------------------------------------------------------
    @property
    def transmits(self) -> bool:
        """False for a plain net (every layer reads h_{i-1}, no input or hidden noise): callers may skip s entirely."""
        return _transmits(self.input_noise, self.hidden_noise, self.transmission + self.test_transmission)

    def transmission_at(self, i: int) -> str:
        """T_i in the current mode (``self.training``: training, else evaluation), i = 1..L-1."""
        return (self.transmission if self.training else self.test_transmission)[i - 1]

    def transmit(self, i: int, h: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """s_i = T_i(h_i), what layer i+1 reads of layer i (i = 0: the input x, plus N(0, σ_in²) in training).

        Random draws (samples, input noise) come from ``generator``, by default the run's (``self.generator``).
        Under autograd, s_i passes gradient to h_i as ``transmission_gradient`` says (zero or straight-through).
        """
        gen = generator or self.generator
        if i == 0:
            if self.training and self.input_noise > 0:
                return h + self.input_noise * torch.randn(h.shape, generator=gen).to(h.device, h.dtype)
            return h
        kind = self.transmission_at(i)
        if kind == "identity":
            if self.training and self.hidden_noise > 0:  # additive: gradient 1 under autograd
                return h + self.hidden_noise * torch.randn(h.shape, generator=gen).to(h.device, h.dtype)
            return h
        if kind == "sign":
            s = sign(h)
        else:  # bernoulli: s = 1[u < p], u ~ U[0, 1) (a p outside [0, 1] gives a sure 0 or 1, as the scripts' samp)
            u = torch.rand(h.shape, generator=gen).to(h.device, h.dtype)
            s = (u < h).to(h.dtype)
        if torch.is_grad_enabled() and h.requires_grad:
            return _Transmitted.apply(h, s, self.straight_through)
        return s

    def transmission_derivative(self, i: int) -> float | None:
        """∂s_i/∂h_i for explicit backprop algebra: None for 1 (identity, straight-through), else 0.0."""
        return None if self.transmission_at(i) == "identity" or self.straight_through else 0.0

    def feedback_signal(self, i: int, h: Tensor) -> Tensor:
        """What a learned inverse g_i reads of layer i: h_i, or sign(h_i) (disc_dtp.py's G2)."""
        return sign(h) if self.feedback_transmission[i - 1] == "sign" else h

    # --- passes ----------------------------------------------------------------------------------
    def forward_all(self, x: Tensor, generator: torch.Generator | None = None) -> Forward:
        a: list[Tensor | None] = [None]
        h = [x]
        s: list[Tensor] = []
        for i in range(1, self.n_layers + 1):
            s.append(self.transmit(i - 1, h[-1], generator))
            a_i, h_i = self.layer(i, s[-1])
            a.append(a_i)
            h.append(h_i)
        return Forward(a=a, h=h, s=s if self.transmits else None)

    def forward(self, x: Tensor) -> Tensor:
        for i in range(1, self.n_layers + 1):
            _, x = self.layer(i, self.transmit(i - 1, x))
        return x

    @torch.no_grad()
    def predict(self, x: Tensor, generator: torch.Generator | None = None, passes: int | None = None) -> tuple[Tensor, Tensor]:
        """(a_L, y) of an evaluation pass in the current mode; with ``passes`` (default ``test_passes``) > 1 and a
        stochastic transmission, y is the mean output over that many independent passes (sto_dtp.py: the softmax
        averaged over 100 passes) and a_L = log ȳ for a softmax output (so the NLL is −log ȳ_label).

        Vectorised: the layers up to the first stochastic transmission run once; from there the passes run as one
        batched tensor (passes × examples × units), in chunks of examples to bound memory.
        """
        K = self.test_passes if passes is None else passes
        stochastic = [i for i in range(1, self.n_layers) if self.transmission_at(i) == "bernoulli"]
        if K <= 1 or not stochastic or (self.training and (self.input_noise > 0 or self.hidden_noise > 0)):
            fwd = self.forward_all(x, generator)
            return fwd.a[-1], fwd.h[-1]
        first = stochastic[0]
        h = x
        for i in range(1, first + 1):  # deterministic up to h_first
            _, h = self.layer(i, self.transmit(i - 1, h, generator))
        per_chunk = max(1, EVAL_ELEMENTS // (K * max(self.sizes[first:])))
        a_out, y_out = [], []
        for c in range(0, len(h), per_chunk):
            hk = h[c : c + per_chunk].expand(K, -1, -1)  # passes × examples × units; sampling makes them differ
            for i in range(first + 1, self.n_layers + 1):
                a_k, hk = self.layer(i, self.transmit(i - 1, hk, generator))
            y = hk.mean(dim=0)
            a_out.append(torch.log(y.clamp_min(torch.finfo(y.dtype).tiny)) if self.activations[-1] == "softmax"
                         else a_k.mean(dim=0))
            y_out.append(y)
        return torch.cat(a_out), torch.cat(y_out)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Drop every gradient (W and b are all of the net's parameters); the same as nn.Module.zero_grad
        without its generator walk over the module tree (~30 µs of a ~300 µs per-example step)."""
        for p in [*self.W, *(self.b if self.b is not None else [])]:
            p.grad = None

    def tie_gradients(self) -> None:
        """For a tied net (W_2 ≡ W_1ᵀ), before the optimiser step: the shared weight's gradient is the sum of its two
        uses', G = ∂L/∂W_1 + (∂L/∂W_2)ᵀ (the chain rule for a shared parameter), given to W_1 and, transposed, to
        W_2; a rule that left one of them without a gradient contributes nothing through it. No-op when untied."""
        if not self.tied:
            return
        g1, g2 = self.W[0].grad, self.W[1].grad
        if g1 is None and g2 is None:
            return
        g = g1 if g2 is None else g2.mT if g1 is None else g1 + g2.mT
        self.W[0].grad = g
        self.W[1].grad = g.mT.contiguous()

    @torch.no_grad()
    def retie(self) -> None:
        """For a tied net, after the optimiser step (and any weight decay): W_2 ← W_1ᵀ exactly. With the summed
        gradient of :meth:`tie_gradients` an elementwise optimiser already gives W_2 = W_1ᵀ; this copy makes the tie
        exact whatever the rounding of the two updates. No-op when untied."""
        if self.tied:
            self.W[1].copy_(self.W[0].mT)

    def weight_and_bias(self, i: int) -> list[nn.Parameter]:
        return [self.W[i - 1]] + ([self.b[i - 1]] if self.b is not None else [])

    @classmethod
    def stack(cls, nets: list[MLP]) -> MLP:
        """One net holding S same-shaped nets: W_i of shape (S, out, in), b_i (S, out); inputs (S, batch, in)."""
        out = copy.deepcopy(nets[0])
        with torch.no_grad():
            out.W = ParameterList(nn.Parameter(torch.stack([n.W[i] for n in nets])) for i in range(len(out.W)))
            if out.b is not None:
                out.b = ParameterList(nn.Parameter(torch.stack([n.b[i] for n in nets])) for i in range(len(out.b)))
        return out


def _transmits(input_noise: float, hidden_noise: float, kinds: list[str]) -> bool:
    return input_noise > 0 or hidden_noise > 0 or any(k != "identity" for k in kinds)


def net_transmits(net_cfg: dict) -> bool:
    """:attr:`MLP.transmits` of the net ``net_cfg`` describes, without building it (no weights drawn)."""
    kinds = list(net_cfg.get("transmission") or []) + list(net_cfg.get("test_transmission") or [])
    return _transmits(net_cfg.get("input_noise", 0.0), net_cfg.get("hidden_noise", 0.0), kinds)


def build_net(net_cfg: dict, generator: torch.Generator) -> MLP:
    return MLP(
        net_cfg["sizes"],
        net_cfg["hidden_activation"],
        net_cfg["output_activation"],
        bias=net_cfg.get("bias", True),
        init=net_cfg.get("init"),
        generator=generator,
        transmission=net_cfg.get("transmission"),
        test_transmission=net_cfg.get("test_transmission"),
        feedback_transmission=net_cfg.get("feedback_transmission"),
        transmission_gradient=net_cfg.get("transmission_gradient", "zero"),
        input_noise=net_cfg.get("input_noise", 0.0),
        test_passes=net_cfg.get("test_passes", 1),
        tied=net_cfg.get("tied", False),
        hidden_noise=net_cfg.get("hidden_noise", 0.0),
    )
