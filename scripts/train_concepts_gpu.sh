#!/usr/bin/env bash
# The personalization recipes on one CUDA GPU, steps pinned (not a time budget): the CPU recipe's settings
# (studio.personalize.spec.RECIPES) at 4x the steps and batch 16, bf16 autocast; each run's folder as in
# scripts/train_concepts_cpu.sh. Not yet run: no GPU was lent to the session that wrote it. Several GPUs: prefix a command with `accelerate launch --num_processes N -m`.
#   bash scripts/train_concepts_gpu.sh [output folder]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/concepts-gpu}
train="python -m studio.train --concept star --class-word circle --render 8 --batch-size 16 --mixed-precision bf16 --sample-every 100"
mkdir -p "$OUT"
$train textual-inversion --steps 1200 --out "$OUT/star-textual-inversion" > "$OUT/star-textual-inversion.log" 2>&1
$train lora --steps 2000 --out "$OUT/star-lora" > "$OUT/star-lora.log" 2>&1
$train dreambooth --steps 600 --out "$OUT/star-dreambooth" > "$OUT/star-dreambooth.log" 2>&1
$train custom-diffusion --steps 800 --out "$OUT/star-custom-diffusion" > "$OUT/star-custom-diffusion.log" 2>&1
