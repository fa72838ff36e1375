"""The learning rules behind the seam: backprop, feedback alignment (dense and sparse), shallow; the registry."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from biocredit.nets import MLP
from biocredit.rules import RULES, LearningRule
from biocredit.train import apply_update, make_optimizer

SIZES = [784, 50, 30, 10]
# (hidden activation, output activation, loss, reduction)
SETUPS = [
    ("sigmoid", "sigmoid", "squared_error", "sum"),
    ("tanh", "sigmoid", "squared_error", "sum"),
    ("sigmoid", "softmax", "cross_entropy", "mean"),
    ("tanh", "softmax", "cross_entropy", "mean"),
]
# FA with B = W^T computes backprop's numbers with explicit algebra instead of autograd: the same products in a
# different order, so float32 results agree to rounding, not bit for bit (torch.equal does not hold).
ATOL, RTOL = 1e-7, 1e-5


def make_net(seed: int = 0, sizes: list[int] = SIZES, hidden: str = "sigmoid", output: str = "sigmoid") -> MLP:
    g = torch.Generator().manual_seed(seed)
    return MLP(sizes, hidden, output, init={"distribution": "uniform", "scale": 0.2}, generator=g)


def minibatch(seed: int = 1, n: int = 16, n_in: int = 784, n_out: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, n_in, generator=g)
    t = F.one_hot(torch.randint(0, n_out, (n,), generator=g), n_out).float()
    return x, t


def make_rule(name: str, net: MLP, params: dict | None = None, loss: str = "squared_error",
              reduction: str = "sum", seed: int = 0) -> LearningRule:
    return RULES[name](net, params or {}, loss, reduction, torch.Generator().manual_seed(seed))


def grads_of(rule: LearningRule, net: MLP, x: torch.Tensor, t: torch.Tensor):
    net.zero_grad(set_to_none=True)
    step = rule.compute_grads(net, x, t)
    return step, [None if p.grad is None else p.grad.clone() for p in net.parameters()]


def sgd_step(rule: LearningRule, net: MLP, x: torch.Tensor, t: torch.Tensor, opt: torch.optim.Optimizer) -> None:
    """One step exactly as the trainer takes it."""
    net.zero_grad(set_to_none=True)
    rule.compute_grads(net, x, t)
    opt.step()
    rule.after_step(net)


def optimizer(net: MLP, lr: float = 0.1, weight_decay: float = 0.0, momentum: float = 0.0) -> torch.optim.Optimizer:
    return make_optimizer(net, {"lr": lr, "weight_decay": weight_decay, "weight_decay_mode": "l2",
                                "momentum": momentum})


@pytest.mark.parametrize(("hidden", "output", "loss", "reduction"), SETUPS, ids=[f"{s[0]}-{s[2]}" for s in SETUPS])
def test_feedback_alignment_with_transposed_weights_as_feedback_is_backprop(hidden, output, loss, reduction):
    net = make_net(hidden=hidden, output=output)
    x, t = minibatch()
    fa = make_rule("feedback_alignment", net, loss=loss, reduction=reduction)
    fa.B = [None, None] + [W.detach().T.clone() for W in net.W[1:]]  # B_j = W_j^T for j = 2..L
    bp = make_rule("backprop", net, loss=loss, reduction=reduction)

    fa_step, fa_grads = grads_of(fa, net, x, t)
    bp_step, bp_grads = grads_of(bp, net, x, t)

    assert torch.allclose(fa_step.loss, bp_step.loss, rtol=RTOL, atol=ATOL)
    names = [n for n, _ in net.named_parameters()]
    assert len(fa_grads) == len(bp_grads) == 2 * (len(SIZES) - 1)
    for name, g_fa, g_bp in zip(names, fa_grads, bp_grads, strict=True):
        assert g_fa is not None and g_bp is not None, name
        assert g_bp.abs().max() > 0, f"{name}: backprop gradient is zero, the comparison would be vacuous"
        assert torch.allclose(g_fa, g_bp, rtol=RTOL, atol=ATOL), f"{name}: max |diff| {(g_fa - g_bp).abs().max()}"
    for i in range(1, net.n_layers):  # the signal sent to every hidden layer
        assert fa_step.delta_h[i] is not None and bp_step.delta_h[i] is not None
        assert torch.allclose(fa_step.delta_h[i], bp_step.delta_h[i], rtol=RTOL, atol=ATOL), f"delta_h_{i}"


def test_feedback_alignment_with_random_feedback_is_not_backprop():
    net = make_net()
    x, t = minibatch()
    _, fa_grads = grads_of(make_rule("feedback_alignment", net), net, x, t)
    _, bp_grads = grads_of(make_rule("backprop", net), net, x, t)
    W1 = 0  # first hidden layer weights: their update depends on the feedback path
    assert not torch.allclose(fa_grads[W1], bp_grads[W1], rtol=1e-2, atol=1e-4)
    # the output layer's update is local (delta_L h_{L-1}^T) and therefore the same
    W_out = net.n_layers - 1
    assert torch.allclose(fa_grads[W_out], bp_grads[W_out], rtol=RTOL, atol=ATOL)


def test_feedback_matrices_stay_fixed_while_the_weights_learn():
    net = make_net()
    fa = make_rule("feedback_alignment", net)
    B0 = [None if B is None else B.clone() for B in fa.B]
    W0 = [W.detach().clone() for W in net.W]
    opt = optimizer(net, lr=0.05, weight_decay=1e-3, momentum=0.9)
    for k in range(5):
        sgd_step(fa, net, *minibatch(seed=10 + k), opt)
    for j in range(2, net.n_layers + 1):
        assert fa.B[j].shape == net.W[j - 1].T.shape
        assert torch.equal(fa.B[j], B0[j]), f"B_{j} changed during training"
    for i, (W, W_init) in enumerate(zip(net.W, W0, strict=True), 1):
        assert not torch.equal(W.detach(), W_init), f"W_{i} did not learn"


def test_feedback_matrices_differ_between_seeds_and_repeat_for_a_seed():
    def feedback(seed: int) -> list[torch.Tensor]:
        net = make_net(seed=seed)
        return make_rule("feedback_alignment", net, seed=seed).B[2:]

    a, a_again, b = feedback(0), feedback(0), feedback(1)
    for j, (Ba, Ba2, Bb) in enumerate(zip(a, a_again, b, strict=True), 2):
        assert torch.equal(Ba, Ba2), f"B_{j} is not reproducible for a seed"
        assert not torch.equal(Ba, Bb), f"B_{j} is the same for seeds 0 and 1"


def test_feedback_init_scale_sets_the_range_of_B():
    net = make_net()
    fa = make_rule("feedback_alignment", net, params={"feedback_init": {"distribution": "uniform", "scale": 0.05}})
    for B in fa.B[2:]:
        assert float(B.abs().max()) <= 0.05
        assert float(B.abs().max()) > 0.04  # U[-0.05, 0.05] with hundreds of draws reaches near the bound


def test_shallow_trains_only_the_output_layer():
    net = make_net()
    x, t = minibatch()
    shallow = make_rule("shallow", net)
    step, grads = grads_of(shallow, net, x, t)
    _, bp_grads = grads_of(make_rule("backprop", net), net, x, t)
    names = [n for n, _ in net.named_parameters()]
    last = {f"W.{net.n_layers - 1}", f"b.{net.n_layers - 1}"}
    for name, g, g_bp in zip(names, grads, bp_grads, strict=True):
        if name in last:  # the output layer gets backprop's (local) gradient
            assert g is not None and torch.allclose(g, g_bp, rtol=RTOL, atol=ATOL), name
        else:
            assert g is None, f"shallow set a gradient on the hidden parameter {name}"
    assert all(dh is None for dh in step.delta_h), "shallow sends no signal to hidden layers"

    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = optimizer(net, lr=0.5, weight_decay=1e-2, momentum=0.9)  # weight decay must not touch hidden layers
    for k in range(3):
        sgd_step(shallow, net, *minibatch(seed=20 + k), opt)
    for name, p in net.named_parameters():
        if name in last:
            assert not torch.equal(p.detach(), before[name]), f"{name} did not learn"
        else:
            assert torch.equal(p.detach(), before[name]), f"hidden parameter {name} changed"


SPARSE_OPTIMISERS = {  # every optimiser and weight-decay form a run can use
    "sgd_momentum_l2": {"optimizer": "sgd", "lr": 0.2, "weight_decay": 1e-2, "weight_decay_mode": "l2", "momentum": 0.9},
    "sgd_decoupled": {"optimizer": "sgd", "lr": 0.2, "weight_decay": 1e-2, "weight_decay_mode": "decoupled"},
    "rmsprop_dtp_l2": {"optimizer": "rmsprop_dtp", "lr": 1e-3, "weight_decay": 1e-2, "weight_decay_mode": "l2"},
}


@pytest.mark.parametrize("train_cfg", SPARSE_OPTIMISERS.values(), ids=SPARSE_OPTIMISERS.keys())
def test_sparse_feedback_alignment_keeps_its_zeros_under_every_optimiser_and_weight_decay(train_cfg):
    net = make_net(sizes=[784, 100, 50, 10])
    fa = make_rule("feedback_alignment", net, params={"weight_sparsity": 0.5, "feedback_sparsity": 0.5})
    zero_W = [W.detach() == 0 for W in net.W]
    B0 = [B.clone() for B in fa.B[2:]]
    W0 = [W.detach().clone() for W in net.W]
    for mask in zero_W:  # about half of every W removed at the start
        assert 0.45 < float(mask.double().mean()) < 0.55
    for B in fa.B[2:]:
        assert 0.42 < float((B == 0).double().mean()) < 0.58  # B_3 has only 500 elements

    opt = make_optimizer(net, train_cfg)
    decay = 1 - train_cfg["weight_decay"] if train_cfg["weight_decay_mode"] == "decoupled" else None
    for k in range(8):  # exactly as the trainer steps (train.apply_update)
        net.zero_grad(set_to_none=True)
        fa.compute_grads(net, *minibatch(seed=30 + k))
        apply_update(net, opt, fa, decay)

    for i, (W, mask, W_init) in enumerate(zip(net.W, zero_W, W0, strict=True), 1):
        W = W.detach()
        assert torch.equal(W == 0, mask), f"W_{i}: removed synapses regrew or kept ones were zeroed"
        assert not torch.equal(W, W_init), f"W_{i} did not learn"
    for j, (B, B_init) in enumerate(zip(fa.B[2:], B0, strict=True), 2):
        assert torch.equal(B, B_init), f"B_{j} changed"


def test_sparse_feedback_alignment_resumes_with_the_same_masks_and_feedback():
    net = make_net(sizes=[784, 100, 10])
    fa = make_rule("feedback_alignment", net, params={"weight_sparsity": 0.5, "feedback_sparsity": 0.5}, seed=3)
    other = make_rule("feedback_alignment", make_net(sizes=[784, 100, 10]),
                      params={"weight_sparsity": 0.5, "feedback_sparsity": 0.5}, seed=4)
    other.load_state_dict(fa.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(fa.B[2:], other.B[2:], strict=True))
    assert all(torch.equal(a, b) for a, b in zip(fa.masks, other.masks, strict=True))


def test_unknown_rule_parameter_raises_a_key_error_naming_it():
    for name, rule in RULES.items():
        with pytest.raises(KeyError, match="feedback_sclae"):
            rule.resolve_params({"feedback_sclae": 0.1})
        assert rule.resolve_params({}) == rule.PARAMS, f"{name}: defaults are not its PARAMS"
    with pytest.raises(KeyError, match="feedback_sclae"):
        make_rule("feedback_alignment", make_net(), params={"feedback_sclae": 0.1})


def test_known_rule_parameters_override_the_defaults_and_keep_the_rest():
    fa = RULES["feedback_alignment"]
    got = fa.resolve_params({"weight_sparsity": 0.25})
    assert got["weight_sparsity"] == 0.25
    assert {k: v for k, v in got.items() if k != "weight_sparsity"} == \
        {k: v for k, v in fa.PARAMS.items() if k != "weight_sparsity"}


def test_registry_holds_the_core_rules_under_their_own_names():
    assert {"backprop", "feedback_alignment", "shallow"} <= set(RULES)
    for name, rule in RULES.items():
        assert issubclass(rule, LearningRule) and rule.name == name
    assert RULES["backprop"].compare_to_backprop is False
    assert all(RULES[n].compare_to_backprop for n in RULES if n != "backprop")


def test_our_sgd_takes_the_same_steps_as_torch_sgd():
    from biocredit.optim import SGD

    torch.manual_seed(0)
    for momentum, wd in ((0.0, 0.0), (0.9, 1e-3)):
        a = torch.nn.Parameter(torch.randn(5, 3))
        b = torch.nn.Parameter(a.detach().clone())
        ours = SGD([{"params": [a], "weight_decay": wd}], lr=0.1, momentum=momentum)
        ref = torch.optim.SGD([{"params": [b], "weight_decay": wd}], lr=0.1, momentum=momentum)
        for _ in range(4):
            g = torch.randn(5, 3)
            a.grad, b.grad = g.clone(), g.clone()
            ours.step()
            ref.step()
        assert torch.allclose(a, b, atol=1e-6), (momentum, wd)
        assert not torch.equal(a, torch.zeros_like(a))


def test_optimiser_state_round_trips_through_torch_optimizers_format():
    """Checkpoints hold ``opt.state_dict()``: ours has torch.optim's layout, so a checkpoint written by a
    torch.optim.Optimizer subclass (earlier versions) resumes, and a resumed run steps as an unbroken one."""
    from biocredit.optim import SGD, CenteredRMSpropInsideEps

    class TorchSGD(torch.optim.Optimizer):  # what the optimiser used to be: torch's base, our update
        def __init__(self, params, lr, momentum, weight_decay=0.0):
            super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    torch.manual_seed(0)
    grads = [torch.randn(4, 3) for _ in range(6)]
    for make in (lambda ps: SGD([{"params": ps[:1], "weight_decay": 1e-3}, {"params": ps[1:]}], lr=0.1, momentum=0.9),
                 lambda ps: CenteredRMSpropInsideEps([{"params": ps}], lr=0.01)):
        whole = [torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.zeros(4, 3))]
        opt = make(whole)
        for g in grads:
            for p in whole:
                p.grad = g.clone()
            opt.step()
        part = [torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.zeros(4, 3))]
        first = make(part)
        for g in grads[:3]:
            for p in part:
                p.grad = g.clone()
            first.step()
        saved = first.state_dict()
        assert set(saved) == {"state", "param_groups"} and sorted(saved["state"]) == [0, 1]
        assert [g["params"] for g in saved["param_groups"]] in ([[0], [1]], [[0, 1]])
        resumed = make(part)
        resumed.load_state_dict(saved)
        for g in grads[3:]:
            for p in part:
                p.grad = g.clone()
            resumed.step()
        assert all(torch.equal(a, b) for a, b in zip(whole, part, strict=True))
        assert not torch.equal(whole[0], torch.ones(4, 3))

    legacy = TorchSGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1, momentum=0.9)
    legacy.state[legacy.param_groups[0]["params"][0]]["v"] = torch.full((2,), 3.0)
    ours = SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.5, momentum=0.0)
    ours.load_state_dict(legacy.state_dict())
    assert ours.param_groups[0]["lr"] == 0.1 and ours.param_groups[0]["momentum"] == 0.9
    assert torch.equal(ours.state[ours.param_groups[0]["params"][0]]["v"], torch.full((2,), 3.0))
    with pytest.raises(ValueError, match="parameter groups"):
        SGD([torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))], lr=0.1).load_state_dict(
            legacy.state_dict())


def test_building_an_optimiser_does_not_import_torch_dynamo():
    import subprocess
    import sys

    code = ("import sys, torch\nfrom biocredit.optim import SGD, CenteredRMSpropInsideEps\n"
            "p = torch.nn.Parameter(torch.zeros(3)); p.grad = torch.ones(3)\n"
            "SGD([p], lr=0.1).step(); CenteredRMSpropInsideEps([p], lr=0.1).step()\n"
            "print('torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_hidden_lr_scale_multiplies_the_hidden_layers_step_and_leaves_the_output_layers():
    """``train.hidden_lr_scale`` (the BP control for FA's large β): the same gradients, every layer but the last
    moved s times as far; s = 1 takes exactly the step of the config without the key (the old parameter groups)."""
    x, t = minibatch()
    steps = {}
    for scale in (None, 1, 7.0):
        net = make_net()
        before = [p.detach().clone() for p in net.parameters()]
        cfg = {"lr": 0.1, "weight_decay": 1e-3, "weight_decay_mode": "l2", "momentum": 0.0}
        opt = make_optimizer(net, cfg if scale is None else {**cfg, "hidden_lr_scale": scale})
        sgd_step(make_rule("backprop", net), net, x, t, opt)
        steps[scale] = [p.detach() - b for p, b in zip(net.parameters(), before, strict=True)]
    names = [n for n, _ in make_net().named_parameters()]
    last = len(SIZES) - 2  # index of the output layer
    for name, plain, one, seven in zip(names, steps[None], steps[1], steps[7.0], strict=True):
        assert torch.equal(plain, one), f"{name}: hidden_lr_scale = 1 changed the step"
        assert plain.abs().sum() > 0, f"{name}: no step to compare"
        if name.endswith(str(last)):
            assert torch.equal(seven, plain), f"{name}: the output layer's step changed"
        else:
            torch.testing.assert_close(seven, 7.0 * plain, rtol=1e-5, atol=1e-7)  # (deltas of ~0.2-sized weights)
