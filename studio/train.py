"""Train a structure control or a personalization for the embedded model: `studio train controlnet ...`.

    python -m studio.train controlnet --control layout|outline
    python -m studio.train t2i-adapter --control outline
    python -m studio.train ip-adapter
    python -m studio.train textual-inversion|lora|dreambooth|custom-diffusion --concept star --class-word circle \
        --render 8 --out runs/concepts/star-ti      (or --images DIR of 3-10 pictures; see `... lora --help`)

The same module is what `accelerate launch --num_processes N -m studio.train controlnet ...` runs: HF accelerate
spreads the batches over N processes (GPUs, or CPU processes with --cpu), with mixed precision, gradient
accumulation, checkpoints in --work (`--resume` continues from the latest) and a progress bar on the main process.
The recipes: scripts/train_structure_cpu.sh (this 2-core machine) and scripts/train_structure_gpu.sh.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from studio.models import EMBEDDED_MODEL_DIR
from studio.personalize.spec import LORA_LAYERS
from studio.personalize.spec import METHODS as PERSONALIZE_METHODS
from studio.personalize.training import __doc__ as training_doc
from studio.structure.maps import CONTROL_KINDS
from studio.structure.training import METHODS, ChannelDropout, TrainConfig, train

DEFAULTS = ChannelDropout()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="studio train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("--control", choices=CONTROL_KINDS, default="layout", help="the map the control reads")
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps")
    parser.add_argument("--batch", type=int, default=32, help="per process, per accumulation step")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=50, help="linear warm-up steps, then cosine to 10%% of the peak")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--work", type=Path, default=Path("runs/structure"), help="data cache and checkpoints")
    parser.add_argument("--out", type=Path, help="where the weights and card go (default: --work/<method>-<control>/model)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --work")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="optimiser steps between checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", type=Path, default=EMBEDDED_MODEL_DIR, help="the frozen base model's diffusers folder")
    parser.add_argument("--data", type=int, default=4096, help="training scenes rendered and cached")
    parser.add_argument("--eval", type=int, default=32, dest="eval_scenes",
                        help="held-out scenes the finished model is measured on (0: none)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    parser.add_argument("--text-dropout", type=float, default=DEFAULTS.text)
    parser.add_argument("--control-dropout", type=float, default=DEFAULTS.control)
    parser.add_argument("--image-dropout", type=float, default=DEFAULTS.image)
    parser.add_argument("--high-noise-dropout", type=float, default=None, metavar="P",
                        help="control/image dropout at the last timestep, rising linearly in t (default: constant)")
    return parser.parse_args(argv)


def parse_personalize_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="studio train", description=training_doc,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=PERSONALIZE_METHODS)
    parser.add_argument("--concept", required=True, help="the word that will mean the new concept (star, heart, <sks>)")
    parser.add_argument("--class-word", required=True, help="the word of what it resembles (circle)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, help="a folder of 3-10 pictures of the concept (captioned 'a <word>')")
    source.add_argument("--render", type=int, metavar="N",
                        help="render N pictures of a reserved shape (star, heart) from the shapes world, fully captioned")
    parser.add_argument("--shape", help="the reserved shape --render draws (default: the concept word)")
    parser.add_argument("--second-concept", help="custom-diffusion: a second word trained jointly (default: heart)")
    parser.add_argument("--second-images", type=Path, help="the second concept's pictures (default with --render: rendered)")
    parser.add_argument("--out", type=Path, required=True, help="the concept's folder (files, concept.json, state/)")
    parser.add_argument("--resume", action="store_true", help="continue from --out/state")
    parser.add_argument("--model", help="the base model (default: the embedded shapes model)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    for field, kind, help_text in (
        ("steps", int, "optimiser steps"), ("learning_rate", float, "peak learning rate"), ("rank", int, "LoRA rank"),
        ("prior_weight", float, "DreamBooth's lambda"), ("class_images", int, "DreamBooth's class images"),
        ("batch_size", int, "per process, per accumulation step"), ("gradient_accumulation", int, "accumulation steps"),
        ("sample_every", int, "steps between preview samples (0: none)"),
        ("checkpoint_every", int, "steps between files and state written"), ("seed", int, "seed"),
    ):
        parser.add_argument(f"--{field.replace('_', '-')}", type=kind, help=f"{help_text} (default: the method's recipe)")
    parser.add_argument("--lora-layers", choices=LORA_LAYERS, help="LoRA: the UNet layers it adapts (default: the "
                        "recipe's)")
    parser.add_argument("--train-text-encoder", action="store_true", help="LoRA: also the text encoder")
    parser.add_argument("--no-prior-preservation", dest="prior_preservation", action="store_false", default=None,
                        help="DreamBooth without the class-prior loss")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default=None)
    return parser.parse_args(argv)


def _pictures(folder: Path) -> list:
    from PIL import Image

    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp", ".bmp"))
    return [Image.open(p) for p in paths]


def personalize_main(argv: list[str]) -> dict:
    """`studio train <personalization method> ...`: the Personalize tab's training, on accelerate, from a shell."""
    from dataclasses import asdict

    from studio.engine import Engine
    from studio.events import Notice, Progress, TrainingCheckpoint, TrainingSamples
    from studio.personalize import files
    from studio.personalize.data import render_concept_images
    from studio.personalize.job import check_inputs
    from studio.personalize.methods import copy_parts
    from studio.personalize.spec import PersonalizeSpec
    from studio.personalize.training import train as train_concept

    args = parse_personalize_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in vars(args).items() if v is not None and k in PersonalizeSpec.__dataclass_fields__}
    overrides.pop("method")
    if args.method == "custom-diffusion" and args.second_concept is None:
        overrides["second_concept"] = PersonalizeSpec.recipe("custom-diffusion").second_concept
    spec = PersonalizeSpec.recipe(args.method, **overrides)
    engine = Engine(args.model)

    def pictures(folder: Path | None, word: str | None, shape: str | None) -> list:
        if folder is not None:
            return _pictures(folder)
        return render_concept_images(shape or word, args.render, spec.seed, word=word) if word else []

    images = pictures(args.images, spec.concept, args.shape)
    second = pictures(args.second_images, spec.second_concept, None) if spec.second_concept else []
    instances, notices = check_inputs(engine, spec, images, second)
    for text in notices:
        print(f"note: {text}", file=sys.stderr)
    base = {"name": engine.model_name, "fingerprint": files.base_fingerprint(engine.model)}
    run = train_concept(copy_parts(engine.model, spec), spec, instances, args.out, base, resume=args.resume, save_state=True)
    bar = tqdm(total=spec.steps, desc=spec.method, mininterval=10)
    try:
        while True:
            event = next(run)
            if isinstance(event, Progress) and event.step:
                bar.n = event.step
                bar.set_postfix_str(event.message, refresh=False)
                bar.refresh()
            elif isinstance(event, TrainingSamples):
                (args.out / "samples").mkdir(parents=True, exist_ok=True)
                for i, image in enumerate(event.images):
                    image.save(args.out / "samples" / f"step{event.step:05d}-{i}.png")
            elif isinstance(event, (Notice, TrainingCheckpoint)):
                bar.write(f"{type(event).__name__}: {vars(event)}")
    except StopIteration as stop:
        outcome = stop.value
    bar.close()
    summary = {"method": spec.method, "words": list(spec.words), "steps": outcome.steps, "seconds": outcome.seconds,
               "final_loss": outcome.final_loss, "resumed_from": outcome.resumed_from,
               "files": [str(p) for p in outcome.files], "settings": asdict(spec),
               "recipe": "python -m studio.train " + " ".join(argv)}
    print(json.dumps({k: summary[k] for k in ("method", "steps", "seconds", "final_loss")}))
    return summary


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] and argv[0] in PERSONALIZE_METHODS:
        return personalize_main(argv)
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    control = "image" if args.method == "ip-adapter" else args.control
    config = TrainConfig(
        method=args.method, control=control, steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup,
        grad_accum=args.grad_accum, mixed_precision=args.mixed_precision, work=args.work,
        out=args.out, resume=args.resume, seed=args.seed,
        data=args.data, checkpoint_every=args.checkpoint_every, eval_scenes=args.eval_scenes,
        dropout=ChannelDropout(args.text_dropout, args.control_dropout, args.image_dropout, args.high_noise_dropout),
        base=args.base,
    )
    return train(config, recipe="python -m studio.train " + " ".join(argv))


if __name__ == "__main__":
    main()
