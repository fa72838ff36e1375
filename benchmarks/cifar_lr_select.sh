#!/usr/bin/env bash
# Learning-rate check for Lee et al.'s CIFAR-10 net (config.yaml lee_dtp_cifar10), read on VALIDATION images only.
#
# Why: at paper settings DTP stalls after 2 epochs (test error 63.8 %, paper 49.63 % recalled), with the first
# layers' updates nearly orthogonal to BP's (angle_dW_1 ~86 deg). The forward learning rate lr_f = 1e-3 had been
# picked after only 2 epochs on 5k images, and lr_inverse came unchanged from the MNIST script.
#
# What: the real training job (`biocredit train`, quick scale = the full 40k training images, 10k validation,
# the same net, init, optimiser and schedule as paper scale) for EPOCHS epochs, seed 100 (a selection seed, not
# one of the evaluation seeds 0-2), per (method, lr, lr_inverse) below; prints the validation error per epoch.
# The test error is logged by the job but is NOT read by the selection rule: the lowest validation error at
# the last epoch wins. Results: benchmarks/cifar_lr_select.txt
#
#   BIOCREDIT_DATA_MIRROR=../shared/data bash benchmarks/cifar_lr_select.sh "dtp:1e-3:5.01149118237e-3 dtp:3e-4:5.01149118237e-3"
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIGS=${1:?give a list of method:lr:lr_inverse}
EPOCHS=${EPOCHS:-10}
SCRATCH=${SCRATCH:-/tmp/cifar_lr_select}
PY=${PY:-python}
export WANDB_MODE=disabled
for c in $CONFIGS; do
  IFS=: read -r m lr lri <<<"$c"
  out="$SCRATCH/$m-lr$lr-inv$lri"
  extra=()
  [ "$m" = dtp ] && extra=(--set "experiments.lee_dtp_cifar10.methods.dtp.params.lr_inverse=$lri")
  "$PY" -m biocredit train --scale quick --experiment lee_dtp_cifar10 --method "$m" --seed 100 --out "$out" \
    --set experiments.lee_dtp_cifar10.scales.quick.epochs="$EPOCHS" \
    --set "experiments.lee_dtp_cifar10.methods.$m.train.lr=$lr" "${extra[@]}" >"$out.log" 2>&1
  "$PY" - "$out/metrics.csv" "$m" "$lr" "$lri" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
v = " ".join(f"{float(r['valid_error']):.1f}" for r in rows[1:])
print(f"{sys.argv[2]} lr={sys.argv[3]} lr_inverse={sys.argv[4]}  valid_error per epoch: {v}  "
      f"(train_error last {float(rows[-1]['train_error']):.1f})")
EOF
done
