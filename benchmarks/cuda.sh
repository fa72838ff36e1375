#!/usr/bin/env bash
# Issue #6's CUDA measurements, in one command on a GPU machine (each step writes as it goes, so a
# run cut short still leaves what finished):
#   1. every rule vs backprop on every paper architecture (bench.py -> results_cuda.{md,json});
#   2. our FA vs BioTorch's FA on 784-1000-10 (biotorch_fa.py -> biotorch_fa_cuda.md, results_cuda.json);
#   3. real training jobs at paper settings for a few epochs (EPOCHS) on the GPU, W&B off, to time one
#      epoch with its evaluation and read the job's peak memory (summary.json "memory": RSS and CUDA peak),
#      from which benchmarks/paper_estimate.py extrapolates the paper-scale wall time on one GPU;
#   4. several such jobs at once on the one GPU (does packing small-batch jobs raise the throughput?);
#   5. Lillicrap's MNIST net with its seeds as one stacked ensemble (ENSEMBLE seeds, EPOCHS epochs; the
#      workflow's `ensembles=all`) against one seed alone: is 20 seeds' epoch near one seed's?
#
#   BIOCREDIT_DATA_MIRROR=../shared/data bash benchmarks/cuda.sh            # results under $OUT (default benchmarks/cuda_out)
#   DEVICE=cpu STEPS=5 REPEATS=1 EPOCHS=1 SUBSET=500 OUT=/tmp/cuda_dry bash benchmarks/cuda.sh   # plumbing check on a CPU
#
# Needs: torch with CUDA, this repository's src/ (no install), jsonschema and pyyaml; BioTorch for step 2
# (skipped when it cannot be imported). CIFAR-10 jobs need the dataset in the mirror (skipped otherwise).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-benchmarks/cuda_out}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-50}
REPEATS=${REPEATS:-5}
EPOCHS=${EPOCHS:-2}
STAGES=${STAGES:-1 2 3 4}     # which of the steps above to run
ONLY=${ONLY:-.}               # step 3: only the jobs whose "experiment-method" matches this regex
PACK=${PACK:-4}               # step 4: how many jobs at once (a list: "4 8 16")
ENSEMBLE=${ENSEMBLE:-20}      # step 5: seeds in one ensemble job
PY=${PY:-python3}
mkdir -p "$OUT" "$OUT/jobs"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 WANDB_MODE=disabled
LOG="$OUT/log.txt"
stage() { [[ " $STAGES " == *" $1 "* ]]; }
say() { echo "== $(date +%H:%M:%S) $*" | tee -a "$LOG"; }

say "device $DEVICE"
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv 2>/dev/null || true
  "$PY" -c "import torch, platform; print('torch', torch.__version__, 'python', platform.python_version(), 'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
  nproc; } 2>&1 | tee -a "$LOG"

if stage 1; then
say "1. rules vs backprop"
"$PY" benchmarks/bench.py --device "$DEVICE" --steps "$STEPS" --repeats "$REPEATS" --threads 1 --write 2>&1 | tee -a "$LOG"
cp benchmarks/results_cuda.md benchmarks/results_cuda.json "$OUT/" 2>/dev/null
fi

if stage 2; then
say "2. FA vs BioTorch"
if "$PY" -c "import biotorch" 2>/dev/null; then
  "$PY" benchmarks/biotorch_fa.py --device "$DEVICE" --threads 1 --steps $((STEPS * 20)) --repeats "$REPEATS" --write 2>&1 | tee -a "$LOG"
  cp benchmarks/biotorch_fa_cuda.md benchmarks/results_cuda.json "$OUT/" 2>/dev/null
else
  say "biotorch not importable: skipped"
fi
fi

job() {  # experiment method seed-spec epochs [extra --set ...]
  local e=$1 m=$2 seeds=$3 ep=$4; shift 4
  [[ "$e-$m" =~ $ONLY ]] || return 0
  local where=(--out "$OUT/jobs/$e-$m")  # --seeds writes each seed's default folder under results_dir
  [[ $seeds == --seeds* ]] && where=(--set "results_dir=$OUT/jobs/$e-$m")
  local t0=$(date +%s%N)
  [ -n "${SUBSET:-}" ] && set -- "$@" --set "experiments.$e.scales.paper.train_subset=$SUBSET" \
    --set "experiments.$e.scales.paper.test_subset=$SUBSET"
  "$PY" -m biocredit train --scale paper --experiment "$e" --method "$m" $seeds "${where[@]}" \
    --set device="$DEVICE" --set "experiments.$e.scales.paper.epochs=$ep" "$@" >>"$LOG" 2>&1 \
    && echo "$e $m $(( ($(date +%s%N) - t0) / 1000000 )) ms (whole job)" | tee -a "$LOG" \
    || say "FAILED: $e $m (see log.txt)"
}

if stage 3 || stage 4 || stage 5; then  # the training jobs read prepared data (as after the Snakemake data rule)
  "$PY" -m biocredit prepare-data mnist 2>&1 | tee -a "$LOG"
  [ -e "${BIOCREDIT_DATA_MIRROR:-/nonexistent}/cifar-10-batches-py/data_batch_1" ] && "$PY" -m biocredit prepare-data cifar10 2>&1 | tee -a "$LOG"
fi

if stage 3; then
say "3. paper-setting jobs, $EPOCHS epochs each (synthetic tasks: all seeds as one ensemble, 1 pass)"
for m in fa bp shallow sparse_fa; do job lillicrap_mnist $m "--seed 0" "$EPOCHS"; done
for m in dtp bp tp; do job lee_dtp_mnist $m "--seed 0" "$EPOCHS"; done
for m in dtp bp_sign bp_continuous; do
  job lee_dtp_discrete $m "--seed 0" "$EPOCHS" --set experiments.lee_dtp_discrete.scales.paper.eval_every_epochs=1; done
for m in dtp bp_st; do
  job lee_dtp_stochastic $m "--seed 0" "$EPOCHS" --set experiments.lee_dtp_stochastic.scales.paper.eval_every_epochs=1; done
for m in dtp bp shallow; do job lee_dtp_autoencoder $m "--seed 0" "$EPOCHS"; done
for m in fa4 bp4 fa3 bp3 shallow4; do job lillicrap_teacher $m "--seeds 0-19" 1; done
for m in fa bp node_perturbation shallow; do job lillicrap_linear $m "--seeds 0-19" 1; done
for m in w0_0001 w0_1 w0_25; do job lillicrap_pinv $m "--seeds 0-19" 1; done
if [ -e "${BIOCREDIT_DATA_MIRROR:-/nonexistent}/cifar-10-batches-py/data_batch_1" ]; then
  for m in dtp bp; do job lee_dtp_cifar10 $m "--seed 0" "$EPOCHS"; done
else
  say "no CIFAR-10 in the mirror: CIFAR-10 jobs skipped (bench.py's epoch times stand in)"
fi
fi

if stage 4; then
for k in $PACK; do
  say "4. $k lillicrap_mnist FA jobs at once, 1 epoch each"
  t0=$(date +%s%N)
  for s in $(seq 1 "$k"); do
    "$PY" -m biocredit train --scale paper --experiment lillicrap_mnist --method fa --seed "$s" \
      --out "$OUT/jobs/packed$k-fa-seed$s" --set device="$DEVICE" --set experiments.lillicrap_mnist.scales.paper.epochs=1 \
      >>"$LOG" 2>&1 || echo "FAILED: packed job seed $s" | tee -a "$LOG" &
  done
  wait
  echo "packed $k jobs: $(( ($(date +%s%N) - t0) / 1000000 )) ms" | tee -a "$LOG"
done
fi

if stage 5; then
  say "5. lillicrap_mnist: $ENSEMBLE seeds as one ensemble vs one seed, $EPOCHS epochs each"
  for m in fa bp; do
    job lillicrap_mnist $m "--seed 0" "$EPOCHS"
    job lillicrap_mnist $m "--seeds 0-$((ENSEMBLE - 1))" "$EPOCHS"
  done
fi

say "done"
# only the small files of each job come back (summary.json, metrics.csv)
tar czf "$OUT/jobs.tgz" -C "$OUT" --exclude='*.pt' --exclude='wandb' jobs && rm -rf "$OUT/jobs"
