"""Learning-rate check of the Lee et al. 2015 auto-encoder (config.yaml lee_dtp_autoencoder), read on VALIDATION images.

2 epochs on the first 10k training images (batch 100, denoising noise 0.3, centred RMSprop), then the
reconstruction loss on the 10k held-out validation images (the last 10k of the training split); the test set
is never read. Usage: python benchmarks/ae_lr_select.py RULE LR NOISE HIDDEN_ACTIVATION [tied]
(``tied``: decoder weights W_2 = W_1^T, config key net.tied). Results: benchmarks/ae_lr_select.txt
"""

import sys
import time

import torch

from biocredit.nets import build_net
from biocredit.rules import RULES
from biocredit.train import apply_update, load_task, make_optimizer

torch.set_num_threads(1)
rule_name, lr, noise = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
tied = sys.argv[5:6] == ["tied"]
run = {"dataset": "mnist", "preprocess": "unit_interval", "valid_size": 10000, "train_subset": 10000, "test_subset": 2000,
       "target": "input", "net": {"sizes": [784, 1000, 784]}}
task = load_task(run, "data", torch.device("cpu"))
g = torch.Generator().manual_seed(0)
net = build_net({"sizes": [784, 1000, 784], "hidden_activation": sys.argv[4], "output_activation": "sigmoid",
                 "init": {"distribution": "orthogonal", "scale": 1.0}, "tied": tied}, g)
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
    with torch.no_grad():
        z = net(task.x_valid)
        loss = 0.5 * ((z - task.x_valid) ** 2).sum(1).mean()
    print(rule_name, lr, noise, "tied" if tied else "untied", "ep", ep, "VALID loss", round(float(loss), 3), round(time.time() - t0, 1), "s")
