#!/usr/bin/env bash
# The GPU recipe of the structure controls (assets/models/shapes-sd-controls): one CUDA GPU, the four runs one after
# another, bf16 autocast, batch 256 (16x the CPU recipe's 16) and pinned step counts. UNRUN: no GPU was lent to the
# session that wrote it, so its times are not measured; the shipped weights come from scripts/train_structure_cpu.sh.
# The step counts follow the CPU recipe's samples seen x 8 (4096 scenes, 30-90 epochs); the learning rates are the
# CPU recipe's (the larger batch would tolerate more). On N GPUs, prefix each run with
# `accelerate launch --multi_gpu --num_processes N` and divide --batch by N (the batch is per process).
#   bash scripts/train_structure_gpu.sh [work folder] [output folder]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/structure-gpu}
OUT=${2:-$WORK/models}
train="python -m studio.train --work $WORK --data 16384 --batch 256 --warmup 100 --mixed-precision bf16 --checkpoint-every 250"
$train controlnet --control layout --steps 1200 --lr 4e-4 --out "$OUT/controlnet-layout"
$train controlnet --control outline --steps 1200 --lr 4e-4 --out "$OUT/controlnet-outline"
$train t2i-adapter --control outline --steps 1000 --lr 4e-4 --out "$OUT/t2i-adapter-outline"
$train ip-adapter --steps 1000 --lr 3e-4 --out "$OUT/ip-adapter"
