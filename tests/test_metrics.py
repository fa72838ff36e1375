"""Errors, normalised squared error and the angles between a rule's updates and backprop's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from biocredit.metrics import (
    angle_deg,
    classification_error,
    normalised_squared_error,
    rowwise_angle_deg,
    update_angles,
)
from biocredit.nets import MLP
from biocredit.rules import RULES


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((1.0, 0.0), (2.0, 0.0), 0.0),
        ((1.0, 0.0), (0.0, 3.0), 90.0),
        ((1.0, 2.0), (-1.0, -2.0), 180.0),
        ((1.0, 0.0), (1.0, 1.0), 45.0),
        ((1.0, 0.0), (-1.0, 1.0), 135.0),
        ((0.0, 0.0, 1.0), (0.0, 1.0, 1.0), 45.0),
    ],
)
def test_angle_between_known_vectors(a, b, expected):
    # near 0 and 180 degrees acos amplifies the last bit of the cosine: 1e-5 degrees of slack
    assert angle_deg(t(*a), t(*b)) == pytest.approx(expected, abs=1e-5)


def test_angle_is_invariant_to_positive_scaling_and_reverses_with_sign():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(40, generator=g, dtype=torch.float64), torch.randn(40, generator=g, dtype=torch.float64)
    theta = angle_deg(a, b)
    assert 0.0 < theta < 180.0
    assert angle_deg(3.5 * a, 0.01 * b) == pytest.approx(theta, abs=1e-9)
    assert angle_deg(-a, b) == pytest.approx(180.0 - theta, abs=1e-9)
    assert angle_deg(a, b) == pytest.approx(angle_deg(b, a), abs=1e-12)


def test_angle_treats_matrices_as_flat_vectors():
    g = torch.Generator().manual_seed(1)
    A, B = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert angle_deg(A, B) == pytest.approx(angle_deg(A.reshape(-1), B.reshape(-1)), abs=1e-12)
    cos = float((A * B).sum() / (A.norm() * B.norm()))
    assert angle_deg(A, B) == pytest.approx(math.degrees(math.acos(cos)), abs=1e-4)


def test_angle_with_a_zero_vector_is_nan():
    assert math.isnan(angle_deg(torch.zeros(3), t(1.0, 2.0, 3.0)))
    assert math.isnan(angle_deg(t(1.0, 2.0, 3.0), torch.zeros(3)))


def test_rowwise_angle_gives_one_angle_per_example():
    a = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 1.0], [2.0, 0.0], [0.0, 0.0]])
    b = torch.tensor([[5.0, 0.0], [0.0, 1.0], [-1.0, -1.0], [1.0, 1.0], [1.0, 0.0]])
    got = rowwise_angle_deg(a, b)
    assert got.shape == (5,)
    assert torch.allclose(got[:4], torch.tensor([0.0, 90.0, 180.0, 45.0], dtype=got.dtype), atol=1e-6)
    assert torch.isnan(got[4]), "a zero row has no direction"
    for i in range(4):  # agrees with the whole-vector angle row by row
        assert float(got[i]) == pytest.approx(angle_deg(a[i], b[i]), abs=1e-6)


def _net_and_batch(hidden: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    net = MLP([784, hidden, 10], "sigmoid", "sigmoid", init={"distribution": "uniform", "scale": 0.05}, generator=g)
    x = torch.rand(20, 784, generator=g)
    target = F.one_hot(torch.randint(0, 10, (20,), generator=g), 10).float()
    return net, x, target


def test_update_angles_are_zero_when_feedback_alignment_uses_the_transposed_weights():
    net, x, target = _net_and_batch(hidden=100)
    fa = RULES["feedback_alignment"](net, {}, "squared_error", "sum", torch.Generator().manual_seed(0))
    fa.B = [None, None] + [W.detach().T.clone() for W in net.W[1:]]
    net.zero_grad(set_to_none=True)
    step = fa.compute_grads(net, x, target)
    angles = update_angles(net, x, target, step, "squared_error", "sum")
    assert set(angles) == {"angle_dh_1", "angle_dW_1"}
    assert angles["angle_dh_1"] == pytest.approx(0.0, abs=0.1)
    assert angles["angle_dW_1"] == pytest.approx(0.0, abs=0.1)


def test_update_angles_are_near_ninety_degrees_for_random_feedback_at_initialisation():
    # B and W_2 are independent random matrices: B e and W_2^T e are nearly orthogonal in a wide layer.
    dh, dW = [], []
    for seed in range(3):
        net, x, target = _net_and_batch(hidden=1000, seed=seed)
        fa = RULES["feedback_alignment"](net, {}, "squared_error", "sum", torch.Generator().manual_seed(100 + seed))
        net.zero_grad(set_to_none=True)
        step = fa.compute_grads(net, x, target)
        angles = update_angles(net, x, target, step, "squared_error", "sum")
        dh.append(angles["angle_dh_1"])
        dW.append(angles["angle_dW_1"])
    assert 80.0 < sum(dh) / len(dh) < 100.0, dh
    assert 70.0 < sum(dW) / len(dW) < 110.0, dW


def test_update_angles_leave_out_layers_a_rule_does_not_reach():
    net, x, target = _net_and_batch(hidden=50)
    shallow = RULES["shallow"](net, {}, "squared_error", "sum", torch.Generator().manual_seed(0))
    net.zero_grad(set_to_none=True)
    step = shallow.compute_grads(net, x, target)
    assert update_angles(net, x, target, step, "squared_error", "sum") == {}


def test_update_angles_do_not_change_the_rules_gradients():
    net, x, target = _net_and_batch(hidden=50)
    fa = RULES["feedback_alignment"](net, {}, "squared_error", "sum", torch.Generator().manual_seed(0))
    net.zero_grad(set_to_none=True)
    step = fa.compute_grads(net, x, target)
    before = [p.grad.clone() for p in net.parameters()]
    update_angles(net, x, target, step, "squared_error", "sum")
    assert all(torch.equal(p.grad, g) for p, g in zip(net.parameters(), before, strict=True))


def test_classification_error_is_the_percentage_of_wrong_argmax():
    y = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.3, 0.3, 0.4], [0.6, 0.3, 0.1]])
    assert classification_error(y, torch.tensor([0, 1, 2, 0])) == pytest.approx(0.0)
    assert classification_error(y, torch.tensor([0, 1, 2, 1])) == pytest.approx(25.0)
    assert classification_error(y, torch.tensor([1, 0, 0, 2])) == pytest.approx(100.0)
    g = torch.Generator().manual_seed(0)
    y, labels = torch.randn(200, 10, generator=g), torch.randint(0, 10, (200,), generator=g)
    wrong = sum(int(row.argmax()) != int(lab) for row, lab in zip(y, labels, strict=True))
    assert classification_error(y, labels) == pytest.approx(100.0 * wrong / 200)


def test_normalised_squared_error_is_zero_for_perfect_and_one_for_the_mean_prediction():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(50, 4, generator=g)
    assert normalised_squared_error(target.clone(), target) == pytest.approx(0.0)
    mean = target.mean(0, keepdim=True).expand_as(target)
    assert normalised_squared_error(mean, target) == pytest.approx(1.0, rel=1e-6)
    y = target + 0.3 * torch.randn(50, 4, generator=g)
    by_hand = sum(float(((target[i] - y[i]) ** 2).sum()) for i in range(50)) / \
        sum(float(((target[i] - mean[i]) ** 2).sum()) for i in range(50))
    assert normalised_squared_error(y, target) == pytest.approx(by_hand, rel=1e-5)
    assert normalised_squared_error(2 * y, 2 * target) == pytest.approx(by_hand, rel=1e-5)  # scale-free
