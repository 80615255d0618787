#!/usr/bin/env bash
# One seed of the MNIST-LT DDPM-vs-CBDM comparison (docs/results.md).
# Usage: experiments/mnist-lt/run.sh SEED [OUT_DIR] [MNIST_ROOT]
# Steps already done (a finished run, a complete sample folder, a metrics.json) are skipped,
# so the script can be re-run after an interruption.
set -euo pipefail
seed=${1:?usage: run.sh SEED [OUT_DIR] [MNIST_ROOT]}
out=${2:-runs/mnist-lt}
root=${3:-../shared/data/mnist}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
clf="$out/classifier-mnist.safetensors"

if [ ! -f "$clf" ]; then
  cbdm eval train-classifier --dataset mnist --data-root "$root" --epochs 3 --seed 0 --out "$clf"
fi
for method in ddpm cbdm; do
  run="$out/$method-s$seed"
  extra=()
  [ "$method" = ddpm ] && extra=(--method ddpm)
  if [ ! -f "$run/checkpoints/ckpt-00003000.safetensors" ]; then
    if [ -d "$run/checkpoints" ]; then
      cbdm train --resume --out "$run"
    else
      cbdm train --config "$here/config.yaml" "${extra[@]}" --data-root "$root" --seed "$seed" --out "$run"
    fi
  fi
  cbdm sample "$run" --num 2000 --steps 50 --guidance 1.0 --classes balanced --seed 1 --out "$run-samples"
  if [ ! -f "$run-samples/metrics.json" ]; then
    cbdm eval "$run-samples" --dataset mnist-lt --data-root "$root" \
      --extractor classifier --classifier "$clf"
  fi
done
