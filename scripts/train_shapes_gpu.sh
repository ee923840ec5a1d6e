#!/usr/bin/env bash
# Retrain the embedded shapes model on one CUDA GPU in about 12 minutes: every stage has a time budget
# (--minutes), and logs the step count it chose (`calibrated_total` in <work>/<stage>.log.jsonl), so a rerun
# with --<stage>-steps repeats it. Then measure it: `python -m studio.shapes.card --model <out>`.
#   bash scripts/train_shapes_gpu.sh [work folder] [model folder]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/shapes-gpu}
OUT=${2:-$WORK/model}
train="python -m studio.shapes.train --device cuda --work $WORK --out $OUT"
$train --stage data --images 51200
$train --stage vae --vae-steps 50000 --vae-batch 64 --vae-crop 128 --minutes vae=3
$train --stage latents
# the decoder and the classifier need only the latents: they share the GPU with the UNet
$train --stage decoder --decoder-steps 50000 --decoder-batch 32 --vae-crop 128 --minutes decoder=2 &
$train --stage classifier --classifier-steps 50000 --classifier-batch 256 --minutes classifier=1 &
$train --stage unet --unet-steps 200000 --unet-batch 512 --minutes unet=6
wait
$train --stage export
