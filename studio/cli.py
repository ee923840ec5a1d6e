"""`studio`: the engine from the command line, for scripted and batch runs.

    studio generate "a big red circle on a blue background" --seeds 0-7 --out runs/circles
    studio generate --prompts prompts.txt --steps 25 --guidance 7.5 --model path/to/sd15 --out runs/sd15
    studio generate --from-png runs/circles/0000-seed0.png --out runs/again  # remake an image from its settings
    studio generate "a red circle on a blue background" --control layout layout.png --control outline edges.png \\
        --control-scale 1 0.5 --image-prompt reference.png
    studio --model sd15 --controlnet control_v11p_sd15_canny --ip-adapter ip-adapter_sd15.bin \\
        generate "a house" --control control_v11p_sd15_canny canny.png --image-prompt colours.png --image-prompt-scale 0.6
    studio edit sdedit strokes.png --prompt "a red circle on a blue background" --t0 0.4,0.6 --out runs/sdedit
    studio edit sdedit strokes.png --prompt "a red circle on a blue background" --control outline outline.png
    studio edit diffedit photo.png --source "a red circle" --target "a blue circle" --out runs/diffedit
    studio edit p2p --source "a big red circle" --target "a big red square" --edit "word swap" --seed 3
    studio invert photo.png --prompt "a red circle on a blue background" --method null_text edict --out runs/inv
    studio edit p2p --inversion runs/inv/null_text.inversion.safetensors --target "a blue circle on a blue background"
    studio generate "a big circle" --classifier "red object:2" --seeds 0-3  # classifier guidance toward a target
    studio generate "a red star on a blue background" --lora runs/star-lora:0.8 --embedding heart.pt
    studio --model sd15 generate "a photo of <cat-toy>" --embedding emb_params.safetensors:<cat-toy>
    studio concepts my_lora.safetensors  # what a LoRA / embedding file is: its layout, keys and base

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

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # before transformers is first imported
from collections.abc import Iterator  # noqa: E402
from dataclasses import fields, replace  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import TYPE_CHECKING  # noqa: E402

from studio.errors import StudioError  # noqa: E402
from studio.inversion.result import METHODS as INVERSION_METHODS  # noqa: E402
from studio.model_options import add_model_options, open_engine  # noqa: E402
from studio.specs import SCHEDULERS, ClassifierGuidanceSpec, GenerateSpec  # noqa: E402
from studio.structure.spec import CONTROL_MODES  # noqa: E402

if TYPE_CHECKING:  # for annotations only: each command imports what it runs
    import numpy as np
    from PIL import Image

    from studio.engine import Engine
    from studio.events import Event, Result
    from studio.inversion import Inversion
    from studio.specs import ConceptUse
    from studio.structure.spec import StructureImages, StructureSpec


def spec_default(name: str) -> object:
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


def generate_specs(args: argparse.Namespace) -> Iterator[GenerateSpec]:
    """One GenerateSpec per (prompt, seed), or the specs stored in the given PNGs."""
    from studio.png_settings import read_png_settings, spec_fields

    for png in args.from_png or []:
        saved = spec_fields(read_png_settings(png))
        try:
            spec = GenerateSpec(**saved)
        except (TypeError, ValueError, KeyError) as error:  # a condition or guidance record of another shape
            raise StudioError(f"{png}: its settings are not a generation this studio can run ({error}).") from error
        yield spec
    structure = structure_spec(args)
    classifier = classifier_spec(args)
    for prompt in _prompts(args):
        for seed in args.seeds:
            yield GenerateSpec(
                prompt=prompt, negative_prompt=args.negative, seed=seed, steps=args.steps,
                guidance_scale=args.guidance, scheduler=args.scheduler, width=args.size, height=args.size,
                batch_size=args.batch, structure=structure, concepts=args.concepts, classifier_guidance=classifier,
            )


def classifier_spec(args: argparse.Namespace) -> ClassifierGuidanceSpec | None:
    """--classifier TARGET[:STRENGTH] (and --raw-gradient) as the spec; None without --classifier. The engine checks the
    target against the model's classifier and the strength's range."""
    if args.classifier is None:
        if args.raw_gradient:
            raise StudioError("--raw-gradient changes classifier guidance: give --classifier TARGET[:STRENGTH] too.")
        return None
    target, colon, strength = args.classifier.rpartition(":")
    if not colon:
        target, strength = args.classifier, ""
    try:
        fields = {"strength": float(strength)} if strength else {}
    except ValueError as error:
        raise StudioError(f"--classifier {args.classifier!r}: the strength after ':' must be a number.") from error
    return ClassifierGuidanceSpec(target.strip(), normalise=not args.raw_gradient, **fields)


def structure_spec(args: argparse.Namespace) -> StructureSpec | None:
    """The structure rows of --control (each row at --control-mode) and --image-prompt; None without any."""
    from studio.structure.spec import ControlSpec, ImagePromptSpec, StructureSpec

    scales = args.control_scale or [1.0] * len(args.control)
    if len(scales) != len(args.control):
        raise StudioError(f"--control-scale gives {len(scales)} scale(s) for {len(args.control)} --control row(s): "
                          "give one per row, in the same order.")
    controls = tuple(ControlSpec(control=name, scale=scale, mode=args.control_mode)
                     for (name, _), scale in zip(args.control, scales, strict=True))
    image_prompt = ImagePromptSpec(scale=args.image_prompt_scale) if args.image_prompt else None
    return StructureSpec(controls=controls, image_prompt=image_prompt) if controls or image_prompt else None


def structure_images(args: argparse.Namespace) -> StructureImages | None:
    """The control maps of --control and the reference image of --image-prompt, as read from their files (the job
    converts and resizes them, with a note)."""
    import numpy as np

    from studio.structure.spec import StructureImages

    def pixels(path: str) -> np.ndarray:
        image = read_image(path)
        return np.asarray(image.convert("RGBA" if "A" in image.getbands() else "RGB"))

    maps = tuple(pixels(path) for _, path in args.control)
    reference = pixels(args.image_prompt) if args.image_prompt else None
    return StructureImages(controls=maps, image_prompt=reference) if maps or reference is not None else None


class Output:
    """A folder of PNGs, each carrying the settings of the job that made it, and a `results.jsonl` line per file."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.count = 0

    def save(self, result: Result, names: list[str]) -> list[Path]:
        """Write result.images[i] as `<n>-<names[i]>.png`."""
        from studio.png_settings import save_png

        self.folder.mkdir(parents=True, exist_ok=True)
        paths = []
        with (self.folder / "results.jsonl").open("a", encoding="utf-8") as log:
            for index, (image, name) in enumerate(zip(result.images, names)):
                path = save_png(image, result.settings, self.folder / f"{self.count:04d}-{name}.png",
                                index if len(result.images) > 1 else None)
                log.write(json.dumps({"file": path.name, "settings": result.settings}, default=str) + "\n")
                self.count += 1
                paths.append(path)
        return paths


def finish(events: Iterator[Event], label: str) -> Result:
    """Run a job to its Result, reporting progress and its notes about the inputs on stderr."""
    from studio.events import Notice, Progress, Result

    for event in events:
        if isinstance(event, Notice):
            print(f"{label}: {event.text}", file=sys.stderr)
        if isinstance(event, Progress) and event.total:
            print(f"\r{label}: {event.step}/{event.total}", end="", file=sys.stderr, flush=True)
        if isinstance(event, Result):
            print(f"\r{label}: done in {event.timings.get('total', 0):.2f} s", file=sys.stderr)
            return event
    raise StudioError(f"{label} ended without a result.")


def run_generate(engine: Engine, args: argparse.Namespace) -> int:
    specs = list(generate_specs(args))
    if not specs:
        raise StudioError("Nothing to generate: give a prompt, --prompts FILE or --from-png FILE.")
    for spec in specs:  # check every job before running any: a typo on line 40 should not waste 39 jobs
        spec.validate(engine.size_multiple)
        engine.concepts.resolve(spec.concepts)
        engine.tokenize(spec.prompt)
    images = structure_images(args)
    output = Output(args.out)
    for number, spec in enumerate(specs, start=1):
        result = finish(engine.generate(replace(spec), structure_images=images), f"[{number}/{len(specs)}] {spec.prompt!r}")
        output.save(result, [f"seed{seed}" for seed in result.settings["seeds"]])  # each image's own seed
    print(f"{output.count} image(s) in {output.folder}", file=sys.stderr)
    return 0


def read_image(path: str) -> Image.Image:
    from studio.images import open_image

    return open_image(path, "The image")  # an InvalidInputError (a StudioError) for what it cannot read


def read_mask(path: str | None) -> np.ndarray | None:
    """A mask image -> (H, W) bool: painted = white (or opaque, for images with transparency)."""
    if path is None:
        return None
    import numpy as np

    image = read_image(path)
    channel = image.getchannel("A") if "A" in image.getbands() else image.convert("L")
    return np.asarray(channel) > 127


def run_invert(engine: Engine, args: argparse.Namespace) -> int:
    """Reconstruction PNG(s), and `<method>.inversion.safetensors` for `studio edit ... --inversion`
    (data only: studio.inversion.file)."""
    from studio.editing.p2p import EDIT_PREFERENCE
    from studio.inversion import InversionSpec
    from studio.inversion.file import INVERSION_SUFFIX, save_inversion

    image = read_image(args.image)
    structure, images = structure_spec(args), structure_images(args)
    output = Output(args.out)
    given = {"steps": args.steps, "guidance_scale": args.guidance, "fixed_point_iterations": args.fixed_point_iterations,
             "fixed_point_tolerance": args.fixed_point_tolerance, "seed": args.seed}  # None: the spec's default
    for method in args.method or [EDIT_PREFERENCE[0]]:
        spec = InversionSpec(prompt=args.prompt, method=method, keep_size=args.keep_size, structure=structure,
                             concepts=args.concepts, **{k: v for k, v in given.items() if v is not None})
        result = finish(engine.invert(spec, image, structure_images=images), method)
        output.save(result, [f"{method}-reconstruction"])
        save_inversion(result.inversion, output.folder / f"{method}{INVERSION_SUFFIX}")
        metrics = {k: v for k, v in result.inversion.metrics.items() if isinstance(v, (int, float, str))}
        print(json.dumps({"method": method, **metrics}, default=str), file=sys.stderr)
    return 0


def read_inversion(engine: Engine, path: str | None) -> Inversion | None:
    """The inversion `studio invert` wrote to `path`, on the engine's device; None without one."""
    if path is None:
        return None
    from studio.inversion.file import load_inversion

    return load_inversion(path, engine.device)


def run_sdedit(engine: Engine, args: argparse.Namespace) -> int:
    from studio.editing.sdedit import SDEditSpec

    spec = SDEditSpec(prompt=args.prompt, strengths=tuple(args.t0 or SDEditSpec().strengths), repeats=args.repeats, seed=args.seed,
                      steps=args.steps, guidance_scale=args.guidance, noise_form=args.noise_form,
                      keep_size=args.keep_size, structure=structure_spec(args), concepts=args.concepts)
    original = read_image(args.original) if args.original else None
    result = finish(engine.sdedit(spec, read_image(args.guide), read_mask(args.mask), original,
                                  structure_images=structure_images(args)), "SDEdit")
    names = [f"t0-{sample.t0:g}-seed{sample.seed}" for sample in result.samples]
    Output(args.out).save(result, names)
    for row in result.settings["results"]:
        print(json.dumps(row, default=str), file=sys.stderr)
    return 0


def run_diffedit(engine: Engine, args: argparse.Namespace) -> int:
    from studio.editing.diffedit import DiffEditSpec

    spec = DiffEditSpec(source_prompt=args.source, target_prompt=args.target, steps=args.steps,
                        guidance_scale=args.guidance, threshold=args.threshold, edit_strength=args.strength,
                        seed=args.seed, keep_size=args.keep_size, structure=structure_spec(args), concepts=args.concepts)
    inversion = read_inversion(engine, args.inversion)
    image = read_image(args.image) if args.image else None
    if (image is None) == (inversion is None):
        raise StudioError("Give an image or --inversion (one of them).")
    result = finish(engine.diffedit(spec, image, read_mask(args.mask), inversion,
                                    structure_images=structure_images(args)), "DiffEdit")
    output = Output(args.out)
    output.save(result, ["edited"])
    from PIL import Image

    Image.fromarray(result.mask).save(output.folder / f"{output.count - 1:04d}-mask.png")
    return 0


def run_p2p(engine: Engine, args: argparse.Namespace) -> int:
    from studio.editing.p2p import P2PSpec

    spec = P2PSpec(source_prompt=args.source, target_prompt=args.target, edit=args.edit, seed=args.seed,
                   steps=args.steps, guidance_scale=args.guidance, blend_words=tuple(args.blend or ()),
                   size=args.size, structure=structure_spec(args), concepts=args.concepts)
    result = finish(engine.p2p(spec, read_inversion(engine, args.inversion), structure_images=structure_images(args)),
                    "Prompt-to-Prompt")
    Output(args.out).save(result, ["source", "edited"])
    return 0


def run_concepts(args: argparse.Namespace) -> int:
    """`studio concepts FILE...`: what each LoRA / embedding / trained folder is, without loading a model."""
    from studio.personalize.files import describe

    for path in args.files:
        print(describe(Path(path)))
    return 0


def concept_file(text: str, option: str) -> tuple[Path, str | None]:
    """`FILE` or `FILE:VALUE` of --lora / --embedding (a path that exists as written is a file, colons and all)."""
    if Path(text).exists():
        return Path(text), None
    path, colon, value = text.rpartition(":")
    if not colon or not Path(path).exists():
        raise StudioError(f"{option} {text}: no such file or folder.")
    return Path(path), value


def load_concepts(engine: Engine, args: argparse.Namespace) -> tuple[ConceptUse, ...]:
    """Load each --lora FILE[:SCALE] and --embedding FILE[:TOKEN] into the engine: the ConceptUses the command's
    jobs run with (a LoRA at SCALE, default 1; TOKEN names the prompt word of an embedding file that does not)."""
    from studio.specs import ConceptUse

    uses = []
    for text in args.lora:
        path, scale = concept_file(text, "--lora")
        try:
            weight = 1.0 if scale is None else float(scale)
        except ValueError:
            raise StudioError(f"--lora {text}: the scale after ':' must be a number, got {scale!r}.") from None
        uses.append(ConceptUse(engine.concepts.load(path).name, weight))
    for text in args.embedding:
        path, token = concept_file(text, "--embedding")
        uses.append(ConceptUse(engine.concepts.load(path, token=token).name))
    return tuple(uses)


def add_concept_options(command: argparse.ArgumentParser) -> None:
    """--lora / --embedding: concept files loaded for this run and used by every job of it."""
    group = command.add_argument_group("concepts (LoRA, embeddings, trained folders)")
    group.add_argument("--lora", action="append", default=[], metavar="FILE[:SCALE]",
                       help="a LoRA file (diffusers or kohya) or a trained folder, at SCALE (default 1); repeatable")
    group.add_argument("--embedding", action="append", default=[], metavar="FILE[:TOKEN]",
                       help="an embedding file (diffusers, A1111 .pt, kohya emb_params: give its TOKEN) or a trained "
                            "folder; repeatable")


def add_structure_options(command: argparse.ArgumentParser) -> None:
    """Structure control rows (studio.structure) for a command that samples: read by structure_spec/structure_images."""
    group = command.add_argument_group("structure control")
    group.add_argument("--control", action="append", default=[], nargs=2, metavar=("NAME", "MAP"),
                       help="steer with a loaded control (layout, outline, t2i-outline, or a --controlnet/--t2i-adapter "
                            "folder's or file's name) reading the control map image MAP; repeatable")
    group.add_argument("--control-scale", type=float, nargs="+", metavar="SCALE",
                       help="each --control row's scale, in order (default 1 each)")
    group.add_argument("--control-mode", default="balanced", choices=list(CONTROL_MODES),
                       help="how every control steers: balanced (diffusers' default), prompt / control (A1111's 'my "
                            "prompt' / 'ControlNet is more important'), guess (diffusers' guess mode), channel (its own "
                            "guidance term)")
    group.add_argument("--image-prompt", metavar="IMAGE",
                       help="an image prompt (IP-Adapter, --ip-adapter): these colours, this arrangement")
    group.add_argument("--image-prompt-scale", type=float, default=1.0, metavar="SCALE",
                       help="lambda of the image prompt's attention (default 1)")


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="studio", description="Diffusion Control Studio from the command line.")
    add_model_options(root)
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
    gen.add_argument("--batch", type=int, default=1,
                     help="images per seed, in one batch; image i uses seed + i (as AUTOMATIC1111)")
    gen.add_argument("--classifier", metavar="TARGET[:STRENGTH]",
                     help="classifier guidance toward a target of the model's noisy classifier, e.g. 'red object:2' "
                          f"(default strength {ClassifierGuidanceSpec('x').strength:g}; the embedded model has one)")
    gen.add_argument("--raw-gradient", action="store_true",
                     help="with --classifier: Dhariwal & Nichol's raw gradient (eq. 14) instead of the normalised one")
    gen.add_argument("--out", default="studio-output", help="folder for the PNGs and results.jsonl")
    gen.set_defaults(run=run_generate)

    inv = commands.add_parser("invert", help="map a real image into the model's trajectory, to reconstruct or edit it")
    inv.add_argument("image")
    inv.add_argument("--prompt", default="", help="a caption of the image (empty: the null prompt)")
    inv.add_argument("--method", nargs="+", choices=list(INVERSION_METHODS),
                     help="default: the inversion edits prefer (studio.editing.p2p.EDIT_PREFERENCE)")
    # defaults None: InversionSpec's own (the Inversion tab's), so the two never disagree
    inv.add_argument("--steps", type=int, help="default: the Inversion tab's")
    inv.add_argument("--guidance", type=float, help="w it is sampled and edited with (default: the Inversion tab's)")
    inv.add_argument("--fixed-point-iterations", type=int, help="fixed_point: iterations per inversion step")
    inv.add_argument("--fixed-point-tolerance", type=float, help="fixed_point: stop a step's iterations below this")
    inv.add_argument("--seed", type=int, help="ddpm: the seed of its independent noisy states")
    inv.add_argument("--out", default="studio-output")
    inv.set_defaults(run=run_invert)

    edit = commands.add_parser("edit", help="edit an image: sdedit, diffedit or p2p").add_subparsers(dest="method", required=True)
    sdedit = edit.add_parser("sdedit", help="strokes or an image as a guide, noised to t0 and denoised")
    sdedit.add_argument("guide", help="the guide image (a stroke drawing or a photo)")
    sdedit.add_argument("--prompt", default="")
    sdedit.add_argument("--mask", help="editable region: white (or opaque) pixels; the rest stays as --original")
    sdedit.add_argument("--original", help="the image the frozen region keeps (default: the guide)")
    sdedit.add_argument("--t0", type=lambda text: [float(v) for v in text.split(",")], default=None,
                        help="noise levels as fractions of T, e.g. 0.3,0.5 (default: the SDEdit tab's)")
    sdedit.add_argument("--repeats", type=int, default=2)
    sdedit.add_argument("--noise-form", choices=["vp", "ve"], default="vp")
    sdedit.set_defaults(run=run_sdedit)

    diffedit = edit.add_parser("diffedit", help="find what differs between two prompts, then repaint only that")
    diffedit.add_argument("image", nargs="?", help="the image to edit (or --inversion)")
    diffedit.add_argument("--inversion", help="edit an inversion written by `studio invert` (its DDIM trajectory)")
    diffedit.add_argument("--source", required=True, help="what the image shows")
    diffedit.add_argument("--target", required=True, help="what it should show")
    diffedit.add_argument("--mask", help="use this mask instead of discovering one")
    diffedit.add_argument("--threshold", type=float, default=0.4)
    diffedit.add_argument("--strength", type=float, default=0.8, help="t_edit as a fraction of T")
    diffedit.set_defaults(run=run_diffedit)

    p2p = edit.add_parser("p2p", help="Prompt-to-Prompt: generate the source and its edit with shared attention")
    p2p.add_argument("--source", default="", help="the source prompt (with --inversion: its caption, or empty)")
    p2p.add_argument("--inversion", help="edit a real image inverted by `studio invert` (any method but edict and bdia)")
    p2p.add_argument("--target", default="", help="the edited prompt; (word:1.5) re-weights a word")
    p2p.add_argument("--edit", default="refine", choices=["word swap", "refine", "style"],
                     help="re-weighting ((word:1.5) in --target) combines with any of them")
    p2p.add_argument("--blend", nargs="*", help="local blend: words whose region may change")
    p2p.add_argument("--size", type=int, default=None, help="side of the generated pair in pixels (default: native)")
    p2p.set_defaults(run=run_p2p)

    # listed for `studio --help`; main() hands everything after `train` to studio.train, which has its own options
    commands.add_parser("train", add_help=False, help="train a structure control (controlnet, t2i-adapter, "
                        "ip-adapter) or a concept (textual-inversion, lora, dreambooth, custom-diffusion): "
                        "`studio train METHOD --help`")

    concepts = commands.add_parser("concepts", help="say what a LoRA / embedding file or trained folder is")
    concepts.add_argument("files", nargs="+", metavar="FILE")
    concepts.set_defaults(run=run_concepts, model_free=True)

    for command in (gen, inv, sdedit, diffedit, p2p):
        add_structure_options(command)
        add_concept_options(command)
    for command in (inv, sdedit, diffedit):
        command.add_argument("--keep-size", action="store_true",
                             help="work at the image's own size (its shorter side down to a multiple of 8) "
                                  "instead of the model's native size")
    for command in (sdedit, diffedit, p2p):
        command.add_argument("--seed", type=int, default=None)
        command.add_argument("--steps", type=int, default=spec_default("steps"))
        command.add_argument("--guidance", type=float, default=spec_default("guidance_scale"))
        command.add_argument("--out", default="studio-output")
    return root


def quiet_libraries() -> None:
    """Our own progress lines only: the libraries' loading bars and notices would bury them."""
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for logging in (diffusers_logging, transformers_logging):
        logging.set_verbosity_error()
        logging.disable_progress_bar()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        from studio.train import main as train

        train(argv[1:])
        return 0
    args = parser().parse_args(argv)
    quiet_libraries()
    from studio.images import limit_decoding

    limit_decoding()  # images over the studio's limit are refused from their header, as in the app
    try:
        if getattr(args, "model_free", False):
            return args.run(args)
        engine = open_engine(args)
        args.concepts = load_concepts(engine, args)
        return args.run(engine, args)
    except StudioError as error:
        print(f"studio: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
