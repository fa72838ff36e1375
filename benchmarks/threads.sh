#!/usr/bin/env bash
# CPU threads per training job on Lillicrap's MNIST net (784-1000-10, minibatches of 10, paper settings): real
# `biocredit train` runs of a few epochs with config `threads` = 1, 2, ..., their per-epoch training and evaluation
# seconds (medians over epochs 1..N, from metrics.csv). Run it on an otherwise idle machine.
#   bash benchmarks/threads.sh [EPOCHS] [THREADS...]      e.g. bash benchmarks/threads.sh 4 1 2
# Appends to benchmarks/threads_lillicrap_mnist.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-4}
threads=(1 2)
if [ $# -gt 1 ]; then threads=("${@:2}"); fi
out=benchmarks/threads_lillicrap_mnist.txt
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
{
  echo "# $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD), $(nproc) cores, ${epochs} epochs per run"
  for method in fa sparse_fa; do
    for t in "${threads[@]}"; do
      WANDB_MODE=disabled python -m biocredit train --experiment lillicrap_mnist --method "$method" --seed 0 \
        --scale paper --set "experiments.lillicrap_mnist.scales.paper.epochs=$epochs" --set "threads=$t" \
        --out "$tmp/$method-$t" > "$tmp/log" 2>&1
      python - "$tmp/$method-$t/metrics.csv" "$method" "$t" <<'PY'
import sys, statistics, csv
rows = [r for r in csv.DictReader(open(sys.argv[1])) if int(r["epoch"]) > 0]
tr = statistics.median(float(r["epoch_seconds"]) for r in rows)
ev = statistics.median(float(r["eval_seconds"]) for r in rows)
print(f"{sys.argv[2]:<10} threads={sys.argv[3]}  training {tr:.2f} s/epoch  evaluation {ev:.2f} s  total {tr + ev:.2f} s")
PY
    done
  done
} | tee -a "$out"
