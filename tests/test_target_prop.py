"""Target propagation (Bengio 2014) and difference target propagation (Lee et al. 2015) behind the rule seam."""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_CONFIG

from biocredit.nets import MLP
from biocredit.optim import CenteredRMSpropInsideEps
from biocredit.rules import RULES, LearningRule
from biocredit.rules.backprop import backprop_grads
from biocredit.train import make_optimizer

EXP = "lee_dtp_mnist"
TANH_SIZES = [20, 15, 15, 15, 5]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (conftest)


def make_net(sizes: list[int] = TANH_SIZES, hidden: str = "tanh", seed: int = 0, dtype=torch.float32) -> MLP:
    g = torch.Generator().manual_seed(seed)
    net = MLP(sizes, hidden, "softmax", init={"distribution": "orthogonal", "scale": 1.0}, generator=g)
    return net.to(dtype)


def make_rule(name: str, net: MLP, params: dict | None = None, seed: int = 0,
              generator: torch.Generator | None = None) -> LearningRule:
    return RULES[name](net, params or {}, "cross_entropy", "mean", generator or torch.Generator().manual_seed(seed))


def minibatch(n_in: int, n_out: int, n: int = 32, seed: int = 1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, n_in, generator=g, dtype=dtype)
    t = F.one_hot(torch.randint(0, n_out, (n,), generator=g), n_out).to(dtype)
    return x, t


def exact_linear_inverse(net: MLP):
    """g_i = f_i⁻¹ for a linear layer f_i(h) = W_i h + b_i with square, invertible W_i."""
    def g(i: int, h: torch.Tensor) -> torch.Tensor:
        W, b = net.W[i - 1].detach(), net.b[i - 1].detach()
        return (h - b) @ torch.linalg.inv(W).T
    return g


def test_with_an_exact_inverse_tp_and_dtp_targets_coincide_and_invert_the_layer():
    torch.manual_seed(0)
    net = make_net([6, 5, 5, 5, 3], hidden="linear", dtype=torch.float64)
    with torch.no_grad():
        for b in net.b:
            b.uniform_(-0.5, 0.5)
    x, t = minibatch(6, 3, dtype=torch.float64)
    eta_hat = 0.5
    steps = {}
    for name in ("target_prop", "difference_target_prop"):
        rule = make_rule(name, net, {"eta_hat": eta_hat})
        rule.inverse = exact_linear_inverse(net)  # replace the learned tanh inverse by f⁻¹
        net.zero_grad(set_to_none=True)
        steps[name] = rule.compute_grads(net, x, t)

    tp, dtp = steps["target_prop"].delta_h, steps["difference_target_prop"].delta_h
    _, _, _, bp_dh = backprop_grads(net, x, t, "cross_entropy", "mean")
    # the penultimate target is a gradient step of size η̂ on the batch-mean NLL
    assert torch.allclose(dtp[3], eta_hat * bp_dh[3], atol=1e-12)
    for i in (1, 2, 3):
        assert torch.allclose(tp[i], dtp[i], atol=1e-10), f"layer {i}: TP and DTP targets differ with an exact inverse"
    for i in (3, 2):  # ĥ_{i-1} − h_{i-1} = W_i⁻¹ (ĥ_i − h_i)
        expected = dtp[i] @ torch.linalg.inv(net.W[i - 1].detach()).T
        assert torch.allclose(dtp[i - 1], expected, atol=1e-10)
        assert dtp[i - 1].abs().max() > 1e-6  # not vacuous


def test_difference_correction_keeps_the_activity_when_the_upper_target_is_the_activity():
    net = make_net()
    x, t = minibatch(TANH_SIZES[0], TANH_SIZES[-1])
    dtp = make_rule("difference_target_prop", net, {"eta_hat": 0.0})  # ĥ_{L-1} = h_{L-1}
    tp = make_rule("target_prop", net, {"eta_hat": 0.0})  # the same untrained inverses (same seed)

    net.zero_grad(set_to_none=True)
    dtp_step = dtp.compute_grads(net, x, t)
    for i in range(1, net.n_layers):
        assert dtp_step.delta_h[i].abs().max() < 1e-6, f"layer {i}: DTP moved the target away from h"
        assert net.W[i - 1].grad.abs().max() < 1e-6, f"layer {i}: a zero target step gave a nonzero update"
    net.zero_grad(set_to_none=True)
    tp_step = tp.compute_grads(net, x, t)
    assert tp_step.delta_h[1].abs().max() > 1e-2, "plain TP should carry the inverse's reconstruction error"


def test_inverse_loss_decreases_on_a_fixed_batch():
    net = make_net()
    x, _ = minibatch(TANH_SIZES[0], TANH_SIZES[-1], n=64)
    rule = make_rule("difference_target_prop", net, {"lr_inverse": 1e-3, "sigma": 0.3})
    with torch.no_grad():
        h = net.forward_all(x).h

    def loss_with_fixed_noise() -> float:
        with torch.no_grad():
            losses = rule.inverse_losses(net, h, 0.3, torch.Generator().manual_seed(123))
        return float(sum(losses.values()))

    before = loss_with_fixed_noise()
    W_before = [W.detach().clone() for W in net.W]
    trace = [float(rule.inverse_step(net, h)) for _ in range(150)]
    after = loss_with_fixed_noise()
    assert after < 0.7 * before, f"inverse loss {before:.4g} -> {after:.4g}"
    assert sum(trace[-10:]) < sum(trace[:10])
    assert all(torch.equal(a, W) for a, W in zip(W_before, net.W, strict=True)), "inverse updates moved the net"


def test_centred_rmsprop_matches_the_authors_update_and_not_torch_rmsprop():
    lr, rho, mu, eps = 0.01, 0.95, 0.9, 1e-3
    p0 = [1.0, -2.0]
    grads = [[1e-3, -2e-2], [3e-3, 1e-2]]

    # hand computation of the authors' rms_prop (util.py): eps inside the square root
    expected, g_avg, g2_avg, v = list(p0), [0.0, 0.0], [0.0, 0.0], [0.0, 0.0]
    for g in grads:
        for k in range(2):
            g_avg[k] = rho * g_avg[k] + (1 - rho) * g[k]
            g2_avg[k] = rho * g2_avg[k] + (1 - rho) * g[k] ** 2
            v[k] = mu * v[k] - lr * g[k] / math.sqrt(g2_avg[k] - g_avg[k] ** 2 + eps)
            expected[k] += v[k]

    def run(opt_cls, **kw) -> torch.Tensor:
        p = torch.nn.Parameter(torch.tensor(p0, dtype=torch.float64))
        opt = opt_cls([p], lr=lr, **kw)
        for g in grads:
            p.grad = torch.tensor(g, dtype=torch.float64)
            opt.step()
        return p.detach()

    ours = run(CenteredRMSpropInsideEps)
    assert torch.allclose(ours, torch.tensor(expected, dtype=torch.float64), rtol=0, atol=1e-14)
    torch_rms = run(torch.optim.RMSprop, alpha=rho, eps=eps, momentum=mu, centered=True)
    ours_step = (ours - torch.tensor(p0, dtype=torch.float64)).abs()
    torch_step = (torch_rms - torch.tensor(p0, dtype=torch.float64)).abs()
    assert (torch_step > 3 * ours_step).all(), "torch's eps outside the root should take much larger steps here"


def _epoch(rule: LearningRule, net: MLP, opt: torch.optim.Optimizer, data, epoch: int) -> None:
    """One epoch exactly as the trainer runs it: the rule's phase, then the forward updates."""
    rule.on_epoch_start(net, epoch, lambda: iter(data))
    for x, t in data:
        net.zero_grad(set_to_none=True)
        rule.compute_grads(net, x, t)
        opt.step()
        rule.after_step(net)


@pytest.mark.parametrize("schedule", ["alternating", "parallel"])
def test_dtp_checkpoint_round_trip_restores_inverses_and_their_optimiser(schedule):
    train_cfg = {"optimizer": "rmsprop_dtp", "lr": 0.01, "weight_decay": 0.0, "weight_decay_mode": "l2"}
    data = [minibatch(TANH_SIZES[0], TANH_SIZES[-1], n=16, seed=s) for s in range(4)]
    params = {"schedule": schedule, "sigma_decay_epochs": 2}

    gen_a = torch.Generator().manual_seed(0)
    net_a = MLP(TANH_SIZES, "tanh", "softmax", init={"distribution": "orthogonal", "scale": 1.0}, generator=gen_a)
    rule_a = make_rule("difference_target_prop", net_a, params, generator=gen_a)
    opt_a = make_optimizer(net_a, train_cfg)
    _epoch(rule_a, net_a, opt_a, data, 1)
    buf = io.BytesIO()
    torch.save({"net": net_a.state_dict(), "opt": opt_a.state_dict(), "rule": rule_a.state_dict(),
                "generator": gen_a.get_state()}, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=False)

    gen_b = torch.Generator().manual_seed(99)  # another init, other inverses: everything must come from the state
    net_b = MLP(TANH_SIZES, "tanh", "softmax", init={"distribution": "orthogonal", "scale": 1.0}, generator=gen_b)
    rule_b = make_rule("difference_target_prop", net_b, params, generator=gen_b)
    opt_b = make_optimizer(net_b, train_cfg)
    net_b.load_state_dict(state["net"])
    opt_b.load_state_dict(state["opt"])
    rule_b.load_state_dict(state["rule"])
    gen_b.set_state(state["generator"])

    for i in rule_a.V:
        assert torch.equal(rule_a.V[i], rule_b.V[i]) and torch.equal(rule_a.c[i], rule_b.c[i])
    inv_a, inv_b = rule_a.inverse_opt.state_dict()["state"], rule_b.inverse_opt.state_dict()["state"]
    assert inv_a.keys() == inv_b.keys() and len(inv_a) == 2 * len(rule_a.V)
    for k in inv_a:
        for name in ("g_avg", "g2_avg", "v"):
            assert torch.equal(inv_a[k][name], inv_b[k][name]), f"inverse optimiser state {k}.{name}"

    _epoch(rule_a, net_a, opt_a, data, 2)  # and the resumed run continues exactly
    _epoch(rule_b, net_b, opt_b, data, 2)
    for (name, p_a), p_b in zip(net_a.named_parameters(), net_b.parameters(), strict=True):
        assert torch.equal(p_a, p_b), f"{name} differs after resuming"
    for i in rule_a.V:
        assert torch.equal(rule_a.V[i], rule_b.V[i])


def test_sigma_follows_the_decay_schedule():
    net = make_net()
    rule = make_rule("difference_target_prop", net, {"sigma": 0.5, "sigma_decay_epochs": 50})
    assert rule.sigma_at(50) == pytest.approx(0.25)
    assert make_rule("target_prop", net, {"sigma": 0.5}).sigma_at(1000) == 0.5


def test_an_unknown_schedule_is_rejected_with_the_key_named():
    with pytest.raises(ValueError, match="schedule"):
        RULES["difference_target_prop"].resolve_params({"schedule": "sometimes"})


@pytest.mark.parametrize("method", ["dtp", "tp"])
def test_tiny_mnist_tp_and_dtp_runs_log_every_angle_and_dtp_lowers_the_training_error(method, mnist_dir, tmp_path, monkeypatch):
    from biocredit.config import load_config, resolve_run
    from biocredit.train import train

    monkeypatch.setenv("WANDB_MODE", "disabled")
    smoke = f"experiments.{EXP}.scales.smoke"
    cfg = load_config(REPO_CONFIG, {"scale": "smoke", "device": "cpu", f"{smoke}.epochs": 2,
                                    f"{smoke}.train_subset": 500, f"{smoke}.test_subset": 200})
    run_cfg = resolve_run(cfg, EXP, method, 0)
    summary = train(run_cfg, tmp_path / "run", mnist_dir, device="cpu")
    assert summary["status"] == "completed"
    import pandas as pd

    rows = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert list(rows["epoch"]) == [0, 1, 2]
    hidden = len(run_cfg["net"]["sizes"]) - 2
    for i in range(1, hidden + 1):
        for col in (f"angle_dh_{i}", f"angle_dW_{i}"):
            assert col in rows and rows[col].iloc[1:].notna().all(), f"{col} missing"
    assert rows["inverse_loss"].iloc[1:].notna().all() and rows["valid_error"].notna().all()
    if method == "dtp":  # plain TP need not learn the deep net (Lee et al.'s point): only its logging is checked
        assert rows["train_error"].iloc[-1] < rows["train_error"].iloc[0] - 20
        assert (rows[[f"angle_dW_{i}" for i in range(1, hidden + 1)]].iloc[1:] < 90).all().all()


def sign_net(seed: int = 0) -> MLP:
    """TANH_SIZES with every hidden layer transmitting sign(h_i), and the inverses reading sign(h_i) (disc_dtp.py)."""
    n_hidden = len(TANH_SIZES) - 2
    g = torch.Generator().manual_seed(seed)
    return MLP(TANH_SIZES, "tanh", "softmax", init={"distribution": "orthogonal", "scale": 1.0}, generator=g,
               transmission=["sign"] * n_hidden, feedback_transmission=["sign"] * n_hidden).to(torch.float64)


@pytest.mark.parametrize("net_kind", ["plain", "sign"])
@pytest.mark.parametrize("name", ["target_prop", "difference_target_prop"])
def test_explicit_forward_gradients_equal_autograd_of_the_top_loss_and_the_layer_local_losses(name, net_kind):
    """compute_grads writes, by explicit algebra, exactly the gradients of the NLL (top layer) and of the
    layer-local losses ‖f_i(s_{i−1}) − ĥ_i‖² (hidden layers, inputs and targets constant)."""
    net = make_net(dtype=torch.float64) if net_kind == "plain" else sign_net()
    x, t = minibatch(TANH_SIZES[0], TANH_SIZES[-1], dtype=torch.float64)
    rule = make_rule(name, net)
    for V in rule.V.values():  # trained-looking inverses, so the targets are not trivial
        V.data.add_(0.3 * torch.randn(V.shape, generator=torch.Generator().manual_seed(5), dtype=V.dtype))
    step = rule.compute_grads(net, x, t)
    explicit = [p.grad.clone() for p in net.parameters()]

    with torch.no_grad():
        fwd = net.forward_all(x)
    h = fwd.h
    h_target = [None] + [h[i] + step.delta_h[i] for i in range(1, net.n_layers)]
    L = net.n_layers
    a_L, _ = net.layer(L, fwd.input_of(L))
    top = -(t * F.log_softmax(a_L, dim=1)).sum(dim=1).mean()
    ref = dict(zip(net.weight_and_bias(L), torch.autograd.grad(top, net.weight_and_bias(L)), strict=True))
    hidden = [p for i in range(1, L) for p in net.weight_and_bias(i)]
    ref.update(zip(hidden, torch.autograd.grad(rule.local_losses(net, fwd, h_target), hidden), strict=True))
    for p, g in zip(net.parameters(), explicit, strict=True):
        torch.testing.assert_close(g, ref[p], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("net_kind", ["plain", "sign"])
def test_explicit_inverse_gradients_equal_autograd_of_the_noise_preserving_loss(net_kind):
    net = make_net(dtype=torch.float64) if net_kind == "plain" else sign_net()
    x, _ = minibatch(TANH_SIZES[0], TANH_SIZES[-1], dtype=torch.float64)
    rule = make_rule("difference_target_prop", net)
    with torch.no_grad():
        h = net.forward_all(x).h
    total, grads = rule.inverse_grads(net, h, 0.36, torch.Generator().manual_seed(9))
    params = [p for i in rule.V for p in (rule.V[i], rule.c[i])]
    losses = rule.inverse_losses(net, h, 0.36, torch.Generator().manual_seed(9))  # the same noise draws
    ref = torch.autograd.grad(sum(losses.values()), params)
    torch.testing.assert_close(total, sum(losses.values()).detach(), rtol=1e-12, atol=0)
    for g, r in zip(grads, ref, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
