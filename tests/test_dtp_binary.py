"""Nets with discrete (sign) and stochastic binary transmission (Lee et al. 2015, §3.3-3.4) behind the rule seam."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import REPO_CONFIG, WALL_TIME_COLUMNS, one_line, read_metrics

from biocredit.config import ConfigError, load_config, resolve_run
from biocredit.nets import MLP, build_net, sign
from biocredit.rules import RULES
from biocredit.rules.backprop import backprop_explicit, backprop_grads
from biocredit.train import evaluate

ORTHO = {"distribution": "orthogonal", "scale": 1.0}


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (conftest)


def discrete_net(sizes=(8, 6, 6, 3), seed: int = 0, **kw) -> MLP:
    """h1 = tanh(W1 x + b1), h2 = tanh(W2 sign(h1) + b2), y = softmax(W3 h2 + b3) (disc_dtp.py)."""
    kw = {"transmission": ["sign", "identity"], "feedback_transmission": ["identity", "sign"], **kw}
    net = MLP(list(sizes), "tanh", "softmax", init=ORTHO, generator=torch.Generator().manual_seed(seed), **kw)
    with torch.no_grad():  # nonzero biases, so that a forgotten bias shows
        for b in net.b:
            b.uniform_(-0.3, 0.3, generator=torch.Generator().manual_seed(seed + 1))
    return net


def stochastic_net(sizes=(8, 6, 5, 3), seed: int = 0, **kw) -> MLP:
    kw = {"transmission": ["bernoulli", "bernoulli"], "transmission_gradient": "straight_through", **kw}
    return MLP(list(sizes), "sigmoid", "softmax", init={"distribution": "glorot_uniform", "scale": 1.0},
               generator=torch.Generator().manual_seed(seed), **kw)


def minibatch(n_in: int, n_out: int, n: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, n_in, generator=g)
    return x, F.one_hot(torch.randint(0, n_out, (n,), generator=g), n_out).float()


def test_sign_transmission_forward_matches_the_formula():
    net = discrete_net()
    x, _ = minibatch(8, 3)
    W1, W2, W3 = (W.detach() for W in net.W)
    b1, b2, b3 = (b.detach() for b in net.b)
    h1 = torch.tanh(x @ W1.T + b1)
    h2 = torch.tanh(torch.where(h1 > 0, 1.0, -1.0) @ W2.T + b2)
    y = torch.softmax(h2 @ W3.T + b3, dim=1)  # the output reads h2 itself, as disc_dtp.py's F3
    with torch.no_grad():
        fwd = net.forward_all(x)
    assert torch.allclose(fwd.h[1], h1, atol=1e-6) and torch.allclose(fwd.h[2], h2, atol=1e-6)
    assert torch.allclose(fwd.y, y, atol=1e-6) and torch.allclose(net(x), y, atol=1e-6)
    assert set(fwd.input_of(2).unique().tolist()) == {-1.0, 1.0}
    assert sign(torch.tensor([-0.5, 0.0, 0.5])).tolist() == [-1.0, -1.0, 1.0]  # the scripts' sign(0) = -1


def test_bp_through_sign_gives_zero_gradient_below_the_sign_and_nonzero_above():
    net = discrete_net()
    x, t = minibatch(8, 3)
    _, _, grads, delta_h = backprop_grads(net, x, t, "cross_entropy", "mean")
    gW1, gW2, gW3, gb1, gb2, gb3 = grads
    assert torch.count_nonzero(gW1) == 0 and torch.count_nonzero(gb1) == 0, "layer 1 sits below the sign"
    assert torch.count_nonzero(delta_h[1]) == 0
    for g in (gW2, gW3, gb2, gb3):
        assert g.abs().max() > 1e-4
    explicit, dh_explicit, _ = backprop_explicit(net, x, t, "cross_entropy", "mean")  # the angles' reference
    for a, b in zip(grads, explicit, strict=True):
        assert torch.allclose(a, b, atol=1e-6)
    assert torch.count_nonzero(dh_explicit[1]) == 0

    # the rule itself: W1 and b1 get a zero gradient, so the authors' RMSprop never moves them
    rule = RULES["backprop"](net, {}, "cross_entropy", "mean", torch.Generator().manual_seed(0))
    net.zero_grad(set_to_none=True)
    rule.compute_grads(net, x, t)
    assert torch.count_nonzero(net.W[0].grad) == 0 and net.W[1].grad.abs().max() > 1e-4


def test_straight_through_gradient_is_the_sigmoid_derivative_at_the_sample():
    """∂L/∂a_i = ∂L/∂s_i ⊙ h_i(1 − h_i), with s_i the 0/1 samples the pass drew (sto_bp_ge.py)."""
    net = stochastic_net(input_noise=0.3)
    x, t = minibatch(8, 3, n=16)
    state = net.generator.get_state()
    _, y, grads, _ = backprop_grads(net, x, t, "cross_entropy", "mean")
    net.generator.set_state(state)  # replay the same input noise and samples
    with torch.no_grad():
        fwd = net.forward_all(x)
    s0, s1, s2 = fwd.s
    h1, h2 = fwd.h[1], fwd.h[2]
    assert set(s1.unique().tolist()) <= {0.0, 1.0} and not torch.equal(s0, x), "samples and input noise drawn"
    W2, W3 = net.W[1].detach(), net.W[2].detach()
    d3 = (torch.softmax(fwd.a[3], dim=1) - t) / len(x)
    d2 = (d3 @ W3) * h2 * (1 - h2)
    d1 = (d2 @ W2) * h1 * (1 - h1)
    expected = [d1.T @ s0, d2.T @ s1, d3.T @ s2, d1.sum(0), d2.sum(0), d3.sum(0)]
    assert torch.allclose(y, fwd.y)
    for k, (g, e) in enumerate(zip(grads, expected, strict=True)):
        assert torch.allclose(g, e, atol=1e-6), f"parameter {k}"
        assert e.abs().max() > 1e-5
    net.generator.set_state(state)
    explicit, _, _ = backprop_explicit(net, x, t, "cross_entropy", "mean")
    for g, e in zip(explicit, expected, strict=True):
        assert torch.allclose(g, e, atol=1e-6)


def test_zero_transmission_gradient_stops_backprop_at_the_samples():
    net = stochastic_net(transmission_gradient="zero")
    x, t = minibatch(8, 3)
    _, _, grads, _ = backprop_grads(net, x, t, "cross_entropy", "mean")
    assert torch.count_nonzero(grads[0]) == 0 and torch.count_nonzero(grads[1]) == 0
    assert grads[2].abs().max() > 1e-4


def test_sampling_draws_from_the_given_generator_only():
    net = stochastic_net()
    x, _ = minibatch(8, 3)
    torch.manual_seed(0)
    with torch.no_grad():
        a = net.forward_all(x, torch.Generator().manual_seed(3)).y
        torch.manual_seed(1)  # the global RNG must not matter
        b = net.forward_all(x, torch.Generator().manual_seed(3)).y
        c = net.forward_all(x, torch.Generator().manual_seed(4)).y
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_averaged_evaluation_is_deterministic_given_the_seed_and_differs_from_one_pass():
    net = stochastic_net(test_passes=100, input_noise=0.3)
    x, t = minibatch(8, 3, n=50)
    net.eval()
    a1, y1 = net.predict(x, torch.Generator().manual_seed(7))
    a2, y2 = net.predict(x, torch.Generator().manual_seed(7))
    _, y_other = net.predict(x, torch.Generator().manual_seed(8))
    _, y_one = net.predict(x, torch.Generator().manual_seed(7), passes=1)
    net.train()
    assert torch.equal(y1, y2) and torch.equal(a1, a2)
    assert not torch.equal(y1, y_other) and not torch.allclose(y1, y_one, atol=1e-3)
    assert torch.allclose(y1.sum(1), torch.ones(50)) and torch.allclose(torch.softmax(a1, 1), y1, atol=1e-6)
    # a mean of 100 passes varies far less between seeds than one pass does
    assert (y1 - y_other).abs().mean() < 0.3 * (y_one - net.predict(x, torch.Generator().manual_seed(9), passes=1)[1]).abs().mean()

    # the trainer's evaluation: the same numbers from the same stream, training mode restored afterwards
    labels = t.argmax(1)
    r1 = evaluate(net, x, t, labels, "cross_entropy", torch.Generator().manual_seed(7))
    r2 = evaluate(net, x, t, labels, "cross_entropy", torch.Generator().manual_seed(7))
    assert r1 == r2 and net.training


def test_multi_pass_evaluation_of_a_long_set_runs_in_chunks_each_of_its_own_examples(monkeypatch):
    import biocredit.nets as nets

    monkeypatch.setattr(nets, "EVAL_ELEMENTS", 5 * 10 * 6)  # 10 passes × 6 units: 5 examples per chunk
    net = stochastic_net(test_passes=10)
    x, _ = minibatch(8, 3, n=23)
    net.eval()
    a, y = net.predict(x, torch.Generator().manual_seed(0))
    assert a.shape == y.shape == (23, 3) and torch.allclose(y.sum(1), torch.ones(23))
    # each chunk is the evaluation of its own examples: the same numbers as evaluating the chunks one by one,
    # unchunked, from the same generator stream (an example's output in another's place would differ)
    monkeypatch.setattr(nets, "EVAL_ELEMENTS", 10**9)
    g = torch.Generator().manual_seed(0)
    parts = [net.predict(x[c:c + 5], g) for c in range(0, 23, 5)]
    assert torch.equal(a, torch.cat([p[0] for p in parts])) and torch.equal(y, torch.cat([p[1] for p in parts]))
    # ... and the passes differ (the chunks really sample): one chunk evaluated again from a fresh stream differs
    assert not torch.equal(net.predict(x[5:10], torch.Generator().manual_seed(0))[1], y[5:10])


def test_test_transmission_discretises_a_continuous_net_only_at_evaluation():
    net = discrete_net(transmission=["identity", "identity"], test_transmission=["sign", "identity"])
    x, _ = minibatch(8, 3)
    with torch.no_grad():
        continuous = net.forward_all(x).y
        net.eval()
        _, discretised = net.predict(x)
        net.train()
        expected = discrete_net().forward_all(x).y  # the same weights (same seed) with sign(h1)
    assert torch.allclose(discretised, expected, atol=1e-6) and not torch.allclose(continuous, discretised, atol=1e-3)


def test_dtp_targets_on_the_discrete_net_use_the_inverse_on_sign_h2():
    net = discrete_net()
    x, t = minibatch(8, 3)
    eta_hat = 40.0  # large enough that some signs of ĥ2 differ from those of h2
    rule = RULES["difference_target_prop"](net, {"eta_hat": eta_hat}, "cross_entropy", "mean",
                                           torch.Generator().manual_seed(0))
    net.zero_grad(set_to_none=True)
    step = rule.compute_grads(net, x, t)

    with torch.no_grad():
        h1 = torch.tanh(x @ net.W[0].T + net.b[0])
        h2 = torch.tanh(sign(h1) @ net.W[1].T + net.b[1])
    h2_leaf = h2.clone().requires_grad_(True)
    nll = -(t * F.log_softmax(h2_leaf @ net.W[2].detach().T + net.b[2].detach(), dim=1)).sum(1).mean()
    h2_target = h2 - eta_hat * torch.autograd.grad(nll, h2_leaf)[0]
    V2, c2 = rule.V[2].detach(), rule.c[2].detach()

    def g2(h):  # disc_dtp.py: G2(h2) = tanh(V2 sign(h2) + c2)
        return torch.tanh(sign(h) @ V2.T + c2)

    h1_target = h1 - g2(h2) + g2(h2_target)
    assert (sign(h2_target) != sign(h2)).any(), "test not informative: no sign flipped"
    assert torch.allclose(step.delta_h[2], h2_target - h2, atol=1e-5)
    assert torch.allclose(step.delta_h[1], h1_target - h1, atol=1e-5)
    wrong = h1 - torch.tanh(h2 @ V2.T + c2) + torch.tanh(h2_target @ V2.T + c2)  # an inverse reading h2 itself
    assert not torch.allclose(step.delta_h[1], wrong - h1, atol=1e-3)

    # layer 2 learns ‖tanh(W2 sign(h1) + b2) − ĥ2‖² (its input is the sign, constant)
    W2 = net.W[1].detach().clone().requires_grad_(True)
    local = ((torch.tanh(sign(h1) @ W2.T + net.b[1].detach()) - h2_target) ** 2).sum(1).mean()
    assert torch.allclose(net.W[1].grad, torch.autograd.grad(local, W2)[0], atol=1e-5)


def test_dtp_on_the_stochastic_net_steps_the_penultimate_target_at_the_sample():
    """sto_dtp.py: ĥ2 = h2 − s2 + (s2 − η̂ ∂L/∂s2), the gradient taken at the sample s2 the output read."""
    net = stochastic_net()
    x, t = minibatch(8, 3)
    eta_hat = 5.0
    rule = RULES["difference_target_prop"](net, {"eta_hat": eta_hat}, "cross_entropy", "mean", net.generator)
    state = net.generator.get_state()
    net.zero_grad(set_to_none=True)
    step = rule.compute_grads(net, x, t)
    net.generator.set_state(state)
    with torch.no_grad():
        fwd = net.forward_all(x)  # the same draws as the rule's pass
    s2 = fwd.s[2].clone().requires_grad_(True)
    nll = -(t * F.log_softmax(s2 @ net.W[2].detach().T + net.b[2].detach(), dim=1)).sum(1).mean()
    expected = -eta_hat * torch.autograd.grad(nll, s2)[0]
    assert torch.allclose(step.delta_h[2], expected, atol=1e-6) and expected.abs().max() > 1e-4


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("transmission", ["sgn", "identity"], "transmission.0"),
    ("transmission", ["sign"], "one entry per hidden layer"),
    ("feedback_transmission", ["identity", "bernoulli"], "feedback_transmission.1"),
    ("transmission_gradient", "straight", "transmission_gradient"),
])
def test_config_rejects_a_bad_transmission_with_one_line(key, value, needle):
    with pytest.raises(ConfigError) as err:
        load_config(REPO_CONFIG, {f"experiments.lee_dtp_discrete.net.{key}": value})
    msg = one_line(str(err.value))
    assert needle in msg and "lee_dtp_discrete" in msg


def test_config_rejects_sampled_units_that_are_not_probabilities():
    with pytest.raises(ConfigError, match="hidden_activation: sigmoid"):
        load_config(REPO_CONFIG, {"experiments.lee_dtp_stochastic.net.hidden_activation": "tanh"})


def test_the_experiments_build_the_nets_of_the_scripts():
    cfg = load_config(REPO_CONFIG, {"scale": "smoke"})
    gen = torch.Generator().manual_seed(0)
    disc = {m: build_net(resolve_run(cfg, "lee_dtp_discrete", m, 0)["net"], gen)
            for m in ("dtp", "bp_sign", "bp_continuous")}
    assert disc["dtp"].transmission == ["sign", "identity"] == disc["bp_sign"].transmission
    assert disc["dtp"].feedback_transmission == ["identity", "sign"]
    assert disc["bp_continuous"].transmission == ["identity", "identity"]
    assert disc["bp_continuous"].test_transmission == ["sign", "identity"]
    sto = resolve_run(cfg, "lee_dtp_stochastic", "bp_st", 0)
    assert sto["net"]["test_passes"] == 10 and "test_passes" not in sto  # the smoke scale's override
    net = build_net(sto["net"], gen)
    assert net.transmission == ["bernoulli", "bernoulli"] and net.straight_through and net.input_noise == 0.3
    assert resolve_run(load_config(REPO_CONFIG, {"scale": "paper"}), "lee_dtp_stochastic", "dtp", 0)["net"]["test_passes"] == 100


def test_stochastic_run_resumed_after_a_kill_ends_as_an_uninterrupted_one(mnist_dir, tmp_path, monkeypatch):
    import biocredit.train as train_mod

    monkeypatch.setenv("WANDB_MODE", "disabled")
    smoke = "experiments.lee_dtp_stochastic.scales.smoke"
    cfg = load_config(REPO_CONFIG, {"scale": "smoke", "device": "cpu", f"{smoke}.epochs": 2,
                                    f"{smoke}.train_subset": 300, f"{smoke}.test_subset": 200,
                                    f"{smoke}.test_passes": 3, "experiments.lee_dtp_stochastic.valid_size": 200})
    run_cfg = resolve_run(cfg, "lee_dtp_stochastic", "dtp", 0)
    train_mod.train(run_cfg, tmp_path / "whole", mnist_dir, device="cpu")

    real_log = train_mod._log

    def killed_after_epoch_1(msg: str) -> None:
        real_log(msg)
        if "epoch 1/2" in msg:
            raise KeyboardInterrupt

    monkeypatch.setattr(train_mod, "_log", killed_after_epoch_1)
    with pytest.raises(KeyboardInterrupt):
        train_mod.train(run_cfg, tmp_path / "killed", mnist_dir, device="cpu")
    monkeypatch.setattr(train_mod, "_log", real_log)
    assert not (tmp_path / "killed" / "summary.json").exists()
    train_mod.train(run_cfg, tmp_path / "killed", mnist_dir, device="cpu")
    whole = read_metrics(tmp_path / "whole" / "metrics.csv", WALL_TIME_COLUMNS)
    assert [r["epoch"] for r in whole] == ["0", "1", "2"]
    assert read_metrics(tmp_path / "killed" / "metrics.csv", WALL_TIME_COLUMNS) == whole


def test_the_angle_reference_replays_the_rules_own_sample():
    """BP's reference for the angles, given a copy of the generator's state from before the step, sees the same
    input noise and unit samples as the rule's forward pass: backprop measured against itself is then at 0°."""
    from biocredit.metrics import update_angles
    from biocredit.rules.base import StepResult

    net = stochastic_net(input_noise=0.3)
    x, t = minibatch(8, 3)
    replay = torch.Generator().set_state(net.generator.get_state())
    _, y, _, delta_h = backprop_grads(net, x, t, "cross_entropy", "mean")  # "the rule": draws from the run's stream
    step = StepResult(loss=torch.zeros(()), output=y, delta_h=delta_h)
    same = update_angles(net, x, t, step, "cross_entropy", "mean", generator=replay)
    assert same["angle_dh_1"] < 1e-2 and same["angle_dh_2"] < 1e-2, same
    fresh = update_angles(net, x, t, step, "cross_entropy", "mean")  # a fresh sample: not the same update
    assert fresh["angle_dh_1"] > 1.0, fresh


def test_measuring_angles_never_changes_a_stochastic_runs_numbers(mnist_dir, tmp_path, monkeypatch):
    import biocredit.train as train_mod

    monkeypatch.setenv("WANDB_MODE", "disabled")
    smoke = "experiments.lee_dtp_stochastic.scales.smoke"
    runs = {}
    for every in (1, 1000):
        cfg = load_config(REPO_CONFIG, {"scale": "smoke", "device": "cpu", f"{smoke}.epochs": 1,
                                        f"{smoke}.train_subset": 300, f"{smoke}.test_subset": 200,
                                        f"{smoke}.test_passes": 3, "experiments.lee_dtp_stochastic.valid_size": 200,
                                        "experiments.lee_dtp_stochastic.train.angle_every": every})
        train_mod.train(resolve_run(cfg, "lee_dtp_stochastic", "dtp", 0), tmp_path / str(every), mnist_dir,
                        device="cpu")
        runs[every] = read_metrics(tmp_path / str(every) / "metrics.csv", WALL_TIME_COLUMNS)
    assert "angle_dh_1" in runs[1][-1] and runs[1][-1]["angle_dh_1"] != ""
    keep = ("train_loss", "train_error", "valid_error", "test_error", "inverse_loss")
    assert [{k: r[k] for k in keep if k in r} for r in runs[1]] == [{k: r[k] for k in keep if k in r} for r in runs[1000]]
