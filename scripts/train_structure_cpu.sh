#!/usr/bin/env bash
# The CPU recipe of the shipped structure controls (assets/models/shapes-sd-controls), pinned to finish on a 2-core
# machine shared with other work in about an hour (the layout resumes take about two more): the four runs side by side, one torch thread each (more threads
# per process only thrash when the cores are shared), batch 16, 200-220 steps, then the layout ControlNet resumed to 1800 and the outline one to 700 (below).
# Each run caches the rendered scenes, maps, latents and text embeddings in the work folder once (shared), checkpoints
# every 100 steps (rerun with --resume to continue) and writes its weights, studio.json, training.json and README.md
# card (with the IoU measured on 32 held-out scenes) into the output folder.
#   bash scripts/train_structure_cpu.sh [work folder] [output folder]
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/structure}
OUT=${2:-assets/models/shapes-sd-controls}
train="python -m studio.train --work $WORK --data 4096 --batch 16 --warmup 30 --threads 1 --checkpoint-every 100"
mkdir -p "$WORK"
# the data cache first, by one process (a 0-step run builds it and writes nothing else worth keeping)
[ -f "$WORK/data-4096-seed0.safetensors" ] || $train controlnet --control layout --steps 0 --eval 0 --out "$WORK/cache-only"
for run in "controlnet --control layout --steps 220 --lr 4e-4 --out $OUT/controlnet-layout" \
           "controlnet --control outline --steps 220 --lr 4e-4 --out $OUT/controlnet-outline" \
           "t2i-adapter --control outline --steps 200 --lr 4e-4 --out $OUT/t2i-adapter-outline" \
           "ip-adapter --steps 200 --lr 3e-4 --out $OUT/ip-adapter"; do
  $train $run > "$WORK/$(basename "${run##* }").log" 2>&1 &
done
wait
# The layout ControlNet had not left its zero-convolution start by step 220 (IoU as without control): it resumes from
# its step-220 checkpoint at a higher peak rate (the base UNet itself trained at 1e-3), then twice more (held-out IoU
# 0.787 at 480 steps, 0.838 at 1400, 0.843 at 1800: its card). The outline ControlNet resumes the same way, from its
# step-240 checkpoint to 700 (held-out IoU 0.764 at 220 steps, 0.791 at 700: its card).
for steps in 480 1400 1800; do
  $train controlnet --control layout --steps $steps --lr 1e-3 --resume --checkpoint-every 40 --out "$OUT/controlnet-layout" \
    > "$WORK/controlnet-layout-resume-$steps.log" 2>&1
done
$train controlnet --control outline --steps 700 --lr 1e-3 --resume --checkpoint-every 40 --out "$OUT/controlnet-outline" \
  > "$WORK/controlnet-outline-resume-700.log" 2>&1
