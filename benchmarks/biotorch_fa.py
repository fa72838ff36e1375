"""Our feedback alignment vs BioTorch's, on Lillicrap et al.'s MNIST net (784-1000-10, sigmoid), in one process.

Both train the same network on the same MNIST minibatches (batch 10 as in config.yaml's lillicrap_mnist,
squared error summed over the batch, SGD with lr 1e-3 and L2 weight decay 1e-6 on the weights, same
initial W and B, same device and thread count):

- ours: ``biocredit`` exactly as a run does it (``build_net`` + the ``feedback_alignment`` rule, which
  writes the FA directions into ``p.grad``, + the project's SGD);
- BioTorch: ``biotorch.layers.fa.Linear`` layers (a custom autograd Function whose backward uses the
  layer's ``weight_backward``) + ``loss.backward()`` + ``torch.optim.SGD``, the library's intended use.

Timed: K minibatches of forward + update (no evaluation, no angle measurement), after a warm-up, R repeats
interleaved so that drifts in machine load hit both alike; reported as the median seconds per epoch
(60,000 examples) and the ratio ours / BioTorch per repeat. Before timing, one step of each from the same
state is compared: the two must produce the same weights (they implement the same rule).

BioTorch is NOT a dependency of the project: install it in the benchmark's own environment,

    python -m venv benchmarks/.venv-biotorch
    benchmarks/.venv-biotorch/bin/pip install torch==2.14.1 torchvision==0.29.1 biotorch==0.0.16 -e .
    BIOCREDIT_DATA_MIRROR=../shared/data benchmarks/.venv-biotorch/bin/python benchmarks/biotorch_fa.py \
        --threads 1 --write

``--write`` stores the result under ``fa_over_biotorch`` (and ``biotorch_detail``) in benchmarks/results.json
and as benchmarks/biotorch_fa.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from importlib import metadata
from pathlib import Path

import torch

from biocredit.config import load_config, resolve_run
from biocredit.data import load_arrays, prepare
from biocredit.nets import build_net
from biocredit.rules import RULES
from biocredit.train import make_optimizer, preprocess

HERE = Path(__file__).resolve().parent
N_EPOCH = 60000


def biotorch_net(sizes: list[int]) -> torch.nn.Sequential:
    from biotorch.layers.fa import Linear  # imported here: only the benchmark's environment has it

    layers: list[torch.nn.Module] = []
    for n_in, n_out in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [Linear(n_in, n_out, bias=True), torch.nn.Sigmoid()]
    return torch.nn.Sequential(*layers)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--experiment", default="lillicrap_mnist")
    ap.add_argument("--method", default="fa")
    ap.add_argument("--steps", type=int, default=1000, help="minibatches per timed pass")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    cfg = load_config(args.config)
    rc = resolve_run(cfg, args.experiment, args.method, 0, scale="paper")
    if rc["rule"] != "feedback_alignment" or rc["loss"] != "squared_error":
        raise SystemExit(f"--method {args.method}: expected a feedback_alignment method with squared error")
    tr = rc["train"]
    bs, lr, wd = tr["batch_size"], tr["lr"], tr["weight_decay"]
    if tr["weight_decay_mode"] != "l2" or tr.get("momentum", 0.0):
        raise SystemExit("this comparison assumes plain SGD with an L2 weight decay")

    data_dir = cfg["data"]["dir"]
    prepare(rc["dataset"], data_dir, mirror=os.environ.get("BIOCREDIT_DATA_MIRROR") or cfg["data"].get("mirror"))
    images, labels = load_arrays(rc["dataset"], data_dir, "train")
    x_all = preprocess(images, rc["preprocess"]).to(device)
    t_all = torch.nn.functional.one_hot(torch.as_tensor(labels), rc["net"]["sizes"][-1]).float().to(device)
    n = args.steps * bs
    batches = [(x_all[i:i + bs], t_all[i:i + bs]) for i in range(0, n, bs)]

    # ours, exactly as a run builds it
    g = torch.Generator().manual_seed(0)
    net = build_net(rc["net"], g).to(device)
    rule = RULES["feedback_alignment"](net, rc["params"], rc["loss"], tr["reduction"], g)
    opt = make_optimizer(net, tr)

    # BioTorch, started from the same W, b and B (its own init is replaced, so the work per step is identical)
    bt = biotorch_net(rc["net"]["sizes"]).to(device)
    with torch.no_grad():
        for k, layer in enumerate(bt[::2]):
            layer.weight.copy_(net.W[k])
            layer.bias.copy_(net.b[k])
        for j in range(2, net.n_layers + 1):  # our B_j (shaped like W_j^T) is BioTorch's weight_backward of layer j
            bt[2 * (j - 1)].weight_backward.copy_(rule.B[j].T)
    bt_opt = torch.optim.SGD([{"params": [m.weight for m in bt[::2]], "weight_decay": wd},
                              {"params": [m.bias for m in bt[::2]], "weight_decay": 0.0}], lr=lr)

    def ours_step(x: torch.Tensor, t: torch.Tensor) -> None:
        net.zero_grad(set_to_none=True)
        rule.compute_grads(net, x, t)
        opt.step()
        rule.after_step(net)

    def bt_step(x: torch.Tensor, t: torch.Tensor) -> None:
        bt_opt.zero_grad(set_to_none=True)
        y = bt(x)
        loss = 0.5 * ((y - t) ** 2).sum()
        loss.backward()
        bt_opt.step()

    # Same rule? One step of each from the same state must give the same weights.
    x0, t0 = batches[0]
    ours_step(x0, t0)
    bt_step(x0, t0)
    max_diff = max(float((net.W[k] - bt[2 * k].weight).detach().abs().max()) for k in range(net.n_layers))
    print(f"max |W_ours - W_biotorch| after one step from the same state: {max_diff:.2e}", flush=True)
    if max_diff > 1e-5:
        raise SystemExit("the two implementations disagree after one step: not the same rule, no comparison")

    def timed(step) -> float:
        t0 = time.perf_counter()
        for x, t in batches:
            step(x, t)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    timed(ours_step), timed(bt_step)  # warm-up
    t_ours, t_bt = [], []
    for _ in range(args.repeats):
        t_ours.append(timed(ours_step))
        t_bt.append(timed(bt_step))
    ratios = [a / b for a, b in zip(t_ours, t_bt, strict=True)]
    per_epoch = N_EPOCH / n
    res = {
        "fa_over_biotorch": statistics.median(ratios),
        "biotorch_detail": {
            "net": "-".join(map(str, rc["net"]["sizes"])), "batch_size": bs, "steps": args.steps, "repeats": args.repeats,
            "ours_epoch_seconds": statistics.median(t_ours) * per_epoch,
            "biotorch_epoch_seconds": statistics.median(t_bt) * per_epoch,
            "ratio_min": min(ratios), "ratio_max": max(ratios), "one_step_max_weight_diff": max_diff,
            "biotorch_version": metadata.version("biotorch"), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            "machine": platform.processor() or platform.machine(),
        },
    }
    d = res["biotorch_detail"]
    md = ("# Feedback alignment: biocredit vs BioTorch\n\n"
          f"Command: `python benchmarks/biotorch_fa.py {' '.join(sys.argv[1:])}` (in benchmarks/.venv-biotorch)\n\n"
          f"Net {d['net']} sigmoid, batch {bs}, MNIST, SGD lr {lr}, {d['threads']} thread(s), {d['device']}, torch {d['torch']}, "
          f"biotorch {d['biotorch_version']}; {args.steps} minibatches per pass, {args.repeats} interleaved repeats.\n\n"
          "| implementation | s/epoch (median) |\n|---|---|\n"
          f"| biocredit FA | {d['ours_epoch_seconds']:.2f} |\n| BioTorch FA | {d['biotorch_epoch_seconds']:.2f} |\n\n"
          f"Ratio ours / BioTorch: **{res['fa_over_biotorch']:.3f}** (per-repeat min {d['ratio_min']:.3f}, max {d['ratio_max']:.3f}). "
          f"After one step from the same state the weights agree to {max_diff:.1e}.\n")
    print(md)
    if args.write:  # CUDA numbers go to their own files (results_cuda.json, biotorch_fa_cuda.md)
        suffix = "_cuda" if device.type == "cuda" else ""
        path = HERE / f"results{suffix}.json"
        old = json.loads(path.read_text()) if path.exists() else {}
        old.update(res)
        path.write_text(json.dumps(old, indent=2) + "\n")
        (HERE / f"biotorch_fa{suffix}.md").write_text(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
