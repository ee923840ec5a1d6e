"""Write the embedded model's card: `python -m studio.shapes.card [--model DIR]`.

Runs the evaluation, draws a grid of samples, and writes README.md + samples.png + evaluation.json
into the model folder, so the figures on the card are always the ones measured on the files beside it.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from PIL import Image

from studio.shapes.evaluate import DEFAULT_MODEL, EVAL_POSITIONS, decode, evaluate, generate, load_shapes_pipeline, table
from studio.shapes.render import HELD_OUT
from studio.shapes.vocabulary import COLOURS, POSITIONS, RESERVED_SHAPES, SHAPES, SIZES, vocabulary

SAMPLE_PROMPTS = (
    "a big red circle on a blue background",
    "a big yellow square on the left on a purple background",
    "a big green triangle on the top right on a black background",
    "a small white circle on the bottom on an orange background",
    "a big blue square in the center on a yellow background",
    "a big purple triangle on the left on a white background",
    "a small black circle on the top left and a big orange square on the right on a green background",
    "a big orange circle on the top and a small red triangle on the bottom on a white background",
    "a circle",
    "a red square",
    "a triangle on a green background",
    "a big black square on the bottom right on a red background",
)


def sample_grid(model: Path, seeds: tuple[int, ...] = (0, 1, 2)) -> Image.Image:
    pipe = load_shapes_pipeline(model)
    rows = []
    for seed in seeds:
        latents = generate(pipe, list(SAMPLE_PROMPTS), [seed] * len(SAMPLE_PROMPTS), steps=25, guidance=5.0)
        rows.append(np.concatenate(list(decode(pipe, latents)), axis=1))
    return Image.fromarray(np.concatenate(rows, axis=0))


def card_text(report: dict) -> str:
    prompts = "\n".join(f"{i + 1}. `{p}`" for i, p in enumerate(SAMPLE_PROMPTS))
    held_out = "\n".join(f"- {c} {s} on a {b} background" for c, s, b in HELD_OUT)
    return f"""---
license: mit
library_name: diffusers
pipeline_tag: text-to-image
---
# shapes-sd: the embedded model of Diffusion Control Studio

A tiny Stable-Diffusion-format text-to-image model (VAE, CLIP text encoder, word-level tokenizer,
UNet with cross-attention at 16x16 and 8x8, DDIM scheduler) trained from scratch on a procedurally
drawn world of coloured shapes, so that the studio, its tests and its benchmarks run on a CPU in
seconds with real cross-attention between words and image regions. It loads with stock diffusers:

```python
from diffusers import StableDiffusionPipeline
pipe = StableDiffusionPipeline.from_pretrained("assets/models/shapes-sd")
image = pipe("a big red circle on a blue background", num_inference_steps=25, guidance_scale=5).images[0]
```

128x128 RGB images, 16x16x4 latents. **v-prediction with zero terminal SNR** (rescaled betas,
trailing timesteps; Lin et al. 2023): with SD's plain schedule the background colour followed the
initial noise instead of the prompt. `classifier/` holds the noisy-latent classifier
(`studio.shapes.classifier`): per-cell object colour and shape, and background colour, at any timestep.

![samples](samples.png)

Rows are seeds 0, 1, 2 (DDIM, 25 steps, guidance 5); columns are these prompts:

{prompts}

## Vocabulary and grammar
Words ({len(vocabulary())} tokens, lower-cased, punctuation ignored): sizes {', '.join(SIZES)}; colours
{', '.join(COLOURS)}; shapes {', '.join(SHAPES)} (and {', '.join(RESERVED_SHAPES)}, reserved: in the
vocabulary but never drawn, for personalization); positions {', '.join(POSITIONS)}; and a, an, and, on,
in, the, background. Any other word is unknown: the studio refuses it by name rather than encode padding.

Captions follow one grammar:
`a {{size}} {{colour}} {{shape}} {{on the {{position}} | in the center}} [and a ...] on a {{colour}} background`.
Training drops each size, colour, position and background phrase with probability 0.2 (so "a circle"
samples the rest) and uses the empty caption 10% of the time (the null condition of guidance).
1-2 objects per image, object colour never equal to the background colour.

## Held-out combinations
These (object colour, shape, background) triples never appear in training; the evaluation asks for
each of them, one big object, at positions {', '.join(EVAL_POSITIONS)} ({report['settings']['prompts']} prompts):

{held_out}

## Measured
Held-out prompts through stock `StableDiffusionPipeline`, {report['settings']['scheduler']}
{report['settings']['steps']} steps, guidance {report['settings']['guidance']}, judged by a pixel check
(palette colours and shape templates, `studio.shapes.judge.judge_pixels`) and by the classifier at t=0:

{table(report)}

## Retrain
`bash scripts/train_shapes_gpu.sh` is this model's recipe: one CUDA GPU, about 7.5 minutes on an NVIDIA
H200 (51,200 renders; VAE 1,860 steps at batch 64; UNet 1,469 steps at batch 512 beside the decoder
fine-tune and the classifier). Then `python -m studio.shapes.card` re-measures and rewrites this card.
Training is seeded and resumable (re-running continues from the checkpoints in its work folder); stages
and their options are in `python -m studio.shapes.train --help`. Its defaults are a 2-core CPU recipe
(about 100 minutes) whose model ignored position words (8%) with a 24.9 dB VAE: small batches did not
teach positions.
"""


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    args = p.parse_args(argv)
    report = evaluate(args.model)
    (args.model / "evaluation.json").write_text(json.dumps(report, indent=1))
    sample_grid(args.model).save(args.model / "samples.png")
    (args.model / "README.md").write_text(card_text(report))
    print(table(report))


if __name__ == "__main__":
    main()
