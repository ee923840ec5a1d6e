"""Structure control, measured (issue #17): fidelity, text under control, channel independence, image prompt, cost.

(a) control fidelity: IoU between the control map's object mask and the generated objects' mask (pixels far from
    the generated background colour, studio.structure.maps.layout_from_image), per control: the layout ControlNet
    (Zhang et al. 2023), the outline ControlNet and the outline T2I-Adapter (Mou et al. 2024); the mean and the
    fraction of scenes at IoU >= 0.85 (the goal for layout), beside the same prompts and seeds without control;
(b) text still obeyed under control: each object's colour and shape and the background, all named in the prompt,
    judged by pixels (studio.shapes.judge.judge_pixels; goal >= 90%);
(c) channel independence, on the layout ControlNet: control scale 0..1.5, windows, the control as its own guidance
    channel (Liu et al. 2022's composition, possible because training dropped each channel independently: Brooks et
    al. 2023, eq. 3; Composer, Huang et al. 2023) at weights 0..4, the text's weight 0..5 beside it, and schedules:
    a sweep table and a plot, as bench/guidance_sweep.py does for text;
(d) image prompt (IP-Adapter, Ye et al. 2023, eq. 5): agreement of the generated background and object colours with
    the reference image, with the full caption, with the colour words left out, and without the image;
(e) cost and parity: one run each of ours and diffusers' StableDiffusionControlNetPipeline,
    StableDiffusionAdapterPipeline and StableDiffusionPipeline.load_ip_adapter on the same modules, seed and settings
    in diffusers' default mode (control on both CFG branches): max pixel difference (<= 1e-4 CPU fp32) and time
    (target <= 1.05x), and the cost per step beside plain generation; on the embedded model and on SD 1.5's
    architecture at random init (bench/common.py).

Held out: studio.structure.training.held_out_scenes, the scenes the shipped controls' cards are measured on
(held-out colour/shape/background triples and a scene seed the training data never uses). (a)-(d) need the trained
controls (assets/models/shapes-sd-controls/, loaded with the embedded model); without them those parts say so and
(e) runs on random-init stand-ins (ControlNets with their zero convolutions drawn at random, so that a wrong wiring
would show). `--random-controls` runs (a)-(d) on such stand-ins too (the smoke test; the numbers mean nothing).
Writes bench/results/structure.{json,md,png}.

    python bench/structure.py [--scenes 32] [--sweep-scenes 8] [--image-scenes 12] [--steps 25] [--threads 1]
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_description, interleaved, peer_pipeline, sd15_engine

from studio.engine import Engine
from studio.events import Result
from studio.plots import line_chart, side_by_side
from studio.shapes.judge import judge_pixels
from studio.shapes.render import Rendering, caption, describe_object, render
from studio.specs import GenerateSpec
from studio.structure.adapters import (
    EMBEDDED_CONTROLS_DIR,
    new_control,
    new_ip_adapter,
    save_ip_adapter,
)
from studio.structure.maps import control_map, layout_from_image, prepare_control_map
from studio.structure.spec import (
    ControlSpec,
    ImagePromptSpec,
    StructureImages,
    StructureSpec,
)
from studio.structure.training import held_out_scenes, mask_iou

RESULTS = Path(__file__).resolve().parent / "results"
GOAL_IOU = 0.85
GOAL_TEXT = 0.90
TARGET_RATIO = 1.05
PEER_GUIDANCE = 7.5  # diffusers' default, as bench/generate_vs_diffusers.py
SD15_PROMPT = "a photograph of an astronaut riding a horse"


class ControlRow(NamedTuple):  # a NamedTuple: bench scripts load without a sys.modules entry, which dataclasses need
    label: str
    control: str  # the loaded control's name (studio.structure.adapters.embedded_controls)
    map_kind: str  # the map it reads (studio.structure.maps.CONTROL_KINDS)
    kind: str  # "controlnet" | "t2i_adapter"
    folder: str  # its folder in assets/models/shapes-sd-controls (its card's training.json)


CONTROL_ROWS = (
    ControlRow("layout ControlNet", "layout", "layout", "controlnet", "controlnet-layout"),
    ControlRow("outline ControlNet", "outline", "outline", "controlnet", "controlnet-outline"),
    ControlRow("outline T2I-Adapter", "t2i-outline", "outline", "t2i_adapter", "t2i-adapter-outline"),
)
SWEEP_CONTROL = CONTROL_ROWS[0]
SCALES = (0.0, 0.25, 0.5, 1.0, 1.5)
WINDOWS = ((0.0, 0.25), (0.0, 0.5), (0.0, 1.0), (0.25, 1.0), (0.5, 1.0))
CHANNEL_WEIGHTS = (0.0, 1.0, 2.0, 4.0)
TEXT_WEIGHTS = (0.0, 1.0, 2.5, 5.0)
CHANNEL_WEIGHT = 2.0  # the control channel's weight while the text weight and the schedule vary
SCHEDULES = ("constant", "ramp_down", "ramp_up", "snr")


PARTS = ("cost", "fidelity", "sweep", "image_prompt")  # (e), (a, b), (c), (d): the report's keys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source (default: the embedded model and its controls)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps of (a)-(d)")
    parser.add_argument("--guidance", type=float, default=5.0, help="the prompt's CFG weight in (a)-(d)")
    parser.add_argument("--scenes", type=int, default=32, help="(a)/(b) held-out scenes per control")
    parser.add_argument("--sweep-scenes", type=int, default=8, help="(c) scenes per setting")
    parser.add_argument("--image-scenes", type=int, default=12, help="(d) reference images")
    parser.add_argument("--cost-steps", type=int, default=25, help="(e) steps on the first model")
    parser.add_argument("--repeats", type=int, default=3, help="(e) timed runs of each side after a warm-up")
    parser.add_argument("--sd15-size", type=int, default=128, help="(e) SD 1.5's architecture at this size; 0 skips it")
    parser.add_argument("--sd15-steps", type=int, default=4)
    parser.add_argument("--random-controls", action="store_true",
                        help="measure (a)-(d) on random-init stand-ins where trained controls are missing (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for structure.{json,md,png}")
    parser.add_argument("--only", action="append", choices=PARTS,
                        help="rerun only this part (repeatable), keeping the others from --out's structure.json")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------------------- controls


def random_control(unet: nn.Module, row: ControlRow, seed: int):
    """A random-init stand-in for a control: a ControlNet's zero convolutions (Zhang et al. 2023, eq. 1-4) drawn at
    random, else all its residuals are 0 and parity would hold for any wiring."""
    torch.manual_seed(seed)
    control = new_control(unet, row.kind, row.control, row.map_kind)
    if row.kind == "controlnet":
        net = control.module
        for conv in (net.controlnet_cond_embedding.conv_out, *net.controlnet_down_blocks, net.controlnet_mid_block):
            nn.init.normal_(conv.weight, std=0.05)
            nn.init.normal_(conv.bias, std=0.05)
    return control


def attach_stand_ins(engine: Engine, rows: tuple[ControlRow, ...]) -> list[str]:
    """Give the engine random-init stand-ins for the controls (and the image prompt) it has not loaded; returns
    their names ("image prompt" for the IP-Adapter)."""
    model, attached = engine.model, []
    for seed, row in enumerate(rows, start=1):
        if row.control not in model.controls:
            model.controls[row.control] = random_control(model.unet, row, seed).to(engine.device, model.dtype)
            attached.append(row.control)
    if model.image_prompt is None:
        torch.manual_seed(len(rows) + 1)
        model.image_prompt = new_ip_adapter(model.unet, image_embed_dim=32).to(engine.device, model.dtype)
        attached.append("image prompt")
    return attached


# ---------------------------------------------------------------------------------------------- judging


def generated(engine: Engine, prompt: str, seed: int, steps: int, guidance: float,
              structure: StructureSpec | None = None, images: StructureImages | None = None) -> np.ndarray:
    """One (H, W, 3) uint8 picture from the engine (no previews)."""
    spec = GenerateSpec(prompt, seed=seed, steps=steps, guidance_scale=guidance, preview_every=steps + 1,
                        structure=structure)
    result = [event for event in engine.generate(spec, structure_images=images) if isinstance(event, Result)][-1]
    return (result.pixels[0] * 255).round().astype(np.uint8)


def _centre(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


def score(picture: np.ndarray, rendering: Rendering) -> dict:
    """The picture against the scene it was asked for: IoU of its objects' mask with the scene's, the background,
    and each object's colour and shape (the judged object overlapping it most, else the one nearest its centre)."""
    judged = judge_pixels(picture)
    truth = rendering.masks
    colours, shapes = [], []
    for obj, mask in zip(rendering.scene.objects, truth):
        match = None
        if judged.objects:
            overlaps = [int((j.mask & mask).sum()) for j in judged.objects]
            if max(overlaps) > 0:
                match = judged.objects[int(np.argmax(overlaps))]
            else:
                match = min(judged.objects, key=lambda j: float(np.linalg.norm(_centre(j.mask) - _centre(mask))))
        colours.append(match is not None and match.colour == obj.colour)
        shapes.append(match is not None and match.shape == obj.shape)
    return {"iou": mask_iou(layout_from_image(picture)[..., 0] > 0, truth.any(axis=0)),
            "background": judged.background == rendering.scene.background, "colour": colours, "shape": shapes}


def summary(scores: list[dict]) -> dict:
    """Means over scenes (IoU, background) and over objects (colour, shape); text_obeyed pools every named attribute."""
    ious = [s["iou"] for s in scores]
    background = [s["background"] for s in scores]
    colour = [c for s in scores for c in s["colour"]]
    shape = [c for s in scores for c in s["shape"]]
    named = background + colour + shape
    return {"scenes": len(scores), "iou_mean": float(np.mean(ious)), "iou_median": float(np.median(ious)),
            "iou_at_goal": float(np.mean([iou >= GOAL_IOU for iou in ious])),
            "background": float(np.mean(background)), "colour": float(np.mean(colour)), "shape": float(np.mean(shape)),
            "text_obeyed": float(np.mean(named))}


def run_scenes(engine: Engine, renderings: list[Rendering], args: argparse.Namespace, guidance: float | None = None,
               structure: StructureSpec | None = None, map_kind: str | None = None,
               prompt: Callable[[Rendering], str] = lambda r: caption(r.scene), reference: bool = False) -> dict:
    """Scene k generated with seed k, its own map (`map_kind`) and/or reference image; scored and summarised."""
    scores = []
    for seed, rendering in enumerate(renderings):
        images = None
        if structure is not None:
            maps = tuple(control_map(rendering, map_kind) for _ in structure.controls)
            images = StructureImages(maps, rendering.image if reference else None)
        picture = generated(engine, prompt(rendering), seed, args.steps,
                            args.guidance if guidance is None else guidance, structure, images)
        scores.append(score(picture, rendering))
    return summary(scores)


# ---------------------------------------------------------------------------------------------- (a)-(d)


def fidelity(engine: Engine, renderings: list[Rendering], args: argparse.Namespace, measurable: set[str],
             cards: dict[str, dict]) -> list[dict]:
    """(a) and (b): each control on its own maps, and the same prompts and seeds without control, beside the IoU its
    shipped card measured (`cards`: control name -> card())."""
    rows = [{"label": "no control (same prompts and seeds)", "control": None, **run_scenes(engine, renderings, args)}]
    for row in CONTROL_ROWS:
        if row.control not in measurable:
            rows.append({"label": row.label, "control": row.control, "skipped": "not loaded (not trained yet)"})
            continue
        structure = StructureSpec((ControlSpec(row.control),))
        rows.append({"label": row.label, "control": row.control, "map": row.map_kind, "card_iou_mean": (cards.get(row.control) or {}).get("iou_mean"),
                     **run_scenes(engine, renderings, args, structure=structure, map_kind=row.map_kind)})
    return rows


def card(row: ControlRow) -> dict | None:
    """The shipped control's training steps and the IoU its training run measured
    (studio.structure.training.control_fidelity: the same held-out scenes and seeds, through diffusers' own pipeline):
    which weights were measured, and a check of this bench's IoU. Read when the engine loads them."""
    path = EMBEDDED_CONTROLS_DIR / row.folder / "training.json"
    if not path.is_file():
        return None
    training = json.loads(path.read_text())
    return {"steps": training.get("steps"), "iou_mean": training.get("fidelity", {}).get("iou_mean")}


LAYOUT_FREE = ", layout from the control only"  # the family run on captions without sizes and positions


def without_layout(rendering: Rendering) -> str:
    """The caption with every size and position left out (colours, shapes and the background kept): where the
    objects go and how big they are is the control's alone to say."""
    objects = " and ".join(describe_object(obj, size=False, position=False) for obj in rendering.scene.objects)
    return f"{objects} on a {rendering.scene.background} background"


def sweep_settings() -> list[dict]:
    """(c): every setting of the layout control, as (family, x, prompt weight, structure). The scale, window and
    schedule families run twice: on the full caption, whose size and position words already fix the coarse layout
    (the control can only sharpen it), and on `without_layout`, where the layout is the control's alone, which is
    what a window or schedule over the run is for."""
    name = SWEEP_CONTROL.control
    settings = [{"family": "control scale", "x": scale, "text": None, "structure": StructureSpec((ControlSpec(name, scale),))}
                for scale in SCALES]
    settings += [{"family": "window", "x": f"{start:g}-{stop:g}", "text": None,
                  "structure": StructureSpec((ControlSpec(name, start=start, stop=stop),))} for start, stop in WINDOWS]
    settings += [{"family": "channel weight", "x": weight, "text": None,
                  "structure": StructureSpec((ControlSpec(name, mode="channel", weight=weight),))} for weight in CHANNEL_WEIGHTS]
    settings += [{"family": "text weight", "x": text, "text": text,
                  "structure": StructureSpec((ControlSpec(name, mode="channel", weight=CHANNEL_WEIGHT),))} for text in TEXT_WEIGHTS]
    settings += [{"family": "channel schedule", "x": schedule, "text": None,
                  "structure": StructureSpec((ControlSpec(name, mode="channel", weight=CHANNEL_WEIGHT, schedule=schedule),))}
                 for schedule in SCHEDULES]
    settings += [{**setting, "family": setting["family"] + LAYOUT_FREE, "prompt": without_layout}
                 for setting in settings if setting["family"] in ("control scale", "window", "channel schedule")]
    return settings


def channel_sweep(engine: Engine, renderings: list[Rendering], args: argparse.Namespace) -> dict:
    """(c): the sweep table, each distinct setting run once, and what each family should show."""
    done: dict[tuple, dict] = {}
    rows = []
    for setting in sweep_settings():
        text = args.guidance if setting["text"] is None else setting["text"]
        prompt = setting.get("prompt", lambda rendering: caption(rendering.scene))
        key = (text, setting["structure"], setting.get("prompt"))
        if key not in done:
            done[key] = run_scenes(engine, renderings, args, guidance=text, structure=setting["structure"],
                                   map_kind=SWEEP_CONTROL.map_kind, prompt=prompt)
        control = setting["structure"].controls[0]
        rows.append({"family": setting["family"], "x": setting["x"], "text_weight": text, "mode": control.mode,
                     "caption": "no sizes or positions" if "prompt" in setting else "full",
                     "scale": control.scale, "start": control.start, "stop": control.stop,
                     "channel_weight": control.weight if control.mode == "channel" else None,
                     "schedule": control.schedule if control.mode == "channel" else None, **done[key]})

    def at(family: str, x) -> dict:
        return next(row for row in rows if row["family"] == family and row["x"] == x)

    full = f"{0.0:g}-{1.0:g}"
    checks = {
        "control scale 0 -> IoU drops (vs scale 1)": at("control scale", 0.0)["iou_mean"] < at("control scale", 1.0)["iou_mean"],
        "channel weight 0 -> IoU drops (vs weight 2)": at("channel weight", 0.0)["iou_mean"] < at("channel weight", CHANNEL_WEIGHT)["iou_mean"],
        "text weight 0 -> colours stop following the prompt (vs text 5)":
            at("text weight", 0.0)["colour"] < at("text weight", TEXT_WEIGHTS[-1])["colour"],
        "text weight 0 -> the layout still follows the control (IoU within 0.1 of text 5)":
            abs(at("text weight", 0.0)["iou_mean"] - at("text weight", TEXT_WEIGHTS[-1])["iou_mean"]) <= 0.1,
        "full window 0-1 at least the late window 0.5-1 (IoU)": at("window", full)["iou_mean"] >= at("window", "0.5-1")["iou_mean"],
        "layout from the control only: the early window 0-0.5 beats the late window 0.5-1 (IoU)":
            at("window" + LAYOUT_FREE, "0-0.5")["iou_mean"] > at("window" + LAYOUT_FREE, "0.5-1")["iou_mean"],
        "layout from the control only: ramp_down (strong early) beats ramp_up (strong late) (IoU)":
            at("channel schedule" + LAYOUT_FREE, "ramp_down")["iou_mean"]
            > at("channel schedule" + LAYOUT_FREE, "ramp_up")["iou_mean"],
        "layout from the control only: control scale 0 -> IoU drops (vs scale 1)":
            at("control scale" + LAYOUT_FREE, 0.0)["iou_mean"] < at("control scale" + LAYOUT_FREE, 1.0)["iou_mean"],
    }
    return {"control": SWEEP_CONTROL.label, "scenes": len(renderings), "rows": rows, "checks": checks,
            "distinct_settings": len(done)}


def without_colours(rendering: Rendering) -> str:
    """The caption with every colour word left out (objects, sizes and positions kept; no background phrase)."""
    return " and ".join(describe_object(obj, colour=False) for obj in rendering.scene.objects)


def image_prompt(engine: Engine, renderings: list[Rendering], args: argparse.Namespace) -> list[dict]:
    """(d): the reference is the scene's own rendering; agreement = the judged background / object colours equal
    the reference's."""
    structure = StructureSpec(image_prompt=ImagePromptSpec())
    settings = (
        ("image prompt + full caption", structure, lambda r: caption(r.scene)),
        ("image prompt + caption without colours", structure, without_colours),
        ("caption without colours, no image (baseline)", None, without_colours),
    )
    return [{"label": label, **run_scenes(engine, renderings, args, structure=spec, prompt=prompt, reference=True)}
            for label, spec, prompt in settings]


# ---------------------------------------------------------------------------------------------- (e)


def _pixels(run: Callable[[], object]) -> Callable[[], np.ndarray]:
    return lambda: [e for e in run() if isinstance(e, Result)][-1].pixels


def cost_and_parity(engine: Engine, prompt: str, size: int, steps: int, repeats: int, rendering: Rendering) -> dict:
    """Ours (studio engine) and diffusers' pipelines on the same modules, seed 0 and DDIM settings, interleaved after a
    warm-up; the layout ControlNet reads the layout map, the T2I-Adapter the outline map, the IP-Adapter the picture
    (each at the run's size). The IP-Adapter's pipeline gets its own copy of the UNet: load_ip_adapter replaces its
    attention processors."""
    from diffusers import (
        StableDiffusionAdapterPipeline,
        StableDiffusionControlNetPipeline,
        StableDiffusionPipeline,
    )

    model = engine.model
    layout, _ = prepare_control_map(control_map(rendering, "layout"), size, size)
    outline, _ = prepare_control_map(control_map(rendering, "outline"), size, size)
    reference = rendering.image
    base = peer_pipeline(engine, StableDiffusionPipeline)
    controlnet = StableDiffusionControlNetPipeline.from_pipe(base, controlnet=model.controls["layout"].module)
    adapter = StableDiffusionAdapterPipeline.from_pipe(base, adapter=model.controls["t2i-outline"].module)
    ip = peer_pipeline(engine, StableDiffusionPipeline)
    ip.register_modules(unet=copy.deepcopy(model.unet))
    with tempfile.TemporaryDirectory(prefix="bench-ip-") as folder:
        save_ip_adapter(model.image_prompt, folder)
        ip.load_ip_adapter(folder, subfolder="", weight_name="ip-adapter.safetensors", image_encoder_folder="image_encoder")
    ip.set_ip_adapter_scale(1.0)
    for pipeline in (controlnet, adapter, ip):
        pipeline.set_progress_bar_config(disable=True)

    def ours(structure: StructureSpec | None = None, images: StructureImages | None = None):
        spec = GenerateSpec(prompt, seed=0, steps=steps, guidance_scale=PEER_GUIDANCE, width=size, height=size,
                            preview_every=steps + 1, structure=structure)
        return _pixels(lambda: engine.generate(spec, structure_images=images))

    def theirs(pipeline, **inputs):
        return lambda: pipeline(prompt, num_inference_steps=steps, guidance_scale=PEER_GUIDANCE, width=size, height=size,
                                generator=torch.Generator("cpu").manual_seed(0), output_type="np", **inputs).images

    peers = {
        "controlnet": ("StableDiffusionControlNetPipeline (layout ControlNet)",
                       ours(StructureSpec((ControlSpec("layout"),)), StructureImages((layout,))),
                       theirs(controlnet, image=Image.fromarray(layout))),
        "t2i_adapter": ("StableDiffusionAdapterPipeline (outline T2I-Adapter)",
                        ours(StructureSpec((ControlSpec("t2i-outline"),)), StructureImages((outline,))),
                        theirs(adapter, image=Image.fromarray(outline))),
        "ip_adapter": ("StableDiffusionPipeline.load_ip_adapter (IP-Adapter)",
                       ours(StructureSpec(image_prompt=ImagePromptSpec()), StructureImages(image_prompt=reference)),
                       theirs(ip, ip_adapter_image=Image.fromarray(reference))),
    }
    runs = {"plain": ours()}
    for key, (_, mine, peer) in peers.items():
        runs[f"{key}/ours"], runs[f"{key}/diffusers"] = mine, peer
    timing = interleaved(engine.device, runs, repeats)
    median, values = timing["median"], timing["values"]
    rows = []
    for key, (peer, _, _) in peers.items():
        rows.append({
            "control": key, "peer": peer,
            "median_ours_s": median[f"{key}/ours"], "median_diffusers_s": median[f"{key}/diffusers"],
            "ratio": median[f"{key}/ours"] / median[f"{key}/diffusers"],
            "seconds_per_step": median[f"{key}/ours"] / steps,
            "vs_plain": median[f"{key}/ours"] / median["plain"],
            "max_abs_pixel_difference": float(np.abs(values[f"{key}/ours"] - values[f"{key}/diffusers"]).max()),
            "differs_from_plain": float(np.abs(values[f"{key}/ours"] - values["plain"]).max()),
        })
    return {"model": engine.model_name, "size": size, "steps": steps, "guidance_scale": PEER_GUIDANCE,
            "dtype": str(model.dtype).replace("torch.", ""), "repeats": repeats, "median_plain_s": median["plain"],
            "plain_seconds_per_step": median["plain"] / steps, "seconds": timing["seconds"], "rows": rows}


# ---------------------------------------------------------------------------------------------- report


def measure(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    engine = Engine(args.model, device=args.device)
    cards = {row.control: card(row) for row in CONTROL_ROWS} if args.model is None else {}
    trained = {row.control for row in CONTROL_ROWS if row.control in engine.model.controls}
    trained_image = engine.model.image_prompt is not None
    stand_ins = attach_stand_ins(engine, CONTROL_ROWS)
    measurable = {row.control for row in CONTROL_ROWS} if args.random_controls else trained
    seconds: dict[str, float] = {}

    def lap(name: str) -> None:
        seconds[name] = time.perf_counter() - started - sum(seconds.values())

    lap("load")
    scenes = [render(scene) for scene in held_out_scenes(max(args.scenes, args.sweep_scenes, args.image_scenes))]
    report = {**device_description(engine.device), "model": engine.model_name, "steps": args.steps,
              "guidance_scale": args.guidance, "trained_controls": sorted(trained), "trained_image_prompt": trained_image, "cards": cards,
              "random_stand_ins": stand_ins, "goals": {"iou": GOAL_IOU, "text_obeyed": GOAL_TEXT, "time_ratio": TARGET_RATIO},
              "arguments": {name: str(value) if isinstance(value, Path) else value for name, value in vars(args).items()}}
    measurers = {
        "cost": lambda: cost_report(engine, scenes, args),
        "fidelity": lambda: fidelity(engine, scenes[: args.scenes], args, measurable, cards),
        "sweep": lambda: (channel_sweep(engine, scenes[: args.sweep_scenes], args)
                          if SWEEP_CONTROL.control in measurable
                          else {"skipped": f"the {SWEEP_CONTROL.label} is not trained yet"}),
        "image_prompt": lambda: ({"rows": image_prompt(engine, scenes[: args.image_scenes], args)}
                                 if trained_image or args.random_controls else {"skipped": "no IP-Adapter trained yet"}),
    }
    # in PARTS' order: (e) first, as its SD 1.5 engine is the likeliest to fail (memory) and needs no trained control
    for part in PARTS:
        if part in (args.only or PARTS):
            report[part] = measurers[part]()
            lap(part)
    report["seconds"] = {**seconds, "total": time.perf_counter() - started}
    return report


def cost_report(engine: Engine, scenes: list[Rendering], args: argparse.Namespace) -> dict:
    """(e) on the engine's model and, with --sd15-size, on SD 1.5's architecture at random init."""
    cost = [cost_and_parity(engine, caption(scenes[0].scene), engine.native_size, args.cost_steps, args.repeats, scenes[0])]
    if args.sd15_size:
        sd15 = sd15_engine(args.device)
        attach_stand_ins(sd15, (CONTROL_ROWS[0], CONTROL_ROWS[2]))
        cost.append(cost_and_parity(sd15, SD15_PROMPT, args.sd15_size, args.sd15_steps, args.repeats, scenes[0]))
    return {"target_ratio": TARGET_RATIO, "models": cost,
            "parity": all(r["max_abs_pixel_difference"] <= 1e-4 for m in cost for r in m["rows"] if m["dtype"] == "float32"),
            "meets_target": all(r["ratio"] <= TARGET_RATIO for m in cost for r in m["rows"])}


def _trained(report: dict) -> str:
    """The trained controls measured, each with its training steps when its card says."""
    cards = report["cards"]
    return ", ".join(f"{name} ({cards[name]['steps']} steps)" if cards.get(name) else name
                     for name in report["trained_controls"]) or "none"


def _pct(value: float) -> str:
    return f"{value:.0%}"


def table(report: dict) -> str:
    lines = [
        "# Structure control: fidelity, text under control, channel independence, image prompt, cost",
        "",
        (f"Model `{report['model']}` on {report['device']} ({report['device_name']}, {report['torch_threads']} torch "
         f"threads); DDIM {report['steps']} steps, prompt weight {report['guidance_scale']:g}, control scale 1 unless "
         f"said; held-out scenes (studio.structure.training.held_out_scenes), scene k with seed k. Trained controls: "
         f"{_trained(report)}; image prompt trained: "
         f"{'yes' if report['trained_image_prompt'] else 'no'}"
         + (f"; random-init stand-ins: {', '.join(report['random_stand_ins'])}" if report["random_stand_ins"] else "")
         + f". Whole run: {report['seconds']['total'] / 60:.1f} min: `{report['command']}`"
         + "".join(f"; {part} rerun since: `{command}`" for part, command in report.get("part_commands", {}).items()
                   if command != report["command"])
         + "."),
        "",
        f"## (a, b) Control fidelity and the text under control (goals: layout IoU >= {GOAL_IOU:g}, text >= {GOAL_TEXT:.0%})",
        "",
        ("IoU: the generated objects' mask (pixels far from the generated background colour) vs the scene's object mask the "
         "map was drawn from. Text: each object's colour and shape and the background, named in the prompt, judged by pixels. "
         "The card's IoU: the control's training run on the same scenes and seeds through diffusers' own pipeline."),
        "",
        (f"| control | scenes | IoU mean | IoU median | IoU >= {GOAL_IOU:g} | background | colour | shape | text obeyed | "
         "card's IoU (diffusers) |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["fidelity"]:
        if "skipped" in row:
            lines.append(f"| {row['label']} | skipped: {row['skipped']} ||||||||")
            continue
        card = "–" if row.get("card_iou_mean") is None else f"{row['card_iou_mean']:.3f}"
        lines.append(f"| {row['label']} | {row['scenes']} | **{row['iou_mean']:.3f}** | {row['iou_median']:.3f} | "
                     f"{_pct(row['iou_at_goal'])} | {_pct(row['background'])} | {_pct(row['colour'])} | "
                     f"{_pct(row['shape'])} | **{_pct(row['text_obeyed'])}** | {card} |")
    sweep = report["sweep"]
    lines += ["", f"## (c) Channel independence: the {SWEEP_CONTROL.label}", ""]
    if "skipped" in sweep:
        lines.append(f"Skipped: {sweep['skipped']}.")
    else:
        lines += [
            (f"{sweep['scenes']} scenes per setting. 'channel': the control as its own guidance term w(t) (eps_k - eps_u), "
             "eps_k = the null text with this control only; 'text weight' is the prompt's CFG weight beside a channel "
             f"weight of {CHANNEL_WEIGHT:g}. Windows are fractions of the run (diffusers' control_guidance_start/end). "
             "Caption 'full' names each object's size and position, which already fixes the coarse layout (the "
             "control only sharpens it); 'no sizes or positions' leaves the layout to the control alone, what a window "
             "or a schedule over the run is measured on."),
            "",
            ("| family | caption | setting | text weight | mode | scale | window | channel weight | schedule | IoU mean | "
             "background | colour | shape |"),
            "|---|---|---|---:|---|---:|---|---:|---|---:|---:|---:|---:|",
        ]
        for row in sweep["rows"]:
            weight = "–" if row["channel_weight"] is None else f"{row['channel_weight']:g}"
            lines.append(f"| {row['family'].removesuffix(LAYOUT_FREE)} | {row['caption']} | {row['x']} | "
                         f"{row['text_weight']:g} | {row['mode']} | {row['scale']:g} | {row['start']:g}-{row['stop']:g} | {weight} | {row['schedule'] or '–'} | "
                         f"**{row['iou_mean']:.3f}** | {_pct(row['background'])} | {_pct(row['colour'])} | {_pct(row['shape'])} |")
        lines += ["", "What each family should show:", ""]
        lines += [f"- {check}: {'yes' if ok else '**no**'}" for check, ok in sweep["checks"].items()]
        lines += ["", "![sweep](structure.png)"]
    image = report["image_prompt"]
    lines += ["", "## (d) Image prompt: agreement with the reference image (IP-Adapter, scale 1)", ""]
    if "skipped" in image:
        lines.append(f"Skipped: {image['skipped']}.")
    else:
        lines += [
            ("The reference is the scene's own rendering; background / colour / shape: the judged generated ones equal "
             "the reference's; IoU: its arrangement."),
            "",
            "| setting | scenes | background | object colour | shape | IoU mean |", "|---|---:|---:|---:|---:|---:|",
        ]
        lines += [f"| {row['label']} | {row['scenes']} | {_pct(row['background'])} | {_pct(row['colour'])} | "
                  f"{_pct(row['shape'])} | {row['iou_mean']:.3f} |" for row in image["rows"]]
    cost = report["cost"]
    lines += [
        "", (f"## (e) Cost and parity vs diffusers (diffusers' default mode, guidance {PEER_GUIDANCE:g}; target <= "
             f"{TARGET_RATIO:g}x)"), "",
        ("Same modules, seed 0, DDIM; medians of interleaved runs after a warm-up. 'vs plain': our structured run over our "
         "plain generation (same prompt, seed and steps)."),
        "",
        "| model | size | steps | dtype | peer | ours s | diffusers s | ratio | s/step (plain) | vs plain | max pixel diff |",
        "|---|---:|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for model in cost["models"]:
        for row in model["rows"]:
            lines.append(f"| {model['model']} | {model['size']} | {model['steps']} | {model['dtype']} | {row['peer']} | "
                         f"{row['median_ours_s']:.3f} | {row['median_diffusers_s']:.3f} | **{row['ratio']:.3f}x** | "
                         f"{row['seconds_per_step']:.4f} ({model['plain_seconds_per_step']:.4f}) | {row['vs_plain']:.2f}x | "
                         f"{row['max_abs_pixel_difference']:.1e} |")
    lines += ["", (f"Pixel parity (<= 1e-4, fp32): {'yes' if cost['parity'] else '**no**'}; every ratio within target: "
                   f"{'yes' if cost['meets_target'] else '**no**'}.")]
    return "\n".join(lines) + "\n"


def figure(report: dict) -> Image.Image:
    """(c) as four charts: IoU and colours vs control scale, vs window, vs channel weight, vs text weight."""
    rows = report["sweep"]["rows"]

    def series(family: str, x_of=lambda row: row["x"]) -> dict:
        chosen = [row for row in rows if row["family"] == family]
        xs = [x_of(row) for row in chosen]
        return {"IoU x100": (xs, [100 * row["iou_mean"] for row in chosen]),
                "% colours right": (xs, [100 * row["colour"] for row in chosen])}

    def ious(family: str, x_of=lambda row: row["x"]) -> dict:
        """IoU on the full caption and on the caption without sizes and positions."""
        return {f"IoU x100, {caption_kind}": series(family + suffix, x_of)["IoU x100"]
                for caption_kind, suffix in (("full caption", ""), ("layout from the control", LAYOUT_FREE))}

    windows = [row["x"] for row in rows if row["family"] == "window"]
    charts = [
        line_chart(ious("control scale"), "control scale", "IoU x100", "control scale (balanced)",
                   size=(340, 220), markers=True, y_range=(0, 100)),
        line_chart(ious("window", lambda row: windows.index(row["x"])), "window: " + ", ".join(
            f"{i}={x}" for i, x in enumerate(windows)), "IoU x100", "window (start-stop)",
            size=(340, 220), markers=True, y_range=(0, 100)),
        line_chart(series("channel weight"), "control channel weight", "IoU x100 / %", "control as its own channel",
                   size=(340, 220), markers=True, y_range=(0, 100)),
        line_chart(series("text weight"), f"text weight (control channel {CHANNEL_WEIGHT:g})", "IoU x100 / %",
                   "text weight beside the control", size=(340, 220), markers=True, y_range=(0, 100)),
    ]
    return side_by_side(charts)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    command = " ".join(["python bench/structure.py", *argv])
    report = {"command": command, **measure(args)}
    if args.only:  # the report being updated, with these parts remeasured and the command that measured each part
        previous = json.loads((args.out / "structure.json").read_text())
        commands = {**previous.get("part_commands", dict.fromkeys(PARTS, previous["command"])),
                    **dict.fromkeys(args.only, command)}
        report = {**previous, **{part: report[part] for part in args.only}, "part_commands": commands}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "structure.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "structure.md").write_text(table(report))
    if "rows" in report["sweep"]:
        figure(report).save(args.out / "structure.png")
    print(table(report))
    return report


if __name__ == "__main__":
    main()
