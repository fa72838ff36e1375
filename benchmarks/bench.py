"""Speed of every learning rule against backprop on the same net, per experiment of config.yaml.

For each experiment and method: build the net and rule exactly as a run would (same sizes,
activations, loss, batch size, optimiser), feed random inputs of the right shape (timing does not
depend on the values), and time one "epoch" of K minibatches: the rule's own epoch phase
(``on_epoch_start``, e.g. DTP's inverse pass) plus K forward updates and optimiser steps. Warm-up
first, then R repeats; reports the median and the spread (min-max), and the ratio to backprop on the
same net measured in the same process, interleaved. Angle measurements and evaluation are excluded
(they are the same for every rule).

    python benchmarks/bench.py [--experiments a,b] [--steps 200] [--repeats 5] [--device cpu|cuda]
    python benchmarks/bench.py --write   # also writes benchmarks/results.{md,json} (results_cuda.* with --device cuda)
    python benchmarks/bench.py --ensembles [--write]   # 20 seeds as one ensemble vs one seed (benchmarks/ensemble.py)
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from biocredit.config import load_config, resolve_run
from biocredit.nets import build_net
from biocredit.rules import RULES
from biocredit.rules.backprop import backprop_explicit
from biocredit.train import make_optimizer, peak_memory_mb, resolve_device

HERE = Path(__file__).resolve().parent
N_TRAIN = {"mnist": 60000, "fashion_mnist": 60000, "cifar10": 50000}
ENSEMBLE_SECTION = "## Seed ensembles (issue #6)"  # written by benchmarks/ensemble.py, kept by --write


class ExplicitBackprop(RULES["backprop"]):
    """Backprop by the explicit algebra FA uses (δ_i = (W_{i+1}ᵀ δ_{i+1}) ∘ f'(a_i); ``backprop_explicit``,
    tested equal to autograd), for the floor comparison: FA does the same products with B in place of Wᵀ.
    The project's ``backprop`` rule uses autograd, the independent reference, which costs more per step."""

    def compute_grads(self, net, x, target):
        grads, _, _ = backprop_explicit(net, x, target, self.loss, self.reduction)
        for p, g in zip(net.parameters(), grads, strict=False):
            p.grad = g


def make_rule(run_cfg: dict, device: torch.device):
    g = torch.Generator().manual_seed(0)
    net = build_net(run_cfg["net"], g).to(device)
    cls = ExplicitBackprop if run_cfg["rule"] == "backprop_explicit" else RULES[run_cfg["rule"]]
    rule = cls(net, run_cfg["params"], run_cfg["loss"], run_cfg["train"]["reduction"], g)
    return net, rule, make_optimizer(net, run_cfg["train"])


def epoch_seconds(run_cfg: dict, steps: int, device: torch.device, batches: list) -> float:
    """Seconds for one pass of ``steps`` minibatches (rule epoch phase + forward updates)."""
    net, rule, opt = make_rule(run_cfg, device)

    def run_once() -> float:
        t0 = time.perf_counter()
        rule.on_epoch_start(net, 1, lambda: iter(batches))
        for x, t in batches:
            net.zero_grad(set_to_none=True)
            rule.compute_grads(net, x, t)
            opt.step()
            rule.after_step(net)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    run_once()  # warm-up
    return run_once


def bench_experiment(cfg: dict, name: str, steps: int, repeats: int, device: torch.device) -> list[dict]:
    exp = cfg["experiments"][name]
    methods = list(exp["methods"])
    bp_like = next((m for m in methods if exp["methods"][m]["rule"] == "backprop"), None)
    rows = []
    for m in methods:
        rc = resolve_run(cfg, name, m, 0, scale="paper")
        ref = m if bp_like is None else bp_like
        rc_ref = resolve_run(cfg, name, ref, 0, scale="paper")
        if rc_ref["net"]["sizes"] != rc["net"]["sizes"]:  # compare with BP on the same net
            rc_ref = {**rc_ref, "net": rc["net"]}
        bs = rc["train"]["batch_size"]
        n_train = rc["task"]["n_train"] if rc.get("task") else N_TRAIN[rc["dataset"]] - (rc.get("valid_size") or 0)
        g = torch.Generator().manual_seed(1)
        sizes = rc["net"]["sizes"]
        batches = [(torch.randn(bs, sizes[0], generator=g).to(device),
                    torch.softmax(torch.randn(bs, sizes[-1], generator=g), 1).to(device)) for _ in range(steps)]
        if rc["loss"] == "cross_entropy":
            batches = [(x, torch.nn.functional.one_hot(t.argmax(1), sizes[-1]).float()) for x, t in batches]
        run_rule = epoch_seconds(rc, steps, device, batches)
        run_bp = epoch_seconds({**rc_ref, "rule": "backprop", "params": {}}, steps, device, batches)
        fa_like = rc["rule"] == "feedback_alignment"  # also against BP by the same explicit algebra
        run_bpx = epoch_seconds({**rc_ref, "rule": "backprop_explicit", "params": {}}, steps, device, batches) \
            if fa_like else None
        t_rule, t_bp, t_bpx = [], [], []
        for _ in range(repeats):  # interleaved, so drifts in machine load hit both alike
            t_rule.append(run_rule())
            t_bp.append(run_bp())
            if run_bpx:
                t_bpx.append(run_bpx())
        med, med_bp = statistics.median(t_rule), statistics.median(t_bp)
        ratios = [a / b for a, b in zip(t_rule, t_bp, strict=True)]
        ratios_x = [a / b for a, b in zip(t_rule, t_bpx, strict=True)] if t_bpx else []
        rows.append({
            "experiment": name, "method": m, "rule": rc["rule"], "net": "-".join(map(str, sizes)),
            "batch_size": bs, "samples_per_s": steps * bs / med,
            "epoch_seconds": med * n_train / (steps * bs), "bp_epoch_seconds": med_bp * n_train / (steps * bs),
            "over_bp": med / med_bp, "over_bp_min": min(ratios), "over_bp_max": max(ratios),
            "spread_pct": 100 * (max(t_rule) - min(t_rule)) / med,
            "over_bp_explicit": statistics.median(ratios_x) if ratios_x else None,
            "over_bp_explicit_min": min(ratios_x) if ratios_x else None,
            "over_bp_explicit_max": max(ratios_x) if ratios_x else None,
        })
        print(f"{name:20s} {m:18s} {rows[-1]['samples_per_s']:10.0f} samples/s  "
              f"{rows[-1]['epoch_seconds']:8.2f} s/epoch  x{rows[-1]['over_bp']:.2f} BP"
              + (f"  x{rows[-1]['over_bp_explicit']:.2f} explicit BP" if ratios_x else ""), flush=True)
    return rows


def to_markdown(rows: list[dict], machine: str) -> str:
    head = ("| experiment | method | net | batch | samples/s | s/epoch | BP s/epoch | rule / BP (min–max) | spread "
            "| FA / explicit BP (min–max) |")
    lines = [f"Machine: {machine}\n", "BP: the project's backprop rule (autograd). Explicit BP: the same gradients by the "
             "explicit algebra FA uses (Wᵀ in place of B), the floor FA is held to; measured for FA rows only.\n",
             head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r['experiment']} | {r['method']} | {r['net']} | {r['batch_size']} | {r['samples_per_s']:.0f} "
                     f"| {r['epoch_seconds']:.2f} | {r['bp_epoch_seconds']:.2f} | {r['over_bp']:.2f} "
                     f"({r['over_bp_min']:.2f}–{r['over_bp_max']:.2f}) | {r['spread_pct']:.0f} % | "
                     + (f"{r['over_bp_explicit']:.2f} ({r['over_bp_explicit_min']:.2f}–{r['over_bp_explicit_max']:.2f}) |"
                        if r.get("over_bp_explicit") else "|"))
    return "\n".join(lines) + "\n"


def summary_numbers(rows: list[dict], machine: str, memory: dict) -> dict:
    """The results-file keys of a benchmark run: the worst FA/BP and DTP/BP ratios over the architectures."""
    fa = [r["over_bp"] for r in rows if r["rule"] == "feedback_alignment"]
    fax = [r["over_bp_explicit"] for r in rows if r.get("over_bp_explicit")]
    dtp = [r["over_bp"] for r in rows if r["rule"] == "difference_target_prop"]
    return {"machine": machine, "fa_over_bp": max(fa) if fa else None, "dtp_over_bp": max(dtp) if dtp else None,
            "fa_over_bp_explicit": max(fax) if fax else None,
            "rows": rows, **memory}


def update_results(path: Path, new: dict) -> None:
    """Merge ``new`` into the JSON results file at ``path`` (other keys, e.g. other benchmarks', are kept)."""
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps(old | new, indent=2))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--experiments", help="comma-separated (default: all)")
    ap.add_argument("--steps", type=int, default=200, help="minibatches per timed epoch")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--write", action="store_true", help="write benchmarks/results.{md,json}")
    ap.add_argument("--ensembles", action="store_true",
                    help="measure seeds20_over_seed1 instead (benchmarks/ensemble.py: 20 seeds as one ensemble vs one)")
    args = ap.parse_args(argv)
    if args.ensembles:
        sys.path.insert(0, str(HERE))
        import ensemble

        return ensemble.main(["--repeats", str(min(args.repeats, 3))] + (["--write"] if args.write else []))
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    device = resolve_device(args.device)
    names = args.experiments.split(",") if args.experiments else list(cfg["experiments"])
    rows = [r for n in names for r in bench_experiment(cfg, n, args.steps, args.repeats, device)]
    machine = (f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
               f"device {device}" + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""))
    memory = peak_memory_mb(device)  # peak_rss_mb, and cuda_peak_mb on a GPU
    md = to_markdown(rows, machine) + f"\nPeak RSS of this benchmark process: {memory['peak_rss_mb']:.0f} MB\n"
    print(md)
    if args.write and device.type == "cuda":  # CUDA numbers go to their own files; the CPU ones stay
        (HERE / "results_cuda.md").write_text("# Rule speed vs backprop, CUDA\n\nCommand: `python benchmarks/bench.py "
                                              + " ".join(sys.argv[1:]) + "`\n\n" + md)
        update_results(HERE / "results_cuda.json", summary_numbers(rows, machine, memory))
    elif args.write:
        old_md = (HERE / "results.md").read_text() if (HERE / "results.md").exists() else ""
        kept = old_md[old_md.index(ENSEMBLE_SECTION):] if ENSEMBLE_SECTION in old_md else ""  # ensemble.py's part
        (HERE / "results.md").write_text("# Rule speed vs backprop\n\nCommand: `python benchmarks/bench.py "
                                         + " ".join(sys.argv[1:]) + "`\n\n" + md + ("\n" + kept if kept else ""))
        update_results(HERE / "results.json", summary_numbers(rows, machine, memory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
