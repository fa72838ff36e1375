"""Learning-rate check of the Lee et al. 2015 auto-encoder (config.yaml lee_dtp_autoencoder), read on VALIDATION images.

2 epochs on the first 10k training images (batch 100, denoising noise 0.3, centred RMSprop), then the
reconstruction loss on the 10k held-out validation images (the last 10k of the training split); the test set
is never read. Usage: python benchmarks/ae_lr_select.py RULE LR NOISE HIDDEN_ACTIVATION [tied] [hidden=SIGMA]
(``tied``: decoder weights W_2 = W_1^T, config key net.tied; ``hidden=SIGMA``: Gaussian noise of sd SIGMA on the
code before decoding, config key net.hidden_noise; ``probe``: after the last epoch, also the config's linear probe
trained on the code of the 10k training images and read on the 10k validation images). Results:
benchmarks/ae_lr_select.txt
"""

import sys
import time
from types import SimpleNamespace

import torch
import yaml

from biocredit.nets import build_net
from biocredit.probe import run_probe
from biocredit.rules import RULES
from biocredit.train import apply_update, load_task, make_optimizer

torch.set_num_threads(1)
rule_name, lr, noise = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
tied = "tied" in sys.argv[5:]
hidden_noise = next((float(a.split("=", 1)[1]) for a in sys.argv[5:] if a.startswith("hidden=")), 0.0)
run = {"dataset": "mnist", "preprocess": "unit_interval", "valid_size": 10000, "train_subset": 10000, "test_subset": 2000,
       "target": "input", "net": {"sizes": [784, 1000, 784]}}
task = load_task(run, "data", torch.device("cpu"))
g = torch.Generator().manual_seed(0)
net = build_net({"sizes": [784, 1000, 784], "hidden_activation": sys.argv[4], "output_activation": "sigmoid",
                 "init": {"distribution": "orthogonal", "scale": 1.0}, "tied": tied,
                 "hidden_noise": hidden_noise}, g)
rule = RULES[rule_name](net, {}, "squared_error", "mean", g)
opt = make_optimizer(net, {"optimizer": "rmsprop_dtp", "lr": lr, "weight_decay": 0, "weight_decay_mode": "l2"})
t0 = time.time()
for ep in range(2):
    for s in range(0, 10000, 100):
        x, t = task.x_train[s:s+100], task.t_train[s:s+100]
        x = x + noise * torch.randn(x.shape, generator=g)
        net.zero_grad(set_to_none=True)
        rule.compute_grads(net, x, t)
        apply_update(net, opt, rule, None)  # = opt.step() for an untied net
    net.eval()  # no hidden noise when reading the validation loss
    with torch.no_grad():
        z = net(task.x_valid)
        loss = 0.5 * ((z - task.x_valid) ** 2).sum(1).mean()
    net.train()
    print(rule_name, lr, noise, "tied" if tied else "untied", f"hidden {hidden_noise}", "ep", ep, "VALID loss", round(float(loss), 3), round(time.time() - t0, 1), "s")

if "probe" in sys.argv[5:]:
    labels = load_task({k: v for k, v in run.items() if k != "target"}, "data", torch.device("cpu"))
    assert torch.equal(labels.x_valid, task.x_valid) and torch.equal(labels.x_train, task.x_train)  # the same split
    probe_cfg = yaml.safe_load(open("config.yaml"))["experiments"]["lee_dtp_autoencoder"]["probe"]
    net.eval()
    probe_task = SimpleNamespace(x_train=task.x_train, classes_train=labels.labels_train,
                                 x_test=task.x_valid, classes_test=labels.labels_valid)
    err = run_probe(net, probe_task, probe_cfg, torch.Generator().manual_seed(0))
    print(rule_name, lr, noise, "tied" if tied else "untied", f"hidden {hidden_noise}", "PROBE VALID error",
          round(err["probe_test_error"], 2), "train error", round(err["probe_train_error"], 2))
