"""Post-training probes of a frozen net: how useful is the representation a learning rule built?

Lee et al. 2015 (§3.5, the auto-encoder trained by DTP) judge the learned code qualitatively; we add a
number: a linear softmax classifier trained on the frozen code h_layer of the training images (the 50k
training split when the experiment holds out 10k for validation) and evaluated on the test set.
The net is never updated: the code is computed once under ``torch.no_grad`` and detached.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from biocredit.metrics import classification_error
from biocredit.nets import MLP
from biocredit.optim import SGD

PROBE_KINDS = ("linear_softmax",)
CODE_CHUNK = 10_000


@torch.no_grad()
def frozen_code(net: MLP, x: Tensor, layer: int) -> Tensor:
    """h_layer of every row of ``x`` (layer 0 = the input itself), detached from the net's parameters."""
    out = []
    for s in range(0, len(x), CODE_CHUNK):
        out.append(net.forward_all(x[s : s + CODE_CHUNK]).h[layer].detach().clone())
    return torch.cat(out)


def train_linear_softmax(code_train: Tensor, labels_train: Tensor, n_classes: int, *, epochs: int, lr: float,
                         batch_size: int, momentum: float, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """A linear softmax classifier p(y | h) = softmax(A h + a) by minibatch SGD with momentum on the batch-mean
    NLL; A and a start at 0; the example order of every epoch comes from ``generator``. Returns (A, a)."""
    n, d = code_train.shape
    A = torch.zeros(n_classes, d, device=code_train.device, requires_grad=True)
    a = torch.zeros(n_classes, device=code_train.device, requires_grad=True)
    opt = SGD([A, a], lr=lr, momentum=momentum)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator).to(code_train.device)
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            with torch.enable_grad():
                loss = F.cross_entropy(code_train[idx] @ A.T + a, labels_train[idx])
                A.grad, a.grad = torch.autograd.grad(loss, [A, a])
            opt.step()
    return A.detach(), a.detach()


def run_probe(net: MLP, task: Any, cfg: Mapping[str, Any], generator: torch.Generator) -> dict[str, float]:
    """Train the probe described by ``cfg`` (``kind``, ``layer``, ``epochs``, ``lr``, ``batch_size``,
    ``momentum``) on the frozen code of ``task.x_train`` with ``task.classes_train``; returns
    ``probe_train_error`` and ``probe_test_error`` (% misclassified)."""
    if cfg["kind"] not in PROBE_KINDS:
        raise ValueError(f"probe.kind: {cfg['kind']!r} is not one of {', '.join(PROBE_KINDS)}")
    if task.classes_train is None or task.classes_test is None:
        raise ValueError("probe: this task has no class labels to probe with")
    layer = int(cfg.get("layer", 1))
    code_train, code_test = frozen_code(net, task.x_train, layer), frozen_code(net, task.x_test, layer)
    n_classes = int(max(task.classes_train.max(), task.classes_test.max())) + 1
    A, a = train_linear_softmax(code_train, task.classes_train, n_classes, epochs=int(cfg["epochs"]),
                                lr=float(cfg["lr"]), batch_size=int(cfg.get("batch_size", 100)),
                                momentum=float(cfg.get("momentum", 0.9)), generator=generator)
    return {"probe_train_error": classification_error(code_train @ A.T + a, task.classes_train),
            "probe_test_error": classification_error(code_test @ A.T + a, task.classes_test)}
