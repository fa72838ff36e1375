"""Node perturbation's expected update and the pseudo-backprop angle (Lillicrap et al. 2016, Figs. 1 and 4)."""

from __future__ import annotations

import math

import torch

from biocredit.metrics import angle_deg, update_angles
from biocredit.nets import MLP
from biocredit.rules import RULES
from biocredit.rules.backprop import backprop_grads


def _tiny_linear_problem(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    net = MLP([4, 3, 2], "linear", "linear", bias=False, init={"distribution": "uniform", "scale": 0.5}, generator=g)
    x = torch.randn(1, 4, generator=g)
    target = torch.randn(1, 2, generator=g)
    return net, x, target, g


def test_node_perturbation_expected_update_matches_the_gradient():
    net, x, target, g = _tiny_linear_problem()
    rule = RULES["node_perturbation"](net, {"sigma": 1e-3}, "squared_error", "sum", g)
    _, _, bp, _ = backprop_grads(net, x, target, "squared_error", "sum")
    n = 20_000
    mean = [torch.zeros_like(p) for p in net.parameters()]
    single_angles = []
    for k in range(n):
        net.zero_grad(set_to_none=True)
        rule.compute_grads(net, x, target)
        for m, p in zip(mean, net.parameters(), strict=True):
            m += p.grad / n
        if k < 50:
            single_angles.append(angle_deg(net.W[0].grad, bp[0]))
    for m, b in zip(mean, bp, strict=True):
        # The average of many noisy estimates points along the gradient, with the gradient's size...
        assert angle_deg(m, b) < 8.0
        assert 0.85 < float(m.norm() / b.norm()) < 1.15
    # ... although a single estimate is far off (it is a noisy, scalar-reinforcement estimate).
    assert sum(single_angles) / len(single_angles) > 30.0


def test_node_perturbation_noise_comes_from_the_runs_generator():
    """Replaying the generator's state replays the perturbation, so a resumed run continues exactly."""
    net, x, target, g = _tiny_linear_problem()
    rule = RULES["node_perturbation"](net, {"sigma": 1e-3}, "squared_error", "sum", g)
    state = g.get_state()
    rule.compute_grads(net, x, target)
    first = net.W[0].grad.clone()
    rule.compute_grads(net, x, target)
    assert not torch.equal(first, net.W[0].grad)  # fresh noise each step
    g.set_state(state)
    rule.compute_grads(net, x, target)
    assert torch.equal(first, net.W[0].grad)


def test_pseudo_backprop_angle_uses_the_moore_penrose_inverse_of_W():
    # W (2x3) with a known pseudoinverse: W = [[1, 0, 0], [0, 2, 0]] -> W+ = [[1, 0], [0, 0.5], [0, 0]].
    net = MLP([3, 3, 2], "linear", "linear", bias=False)
    with torch.no_grad():
        net.W[0].copy_(torch.eye(3))
        net.W[1].copy_(torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]))
    x = torch.tensor([[0.0, 0.0, 0.0]])  # y = 0, so e = y* - y = target
    target = torch.tensor([[2.0, 4.0]])
    expected_pbp = torch.tensor([[2.0, 2.0, 0.0]])  # W+ e
    assert torch.allclose(torch.linalg.pinv(net.W[1]), torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.0, 0.0]]), atol=1e-6)
    fa = RULES["feedback_alignment"](net, {}, "squared_error", "sum", torch.Generator().manual_seed(0))
    # A feedback matrix whose signal B e is exactly along W+ e, and one at a known angle to it.
    for B, angle in ((torch.tensor([[1.0, 0.0], [0.0, 0.5], [0.0, 0.0]]), 0.0),
                     (torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]), 45.0)):
        fa.B[2] = B
        net.zero_grad(set_to_none=True)
        step = fa.compute_grads(net, x, target)
        assert torch.allclose(step.delta_h[1], target @ B.T)
        got = update_angles(net, x, target, step, "squared_error", "sum", pbp=True)["angle_dh_pbp_1"]
        assert math.isclose(got, angle, abs_tol=1e-3), (got, angle)
        assert math.isclose(angle_deg(target @ B.T, expected_pbp), angle, abs_tol=1e-3)
    # A batch: the angle is each example's, averaged (Fig. 4 plots the mean per-example angle). With B as above, the
    # example with e = (2, 0) has B e = W+ e (0°) and the one with e = (2, 4) is at 45°: 22.5°. One angle between
    # the batch's stacked vectors would give acos(8 / sqrt(8 * 12)) = 35.3° instead.
    x2, target2 = torch.zeros(2, 3), torch.tensor([[2.0, 0.0], [2.0, 4.0]])
    net.zero_grad(set_to_none=True)
    step = fa.compute_grads(net, x2, target2)
    got = update_angles(net, x2, target2, step, "squared_error", "sum", pbp=True)["angle_dh_pbp_1"]
    assert math.isclose(got, 22.5, abs_tol=1e-3), got
