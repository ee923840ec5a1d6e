"""`studio`: the engine from the command line, for scripted and batch runs.

    studio generate "a big red circle on a blue background" --seeds 0-7 --out runs/circles
    studio generate --prompts prompts.txt --steps 25 --guidance 7.5 --model path/to/sd15 --out runs/sd15
    studio generate --from-png runs/circles/seed0000.png --out runs/again   # remake an image from its settings

Each image is a PNG carrying its settings (A1111 `parameters` text and our JSON), exactly as the
app writes them, so the app's "load settings from PNG" and other tools read them back. A
`results.jsonl` beside the images logs one line per image (file, settings, timings, UNet evaluations).
The app and this command share one engine; errors print one line and exit with status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from studio.errors import StudioError
from studio.specs import SCHEDULERS, GenerateSpec


def spec_default(name: str) -> Any:
    """A GenerateSpec field's default: the spec is the one source of truth for the CLI and the app."""
    return next(f.default for f in fields(GenerateSpec) if f.name == name)


def seed_list(text: str) -> list[int]:
    """'3' -> [3]; '0-7' -> [0..7]; '1,5,9' -> [1, 5, 9]; mixed '0-2,10'."""
    seeds: list[int] = []
    for part in text.split(","):
        low, _, high = part.strip().partition("-")
        try:
            seeds += list(range(int(low), int(high) + 1)) if high else [int(low)]
        except ValueError:
            raise argparse.ArgumentTypeError(f"seeds look like 3, 0-7 or 1,5,9; got {text!r}") from None
    return seeds


def _prompts(args: argparse.Namespace) -> list[str]:
    prompts = list(args.prompt or [])
    if args.prompts:
        lines = Path(args.prompts).read_text(encoding="utf-8").splitlines()
        prompts += [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return prompts


def generate_specs(args: argparse.Namespace) -> Iterator[Any]:
    """One GenerateSpec per (prompt, seed), or the specs stored in the given PNGs."""
    from studio.ui.png_settings import read_png_settings, spec_fields

    for png in args.from_png or []:
        yield GenerateSpec(**spec_fields(read_png_settings(png)))
    for prompt in _prompts(args):
        for seed in args.seeds:
            yield GenerateSpec(
                prompt=prompt, negative_prompt=args.negative, seed=seed, steps=args.steps,
                guidance_scale=args.guidance, scheduler=args.scheduler, width=args.size, height=args.size,
                batch_size=args.batch,
            )


def run_generate(engine: Any, args: argparse.Namespace) -> int:
    from studio.events import Result
    from studio.ui.png_settings import save_png

    specs = list(generate_specs(args))
    if not specs:
        raise StudioError("Nothing to generate: give a prompt, --prompts FILE or --from-png FILE.")
    for spec in specs:  # check every job before running any: a typo on line 40 should not waste 39 jobs
        spec.validate(engine.size_multiple)
        engine.tokenize(spec.prompt)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    with (out / "results.jsonl").open("a", encoding="utf-8") as log:
        for number, spec in enumerate(specs, start=1):
            result = next(e for e in engine.generate(replace(spec)) if isinstance(e, Result))
            seed = result.settings["seed"]
            for index, image in enumerate(result.images):
                suffix = f"-{index}" if len(result.images) > 1 else ""
                path = save_png(image, result.settings, out / f"{written:04d}-seed{seed}{suffix}.png",
                                index if len(result.images) > 1 else None)
                log.write(json.dumps({"file": path.name, "settings": result.settings}, default=str) + "\n")
                written += 1
            print(f"[{number}/{len(specs)}] {spec.prompt!r} seed {seed}: {result.timings['total']:.2f} s "
                  f"-> {out}", file=sys.stderr)
    print(f"{written} image(s) in {out}", file=sys.stderr)
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="studio", description="Diffusion Control Studio from the command line.")
    root.add_argument("--model", default=None, help="diffusers folder, .safetensors file or hub id (default: embedded model)")
    root.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: CUDA when available, else CPU")
    commands = root.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="text to image, one PNG per prompt and seed")
    gen.add_argument("prompt", nargs="*", help="one or more prompts")
    gen.add_argument("--prompts", help="a text file with one prompt per line (# comments)")
    gen.add_argument("--from-png", nargs="+", help="remake images from the settings stored in these PNGs")
    gen.add_argument("--negative", default="", help="negative prompt")
    gen.add_argument("--seeds", type=seed_list, default=[0], help="e.g. 3, 0-7 or 1,5,9 (default 0)")
    gen.add_argument("--steps", type=int, default=spec_default("steps"))
    gen.add_argument("--guidance", type=float, default=spec_default("guidance_scale"))
    gen.add_argument("--scheduler", default=spec_default("scheduler"), choices=list(SCHEDULERS))
    gen.add_argument("--size", type=int, default=None, help="width and height in pixels (default: the model's)")
    gen.add_argument("--batch", type=int, default=1, help="images per seed")
    gen.add_argument("--out", default="studio-output", help="folder for the PNGs and results.jsonl")
    gen.set_defaults(run=run_generate)
    return root


def quiet_libraries() -> None:
    """Our own progress lines only: the libraries' loading bars and notices would bury them."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before transformers is first imported
    quiet_libraries()
    try:
        from studio.engine import Engine

        engine = Engine(args.model, device=args.device)
        return args.run(engine, args)
    except StudioError as error:
        print(f"studio: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
