"""Paper-scale wall time on one GPU, extrapolated from real training jobs measured there (issue #6).

``benchmarks/cuda.sh`` (steps 3 and 4) runs each method of each experiment at paper settings for a few
epochs on the GPU (W&B off; the synthetic tasks as one 20-seed ensemble for one pass) and several FA jobs
at once. This script

1. ``--collect DIR ...``: reads those outputs (each DIR an unpacked ``$OUT`` of cuda.sh: ``log.txt`` and
   ``jobs/``; a later DIR's job replaces an earlier one's) into ``benchmarks/cuda/jobs.json``: per job the
   whole-process wall time, the training seconds per epoch, seconds per evaluation, peak memory, and, where
   a CPU run of the same experiment, method and seed exists (``--cpu-runs``), the CPU's test error at the
   same epoch beside the GPU's;
2. by default: extrapolates each experiment's paper scale (config.yaml: epochs, seeds, methods,
   eval_every_epochs) from the measured jobs: one run = the measured job + the missing epochs at the
   measured epoch time + the missing evaluations at the measured evaluation time. ``--write`` adds the
   table to ``benchmarks/results_cuda.md`` and the hours to ``benchmarks/results_cuda.json``.

    python benchmarks/paper_estimate.py --collect /work/.device/1 /work/.device/2 /work/.device/3 \
        --cpu-runs results/paper/runs benchmarks/cuda/cpu_twins
    python benchmarks/paper_estimate.py --write
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
JOBS = HERE / "cuda" / "jobs.json"
SECTION = "## Paper scale on one GPU (estimate)"
JOB_LINE = re.compile(r"^(\S+) (\S+) (\d+) ms \(whole job\)$")
PACK_LINE = re.compile(r"^packed (\d+) jobs: (\d+) ms$")


def _rows(path: Path) -> list[dict]:
    with open(path) as f:
        return list(csv.DictReader(f))


def _num(row: dict, key: str) -> float | None:
    v = row.get(key)
    return float(v) if v not in (None, "") else None


def _mean(values) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v)]
    return statistics.mean(vals) if vals else 0.0


def _cpu_twin(cpu_dirs: list[Path], e: str, m: str, seed: int, epoch: int) -> tuple[float, str] | None:
    """Test error of a CPU run of the same experiment, method and seed at ``epoch``, and where it came from."""
    for d in cpu_dirs:
        for p in (d / e / m / f"seed{seed}" / "metrics.csv", d / f"{e}-{m}" / "metrics.csv"):
            if p.exists():
                s = json.loads((p.parent / "summary.json").read_text()) if (p.parent / "summary.json").exists() else {}
                if s and not str(s.get("provenance", {}).get("device", "cpu")).startswith("cpu"):
                    continue
                hit = [r for r in _rows(p) if float(r["epoch"]) == epoch]
                if hit:
                    return float(hit[0]["test_error"]), str(p)
    return None


def collect(dirs: list[Path], cpu_dirs: list[Path]) -> dict:
    jobs: dict[str, dict] = {}
    packing: dict[int, float] = {}
    for d in dirs:
        whole = {}
        for line in (d / "log.txt").read_text().splitlines():
            if mj := JOB_LINE.match(line.strip()):
                whole[f"{mj[1]}-{mj[2]}"] = int(mj[3]) / 1000
            elif mp := PACK_LINE.match(line.strip()):
                k = int(mp[1])
                names = [f"packed{k}-fa-seed{s}" for s in range(1, k + 1)]
                if all((d / "jobs" / n / "summary.json").exists() for n in names):  # every job finished
                    packing[k] = int(mp[2]) / 1000
        for name, seconds in whole.items():
            folder = d / "jobs" / name
            summaries = sorted(folder.rglob("summary.json"), key=lambda p: len(str(p)))
            if not summaries:
                continue
            first = summaries[0] if (folder / "summary.json").exists() else next(
                p for p in summaries if p.parent.name == "seed0")
            s = json.loads(first.read_text())
            rows = _rows(first.parent / "metrics.csv")
            later = [r for r in rows if float(r["epoch"]) > 0] or rows
            job = {
                "experiment": s["experiment"], "method": s["method"], "seeds": len(summaries),
                "epochs": s["epochs_done"], "job_seconds": seconds, "train_seconds": s["wall_seconds"],
                "epoch_seconds": _mean(_num(r, "epoch_seconds") for r in later),
                "eval_seconds": _mean(_num(r, "eval_seconds") for r in later),
                "probe_seconds": _num(rows[-1], "probe_seconds") or 0.0,
                "memory": {k: max(json.loads(p.read_text())["memory"].get(k, 0) for p in summaries)
                           for k in s["memory"]},
                "device": s["provenance"]["device"], "torch": s["provenance"].get("torch"),
                "test_error_seed0": float(rows[-1]["test_error"]), "source": str(d),
            }
            twin = _cpu_twin(cpu_dirs, s["experiment"], s["method"], 0, job["epochs"])
            if twin:
                job["cpu_test_error_seed0"], job["cpu_run"] = twin
            jobs[name] = job
    return {"jobs": jobs, "packing_seconds": {str(k): v for k, v in sorted(packing.items())}}


def estimate(cfg: dict, measured: dict) -> tuple[list[dict], dict]:
    jobs = measured["jobs"]
    rows = []
    for e, exp in cfg["experiments"].items():
        paper = exp["scales"]["paper"]
        E, S, k = paper["epochs"], paper["seeds"], paper.get("eval_every_epochs", 1)
        synthetic = str(exp["dataset"]).startswith("synthetic")
        per_method, proxied = {}, []
        for m in exp["methods"]:
            j = jobs.get(f"{e}-{m}")
            if j is None:  # a proxy: the mean of the measured methods of the same experiment
                same = [v for key, v in jobs.items() if v["experiment"] == e]
                if not same:
                    continue
                proxied.append(m)
                basis = "/".join(v["method"] for v in same)
                j = {key: statistics.mean(v[key] for v in same)
                     for key in ("job_seconds", "train_seconds", "epoch_seconds", "eval_seconds", "probe_seconds")}
                j["epochs"] = same[0]["epochs"]
            if synthetic:  # one ensemble job per method trains all seeds; measured for one pass
                per_method[m] = j["job_seconds"] + (E - j["epochs"]) * j["train_seconds"] / j["epochs"]
            else:
                evals_missing = (math.ceil(E / k) + 1) - (j["epochs"] + 1)
                per_method[m] = (j["job_seconds"] + (E - j["epochs"]) * j["epoch_seconds"]
                                 + evals_missing * j["eval_seconds"])
        notes = [f"{', '.join(proxied)}: not measured, taken as the mean of {basis}"] if proxied else []
        if not per_method:
            rows.append({"experiment": e, "runs": None, "hours": None,
                         "note": "no job measured on the GPU (dataset not on the device machine)"})
            continue
        runs = len(per_method) * (1 if synthetic else S)
        total = sum(per_method.values()) * (1 if synthetic else S)
        rows.append({"experiment": e, "epochs": E, "seeds": S, "eval_every": k, "runs": runs,
                     "per_run_minutes": {m: v / 60 for m, v in per_method.items()},
                     "hours": total / 3600, "note": "; ".join(notes)})
    pack = measured.get("packing_seconds", {})
    info = {}
    if "1" in pack and pack:
        kmax = max(pack, key=int)
        info = {"packed_jobs": int(kmax), "packing_throughput": int(kmax) * pack["1"] / pack[kmax]}
    return rows, info


def to_markdown(rows: list[dict], info: dict, measured: dict) -> str:
    jobs = measured["jobs"]
    dev = next(iter(jobs.values()))["device"] if jobs else "?"
    lines = [SECTION, "",
             f"Extrapolated from training jobs at paper settings measured on {dev} (benchmarks/cuda.sh, "
             "`benchmarks/cuda/jobs.json`): one run = the measured job (process start, data, a few epochs) + "
             "the remaining epochs at the measured seconds per epoch + the remaining evaluations. One job at a "
             "time on the GPU unless said.", "",
             "| experiment | epochs × seeds | runs | per run (min) | one job at a time (h) |", "|---|---|---|---|---|"]
    total = 0.0
    for r in rows:
        if r["runs"] is None:
            lines.append(f"| {r['experiment']} | | | {r['note']} | |")
            continue
        per = ", ".join(f"{m} {v:.1f}" for m, v in r["per_run_minutes"].items())
        note = f" ({r['note']})" if r["note"] else ""
        lines.append(f"| {r['experiment']} | {r['epochs']} × {r['seeds']} | {r['runs']} | {per}{note} | {r['hours']:.2f} |")
        total += r["hours"]
    lines += ["", f"Total, one job at a time: **{total:.1f} h** (CIFAR-10 excluded when not measured)."]
    if info:
        lm = next((r for r in rows if r["experiment"] == "lillicrap_mnist" and r["runs"]), None)
        lines.append(
            f"Jobs share the GPU well: {info['packed_jobs']} one-epoch lillicrap_mnist FA jobs at once finished "
            f"{info['packing_throughput']:.1f}× as many jobs per second as one alone (whole processes; batch 10 "
            "leaves the GPU mostly idle)" + (f", which would bring lillicrap_mnist from {lm['hours']:.1f} h to "
                                             f"~{lm['hours'] / info['packing_throughput']:.1f} h "
                                             f"(`snakemake --resources gpu={info['packed_jobs']}`)" if lm else "") + ".")
    twins = [j for j in jobs.values() if "cpu_test_error_seed0" in j]
    if twins:
        lines += ["", "GPU vs CPU, same seed (0), same epoch: test error", "",
                  "| job | epoch | GPU | CPU |", "|---|---|---|---|"]
        for j in twins:
            lines.append(f"| {j['experiment']}/{j['method']} | {j['epochs']} | {j['test_error_seed0']:.4g} "
                         f"| {j['cpu_test_error_seed0']:.4g} |")
    mem = [(j["memory"].get("cuda_peak_mb", 0), j["memory"].get("peak_rss_mb", 0), n) for n, j in jobs.items()]
    if mem:
        c, r, n = max(mem)
        lines += ["", f"Peak memory of a training job on the GPU: at most {c:.0f} MB of CUDA memory ({n}; RSS "
                      f"{r:.0f} MB); RSS of any job at most {max(x[1] for x in mem):.0f} MB."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--collect", nargs="+", type=Path, help="unpacked $OUT folders of benchmarks/cuda.sh, oldest first")
    ap.add_argument("--cpu-runs", nargs="*", type=Path, default=[Path("results/paper/runs")])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    if args.collect:
        JOBS.parent.mkdir(parents=True, exist_ok=True)
        JOBS.write_text(json.dumps(collect(args.collect, args.cpu_runs), indent=2) + "\n")
        print(f"wrote {JOBS}")
    from biocredit.config import load_config  # after --collect: that step needs no config

    cfg = load_config(args.config, rules=False)
    measured = json.loads(JOBS.read_text())
    rows, info = estimate(cfg, measured)
    md = to_markdown(rows, info, measured)
    print(md)
    if args.write:
        path = HERE / "results_cuda.md"
        old = path.read_text() if path.exists() else ""
        old = old[:old.index(SECTION)].rstrip() + "\n" if SECTION in old else old
        path.write_text(old + "\n" + md)
        res = HERE / "results_cuda.json"
        data = json.loads(res.read_text()) if res.exists() else {}
        data["paper_estimate"] = {"hours": {r["experiment"]: r["hours"] for r in rows},
                                  "total_hours_one_at_a_time": sum(r["hours"] or 0 for r in rows), **info}
        res.write_text(json.dumps(data, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
