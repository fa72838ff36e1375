"""Lee et al. 2015 §3.4-3.5: CIFAR-10 preprocessing, the auto-encoder's DTP rule, the linear probe, and the
config keys these experiments added (preprocess, target, probe, train.input_noise, claim margins)."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import MIRROR, REPO_CONFIG, one_line

from biocredit import data as datasets
from biocredit.aggregate import claim_verdict
from biocredit.config import ConfigError, resolve_run, validate
from biocredit.losses import loss_value
from biocredit.nets import MLP
from biocredit.probe import run_probe
from biocredit.rules import RULES
from biocredit.rules.backprop import backprop_grads
from biocredit.rules.dtp_autoencoder import autoencoder_hidden_target
from biocredit.train import Task, apply_update, load_task, make_optimizer, preprocess, preprocess_stats

RAW = yaml.safe_load(REPO_CONFIG.read_text())
CIFAR_EXP, AE_EXP = "lee_dtp_cifar10", "lee_dtp_autoencoder"
needs_cifar = pytest.mark.skipif(not (MIRROR / "cifar-10-batches-py" / "data_batch_1").is_file(),
                                 reason=f"CIFAR-10 not in the data mirror {MIRROR}")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny nets: one thread (conftest)


# --- preprocessing -------------------------------------------------------------------------------------------
def fake_arrays(monkeypatch: pytest.MonkeyPatch, n_train: int = 60, n_test: int = 20):
    """A fake 'cifar10' whose held-out validation and test images are far brighter than the training part, so
    statistics that leaked from them would show."""
    rng = np.random.default_rng(0)
    train = rng.integers(0, 100, size=(n_train, 3, 32, 32), dtype=np.uint8)
    train[-20:] = rng.integers(200, 256, size=(20, 3, 32, 32), dtype=np.uint8)  # the held-out validation part
    test = rng.integers(200, 256, size=(n_test, 3, 32, 32), dtype=np.uint8)
    arrays = {"train": (train, rng.integers(0, 10, n_train)), "test": (test, rng.integers(0, 10, n_test))}
    monkeypatch.setattr(datasets, "load_arrays", lambda name, data_dir, split: arrays[split])
    return arrays


def run_cfg(**over) -> dict:
    return {"dataset": "cifar10", "preprocess": "standardize", "valid_size": 20, "train_subset": None,
            "test_subset": None, "net": {"sizes": [3072, 10]}, **over}


def test_standardize_statistics_come_from_the_training_split_only(monkeypatch, tmp_path):
    arrays = fake_arrays(monkeypatch)
    task = load_task(run_cfg(), tmp_path, torch.device("cpu"))
    fit = torch.as_tensor(arrays["train"][0][:40]).reshape(40, -1).double() / 255
    assert task.x_train.shape == (40, 3072) and task.x_train.dtype == torch.float32
    # per-feature mean 0 and sd 1 over exactly the 40 training images; validation and test are far off
    assert torch.allclose(task.x_train.double().mean(0), torch.zeros(3072, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(task.x_train.double().std(0), torch.ones(3072, dtype=torch.float64), atol=1e-4)
    assert float(task.x_valid.mean()) > 3 and float(task.x_test.mean()) > 3
    mean, sd = preprocess_stats(arrays["train"][0][:40], "standardize")
    assert torch.allclose(mean.double(), fit.mean(0), atol=1e-6)
    expected_test = (torch.as_tensor(arrays["test"][0]).reshape(20, -1).double() / 255 - fit.mean(0)) / fit.std(0)
    assert torch.allclose(task.x_test.double(), expected_test, atol=1e-4)


def test_a_training_subset_is_standardised_with_the_full_training_splits_statistics(monkeypatch, tmp_path):
    fake_arrays(monkeypatch)
    full = load_task(run_cfg(), tmp_path, torch.device("cpu"))
    sub = load_task(run_cfg(train_subset=10, test_subset=5, valid_subset=7), tmp_path, torch.device("cpu"))
    assert torch.equal(sub.x_train, full.x_train[:10]) and torch.equal(sub.x_test, full.x_test[:5])
    # valid_subset: the first 7 of the same 20 held-out images (the split between training and held-out stays put)
    assert full.x_valid.shape[0] == 20 and torch.equal(sub.x_valid, full.x_valid[:7])
    assert torch.equal(sub.labels_valid, full.labels_valid[:7]) and torch.equal(sub.t_valid, full.t_valid[:7])
    assert torch.equal(load_task(run_cfg(valid_subset=50), tmp_path, torch.device("cpu")).x_valid, full.x_valid)


def test_unknown_preprocess_is_refused_and_standardize_needs_statistics():
    images = np.zeros((2, 28, 28), dtype=np.uint8)
    with pytest.raises(ValueError, match="unknown preprocess 'zscore'"):
        preprocess(images, "zscore")
    with pytest.raises(ValueError, match="training split"):
        preprocess(images, "standardize")


@needs_cifar
def test_cifar10_arrays_have_the_expected_shape_and_range(tmp_path):
    datasets.prepare("cifar10", tmp_path, mirror=MIRROR, download=False)
    cfg = run_cfg(valid_size=10000, train_subset=300, test_subset=200, preprocess="unit_interval")
    unit = load_task(cfg, tmp_path, torch.device("cpu"))
    assert unit.x_train.shape == (300, 3072) and unit.x_test.shape == (200, 3072) and unit.x_valid.shape == (10000, 3072)
    assert float(unit.x_train.min()) >= 0 and float(unit.x_train.max()) <= 1
    assert unit.t_train.shape == (300, 10) and torch.equal(unit.t_train.argmax(1), unit.labels_train)
    std = load_task({**cfg, "preprocess": "standardize"}, tmp_path, torch.device("cpu"))
    # the first 300 training images are a sample of the 40k the statistics come from: near 0 / 1 on average
    assert abs(float(std.x_train.mean())) < 0.1 and 0.8 < float(std.x_train.std()) < 1.2


# --- the auto-encoder's DTP rule --------------------------------------------------------------------------------
def autoencoder(seed: int = 0, sizes=(16, 12, 16), tied: bool = False, hidden_noise: float = 0.0) -> MLP:
    return MLP(list(sizes), "tanh", "sigmoid", init={"distribution": "orthogonal", "scale": 1.0},
               generator=torch.Generator().manual_seed(seed), tied=tied, hidden_noise=hidden_noise)


def test_with_a_perfect_reconstruction_the_hidden_target_is_the_code_itself():
    net = autoencoder()
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(1))
    h = net.layer(1, x)[1]
    f = lambda v: net.layer(1, v)[1]  # noqa: E731
    assert torch.allclose(autoencoder_hidden_target(f, h, x, x), h)
    z = torch.rand(8, 16, generator=torch.Generator().manual_seed(2))
    assert torch.allclose(autoencoder_hidden_target(f, h, z, x), h - f(z) + f(x))


def test_autoencoder_dtp_lowers_the_reconstruction_loss_on_a_fixed_batch():
    net = autoencoder()
    rule = RULES["difference_target_prop_autoencoder"](net, {}, "squared_error", "mean", torch.Generator().manual_seed(0))
    opt = make_optimizer(net, {"optimizer": "rmsprop_dtp", "lr": 1e-2, "weight_decay": 0.0, "weight_decay_mode": "l2"})
    x = torch.rand(32, 16, generator=torch.Generator().manual_seed(3))
    W1_before = net.W[0].detach().clone()
    losses = []
    for _ in range(40):
        net.zero_grad(set_to_none=True)
        step = rule.compute_grads(net, x, x)
        assert all(p.grad is not None for p in net.parameters())  # encoder (towards ĥ) and decoder both learn
        assert step.delta_h[1].shape == (32, 12)
        losses.append(float(step.loss))
        opt.step()
    assert losses[-1] < 0.6 * losses[0], losses
    # once the decoder inverts the encoder, the encoder's step towards ĥ descends the reconstruction loss too
    # (untied weights: near 0 at initialisation, where f is no inverse of g)
    net.zero_grad(set_to_none=True)
    rule.compute_grads(net, x, x)
    bp_W1 = backprop_grads(net, x, x, "squared_error", "mean")[2][0]
    cos = float(torch.nn.functional.cosine_similarity(net.W[0].grad.flatten(), bp_W1.flatten(), dim=0))
    assert cos > 0.3, cos
    assert not torch.equal(net.W[0], W1_before), "the encoder never moved"


def test_autoencoder_rule_refuses_a_net_that_is_not_an_autoencoder():
    with pytest.raises(ValueError, match="auto-encoder"):
        RULES["difference_target_prop_autoencoder"](autoencoder(sizes=(16, 12, 10)), {}, "squared_error", "mean",
                                                    torch.Generator().manual_seed(0))


# --- noise on the code before decoding (net.hidden_noise, the paper's auto-encoder [recalled]) -------------------
@pytest.mark.parametrize("rule_name", ["difference_target_prop_autoencoder", "backprop"])
def test_with_hidden_noise_the_decoder_is_trained_on_a_corrupted_code(rule_name):
    """Both rules' decoder gradient is autograd's of L(g(h + ε), x) with ε the net's own draw, and ε ≠ 0."""
    sigma = 0.5
    net = autoencoder(hidden_noise=sigma)
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(5))
    replay = torch.Generator().set_state(net.generator.get_state())  # the draws the rule is about to make
    net.zero_grad(set_to_none=True)
    RULES[rule_name](net, {}, "squared_error", "mean", torch.Generator().manual_seed(0)).compute_grads(net, x, x)
    W1, b1, W2, b2 = (t.detach() for t in (net.W[0], net.b[0], net.W[1], net.b[1]))
    W2g, b2g = W2.clone().requires_grad_(True), b2.clone().requires_grad_(True)
    h = torch.tanh(x @ W1.mT + b1)
    eps = sigma * torch.randn(h.shape, generator=replay)
    a = (h + eps) @ W2g.mT + b2g
    want = torch.autograd.grad(loss_value("squared_error", a, torch.sigmoid(a), x, "mean"), (W2g, b2g))
    torch.testing.assert_close(net.W[1].grad, want[0])
    torch.testing.assert_close(net.b[1].grad, want[1])
    a0 = h @ W2g.mT + b2g  # without the corruption the gradient differs: the noise was really applied
    clean = torch.autograd.grad(loss_value("squared_error", a0, torch.sigmoid(a0), x, "mean"), W2g)[0]
    assert not torch.allclose(net.W[1].grad, clean)


def test_hidden_noise_is_for_training_only_and_needs_a_layer_that_transmits_h():
    noisy, plain = autoencoder(hidden_noise=0.5), autoencoder()
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(6))
    noisy.eval(), plain.eval()
    assert torch.equal(noisy.predict(x)[1], plain.predict(x)[1])
    noisy.train()
    assert not torch.equal(noisy(x), plain(x))
    with pytest.raises(ValueError, match="hidden_noise"):
        MLP([16, 12, 12, 16], "tanh", "sigmoid", transmission=["sign", "sign"], hidden_noise=0.1)


# --- tied weights (W_2 = W_1ᵀ, the paper's auto-encoder [recalled]) --------------------------------------------
RMSPROP = {"optimizer": "rmsprop_dtp", "lr": 1e-2, "weight_decay": 0.0, "weight_decay_mode": "l2"}


def test_a_tied_autoencoder_starts_as_the_untied_one_with_its_decoder_set_to_the_encoder_transposed():
    tied, untied = autoencoder(tied=True), autoencoder(tied=False)
    assert torch.equal(tied.W[0], untied.W[0])  # the same draws: the tie does not shift the generator's stream
    assert not torch.equal(untied.W[1], untied.W[0].mT)
    assert torch.equal(tied.W[1], tied.W[0].mT)
    with pytest.raises(ValueError, match="tied"):
        autoencoder(sizes=(16, 12, 10), tied=True)


@pytest.mark.parametrize("rule_name", ["difference_target_prop_autoencoder", "backprop"])
def test_a_tied_autoencoder_stays_exactly_tied_and_learns(rule_name):
    net = autoencoder(tied=True)
    rule = RULES[rule_name](net, {}, "squared_error", "mean", torch.Generator().manual_seed(0))
    opt = make_optimizer(net, RMSPROP)
    x = torch.rand(32, 16, generator=torch.Generator().manual_seed(3))
    W1_before, losses = net.W[0].detach().clone(), []
    for _ in range(30):
        net.zero_grad(set_to_none=True)
        losses.append(float(rule.compute_grads(net, x, x).loss))
        apply_update(net, opt, rule, None)
        assert torch.equal(net.W[1], net.W[0].mT)
    assert losses[-1] < 0.7 * losses[0], losses
    assert not torch.equal(net.W[0], W1_before)


def test_the_tied_gradient_is_the_gradient_of_one_shared_weight():
    """Backprop on a tied net after tie_gradients: dL/dW of L(σ(Wᵀ tanh(W x + b₁) + b₂)) for ONE weight W."""
    net = autoencoder(tied=True)
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(4))
    net.zero_grad(set_to_none=True)
    RULES["backprop"](net, {}, "squared_error", "mean", torch.Generator().manual_seed(0)).compute_grads(net, x, x)
    untied_W1 = net.W[0].grad.clone()
    net.tie_gradients()
    W = net.W[0].detach().clone().requires_grad_(True)
    b1, b2 = net.b[0].detach(), net.b[1].detach()
    a = torch.tanh(x @ W.mT + b1) @ W + b2
    (want,) = torch.autograd.grad(loss_value("squared_error", a, torch.sigmoid(a), x, "mean"), W)
    torch.testing.assert_close(net.W[0].grad, want)
    torch.testing.assert_close(net.W[1].grad, want.mT)
    assert not torch.allclose(untied_W1, want)  # the decoder's share is not negligible


def test_tie_gradients_leaves_an_untied_net_alone():
    net = autoencoder(tied=False)
    x = torch.rand(8, 16, generator=torch.Generator().manual_seed(4))
    RULES["backprop"](net, {}, "squared_error", "mean", torch.Generator().manual_seed(0)).compute_grads(net, x, x)
    grads = [p.grad.clone() for p in net.W]
    net.tie_gradients()
    net.retie()
    assert all(torch.equal(p.grad, g) for p, g in zip(net.W, grads, strict=True))
    assert not torch.equal(net.W[1], net.W[0].mT)


def test_shallow_learning_refuses_a_tied_net():
    with pytest.raises(ValueError, match="tied"):
        RULES["shallow"](autoencoder(tied=True), {}, "squared_error", "mean", torch.Generator().manual_seed(0))


def test_the_autoencoder_experiment_ties_dtp_and_bp_but_not_the_fixed_random_encoder():
    assert resolve_run(RAW, AE_EXP, "dtp", 0, "quick")["net"]["tied"] is True
    assert resolve_run(RAW, AE_EXP, "bp", 0, "quick")["net"]["tied"] is True
    assert resolve_run(RAW, AE_EXP, "shallow", 0, "quick")["net"]["tied"] is False


# --- the linear probe -------------------------------------------------------------------------------------------
def blobs(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 3, (n,), generator=g)
    centres = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.5]])
    return centres[labels] + 0.4 * torch.randn(n, 2, generator=g), labels


def test_linear_probe_beats_chance_on_a_separable_problem_and_leaves_the_encoder_unchanged():
    net = MLP([2, 2, 2], "tanh", "sigmoid", init={"distribution": "orthogonal", "scale": 1.0},
              generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.W[0].copy_(torch.eye(2) * 0.5)  # an invertible code: the classes stay separable after tanh
    before = {k: v.clone() for k, v in net.state_dict().items()}
    (xtr, ltr), (xte, lte) = blobs(600, 1), blobs(300, 2)
    task = Task(xtr, xtr, xte, xte, classes_train=ltr, classes_test=lte)
    out = run_probe(net, task, {"kind": "linear_softmax", "layer": 1, "epochs": 20, "lr": 0.1},
                    torch.Generator().manual_seed(0))
    assert out["probe_test_error"] < 10.0, out  # chance: ~67 %
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()), "the probe changed the net"
    assert all(p.grad is None for p in net.parameters())


def test_linear_probe_reads_the_code_not_the_input():
    """A code that has forgotten the input (all-zero encoder weights) leaves the probe at chance."""
    net = MLP([2, 2, 2], "tanh", "sigmoid", generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        net.W[0].zero_()
    (xtr, ltr), (xte, lte) = blobs(600, 1), blobs(300, 2)
    out = run_probe(net, Task(xtr, xtr, xte, xte, classes_train=ltr, classes_test=lte),
                    {"kind": "linear_softmax", "layer": 1, "epochs": 5, "lr": 0.1}, torch.Generator().manual_seed(0))
    assert out["probe_test_error"] > 40.0, out


# --- config keys --------------------------------------------------------------------------------------------------
def bad(path: str, value) -> dict:
    cfg = copy.deepcopy(RAW)
    node = cfg
    *parents, last = path.split(".")
    for p in parents:
        node = node[p]
    node[last] = value
    return cfg


@pytest.mark.parametrize(("path", "value", "names"), [
    (f"experiments.{CIFAR_EXP}.preprocess", "zscore", f"experiments.{CIFAR_EXP}.preprocess"),
    (f"experiments.{AE_EXP}.target", "labelz", f"experiments.{AE_EXP}.target"),
    (f"experiments.{AE_EXP}.probe.kind", "knn", f"experiments.{AE_EXP}.probe.kind"),
    (f"experiments.{AE_EXP}.probe.epochs", 0, f"experiments.{AE_EXP}.probe.epochs"),
    (f"experiments.{AE_EXP}.train.input_noise", -0.3, f"experiments.{AE_EXP}.train.input_noise"),
    (f"experiments.{AE_EXP}.net.sizes", [784, 1000, 10], f"experiments.{AE_EXP}.net.sizes"),
    (f"experiments.{AE_EXP}.net.tied", "yes", f"experiments.{AE_EXP}.net.tied"),
    ("experiments.lee_dtp_mnist.net.tied", True, "experiments.lee_dtp_mnist.net.tied"),
    (f"experiments.{AE_EXP}.methods.shallow.net", {"tied": True}, f"experiments.{AE_EXP}.methods.shallow"),
])
def test_config_rejects_a_bad_new_key_with_one_line(path, value, names):
    with pytest.raises(ConfigError) as err:
        validate(bad(path, value))
    assert names in one_line(str(err.value))


def test_new_keys_reach_the_run_config_and_leave_older_experiments_hashes_alone():
    run = resolve_run(RAW, AE_EXP, "dtp", 0, "quick")
    assert run["target"] == "input" and run["probe"]["kind"] == "linear_softmax"
    assert run["train"]["input_noise"] > 0
    old = resolve_run(RAW, "lee_dtp_mnist", "dtp", 0, "quick")
    assert "target" not in old and "probe" not in old and "input_noise" not in old["train"]
    assert "tied" not in old["net"]
    assert resolve_run(RAW, CIFAR_EXP, "dtp", 0, "quick")["preprocess"] == "standardize"


def test_a_margin_claim_holds_only_within_the_margin():
    ok = pd.DataFrame({"method": ["dtp", "bp"], "final_test_error": [50.0, 47.0]})
    claim = {"metric": "test_error", "lower": ["dtp"], "higher": ["bp"]}
    assert claim_verdict({**claim, "margin": 5.0}, ok)[0] == "holds"
    assert claim_verdict({**claim, "margin": 2.0}, ok)[0] == "does NOT hold"
    assert claim_verdict(claim, ok)[0] == "does NOT hold"
