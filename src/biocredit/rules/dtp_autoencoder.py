"""Difference target propagation for an auto-encoder (Lee, Zhang, Fischer, Bengio 2015, §3.5).

The net is one encoder layer f and one decoder layer g (sizes ``[n, n_h, n]``): h = f(x̃), z = g(h), where
x̃ is the training input (corrupted by the trainer when ``train.input_noise`` > 0, a denoising objective) and
the loss target is the clean input x. No inverse network is learned: the encoder itself is the approximate
inverse of the decoder, so the DTP rule (Lee et al. 2015, Eq. 14, ĥ_{i−1} = h_{i−1} − g_i(h_i) + g_i(ĥ_i),
with g_i ← f and the output target ĥ_2 = x) gives the hidden target

    ĥ = h − f(z) + f(x)                                           (Lee et al. 2015, §3.5 [recalled])

With a perfect reconstruction (z = x) the target is h itself and the encoder does not move. With
``net.hidden_noise`` σ_h > 0 the decoder reads a corrupted code, z = g(h + ε), ε ~ N(0, σ_h²) (the paper's
auto-encoder [recalled]; BP through the same net sees the same corruption), so g learns to map a noisy code
back to the input, as DTP's noise-preserving inverses do. The decoder is
trained on the reconstruction loss L(z, x) directly (the top layer of DTP); the encoder on the layer-local
loss ‖f(x̃) − ĥ‖² (summed over units, mean over the minibatch, as the DTP rule's), with h, x and ĥ held
constant, so no error is carried through a transposed weight matrix.

With tied weights (``net.tied``: the decoder's W_2 = W_1ᵀ, the paper's auto-encoder [recalled]) the two gradients
meet in the one shared weight: the trainer sums them (:meth:`biocredit.nets.MLP.tie_gradients`), so W receives
the decoder's reconstruction gradient and the encoder's pull towards ĥ, each a local signal of its own layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from biocredit.losses import loss_value
from biocredit.nets import MLP
from biocredit.rules.base import LearningRule, StepResult
from biocredit.rules.target_prop import squared_error


def autoencoder_hidden_target(f, h: Tensor, z: Tensor, x: Tensor) -> Tensor:
    """ĥ = h − f(z) + f(x): the DTP target of the code h, with the encoder f as the decoder's inverse."""
    return h - f(z) + f(x)


class DifferenceTargetPropAutoencoder(LearningRule):
    """DTP for a one-hidden-layer auto-encoder: decoder on the reconstruction loss, encoder towards ĥ."""

    name = "difference_target_prop_autoencoder"
    PARAMS: dict = {}

    def __init__(self, net: MLP, params, loss: str, reduction: str, generator: torch.Generator):
        super().__init__(net, params, loss, reduction, generator)
        if net.n_layers != 2 or net.sizes[0] != net.sizes[-1]:
            raise ValueError(f"rule {self.name!r} needs an auto-encoder [n, n_hidden, n], got sizes {net.sizes}")

    def compute_grads(self, net: MLP, x: Tensor, target: Tensor) -> StepResult:
        with torch.enable_grad():
            _, h = net.layer(1, x)  # the encoder's graph: W_1, b_1 only
            hd = h.detach()
            # the decoder's graph: W_2, b_2 only; it reads the code as the net transmits it (h + N(0, σ_h²) in
            # training with net.hidden_noise, a constant either way)
            a_z, z = net.layer(2, net.transmit(1, hd))
            top = loss_value(self.loss, a_z, z, target, self.reduction)
            dec = net.weight_and_bias(2)
            for p, g in zip(dec, torch.autograd.grad(top, dec), strict=True):
                p.grad = g
        with torch.no_grad():
            h_target = autoencoder_hidden_target(lambda v: net.layer(1, v)[1], hd, z.detach(), target)
        with torch.enable_grad():
            local = squared_error(h, h_target)
            enc = net.weight_and_bias(1)
            for p, g in zip(enc, torch.autograd.grad(local, enc), strict=True):
                p.grad = g
        return StepResult(loss=top.detach(), output=z.detach(), delta_h=[None, h_target - hd])
