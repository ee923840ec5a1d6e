#!/usr/bin/env bash
# The CPU recipe of each personalization method on the embedded shapes model (studio.personalize.spec.RECIPES, the
# defaults of `studio train <method>` and of the Personalize tab), teaching it the reserved star (and, for Custom
# Diffusion, the heart jointly) from 8 rendered pictures. One torch thread per run: on a 2-core machine shared with
# other work more threads only thrash. Each run writes its concept files, concept.json, samples/ and state/ (rerun a
# command with --resume to continue) into its folder. What the recipes reached here (seconds, judged-star rates):
# the docstring of studio/personalize/spec.py; bench/personalize.py measures every method side by side.
#   bash scripts/train_concepts_cpu.sh [output folder]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/concepts}
train="python -m studio.train --concept star --class-word circle --render 8 --threads 1 --sample-every 100"
mkdir -p "$OUT"
for method in textual-inversion lora dreambooth custom-diffusion; do
  $train "$method" --out "$OUT/star-$method" > "$OUT/star-$method.log" 2>&1
done
