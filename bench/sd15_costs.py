"""Every cost ratio of the benchmarks on SD 1.5's architecture (random weights) at one size, step count and
dtype: the GPU row (512x512, fp16, 50 steps on CUDA) or a small CPU row.

    generation          engine vs StableDiffusionPipeline        (generate_vs_diffusers.compare)
    attention capture   on vs off                                (attention_overhead.measure)
    SDEdit              vs StableDiffusionImg2ImgPipeline          (sdedit_vs_img2img.compare)
    DiffEdit            vs StableDiffusionDiffEditPipeline         (diffedit.run_ours / run_peer; time only)
    Prompt-to-Prompt    a P2P step vs a batch-4 CFG step           (p2p.cost)
    inversion           each method's seconds and UNet passes vs DDIM inversion's
  CUDA only, each after the resident engine is released:
    CPU offload         seconds and peak memory of the same generation, text encoder and UNet offloaded
    bfloat16            the generation comparison with engine and peer in bfloat16
    torch.compile       first job (compiling) and then the median, vs the eager engine
    out of memory       a job too big for a capped GPU raises DeviceOutOfMemoryError; the next job runs

Random weights make images meaningless but costs real (same layers, shapes and kernels). Results are
written after every section, so a run cut short keeps what it measured:
bench/results/sd15_costs_<device>.{json,md}.

    python bench/sd15_costs.py --device cuda          # the GPU row: 512x512, fp16, 50 steps
    python bench/sd15_costs.py --device cpu           # 256x256, fp32, 10 steps
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
import attention_overhead  # noqa: E402
import diffedit  # noqa: E402
import generate_vs_diffusers  # noqa: E402
import p2p  # noqa: E402
import sdedit_vs_img2img  # noqa: E402
from common import device_description, interleaved, sd15_folder, timed, write_results  # noqa: E402

from studio.engine import Engine  # noqa: E402
from studio.errors import DeviceOutOfMemoryError  # noqa: E402
from studio.events import Result  # noqa: E402
from studio.inversion import InversionSpec  # noqa: E402
from studio.specs import GenerateSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PHOTO = Path(__file__).resolve().parent.parent / "assets" / "examples" / "astronaut.jpg"
MODEL_NAME = "SD 1.5 architecture (random weights)"
PROMPT = "a photograph of an astronaut riding a horse"
INVERSION_METHODS = ("ddim", "negative_prompt", "null_text", "edict", "bdia")
OOM_CAP = 0.05  # fraction of the GPU's memory the out-of-memory check allows


def photo(size: int) -> np.ndarray:
    return np.asarray(Image.open(PHOTO).convert("RGB").resize((size, size), Image.Resampling.LANCZOS))


def diffedit_cost(engine: Engine, size: int, steps: int, repeats: int) -> dict:
    """The whole DiffEdit edit (mask, start state, masked edit) on both sides, as bench/diffedit.py runs it."""
    case = {"image": photo(size), "source": "an astronaut on the moon", "target": "a robot on the moon", "seed": 0}
    peer = diffedit.peer_pipeline(engine)
    timing = interleaved(engine.device, {"ours": lambda: diffedit.run_ours(engine, case, steps, "inversion"),
                                         "diffusers": lambda: diffedit.run_peer(peer, case, steps)}, repeats)
    median = timing["median"]
    return {"seconds": timing["seconds"], "median_ours_s": median["ours"], "median_diffusers_s": median["diffusers"],
            "ratio": median["ours"] / median["diffusers"], "peak_memory_mib": timing["peak_memory_mib"]}


def inversion_cost(engine: Engine, size: int, steps: int) -> dict:
    """Seconds and UNet passes of each method on one photograph (caption given, w = 7.5), vs DDIM inversion."""
    image = photo(size)
    rows = []
    for method in INVERSION_METHODS:
        spec = InversionSpec("an astronaut in a white spacesuit", method=method, steps=steps, keep_size=True)
        run = lambda: next(e for e in engine.invert(spec, image) if isinstance(e, Result))  # noqa: E731
        run()  # warm-up (kernels, allocator)
        cuda = engine.device.type == "cuda"
        if cuda:
            torch.cuda.reset_peak_memory_stats(engine.device)
        result = run()
        peak = torch.cuda.max_memory_allocated(engine.device) / 2**20 if cuda else None
        s = result.settings
        rows.append({"method": method, "seconds": s["inversion_seconds"], "inversion_unet_passes": s["inversion_unet_passes"],
                     "backward_passes": s["backward_passes"], "latent_mse": s["latent_mse"], "peak_memory_mib": peak})
    ddim = rows[0]
    for row in rows:
        row["seconds_vs_ddim"] = row["seconds"] / ddim["seconds"]
        row["passes_vs_ddim"] = (row["inversion_unet_passes"] + row["backward_passes"]) / ddim["inversion_unet_passes"]
    return {"rows": rows}


def release(engine: Engine) -> None:
    del engine.model
    gc.collect()
    torch.cuda.empty_cache()


def offload_cost(folder: Path, spec: GenerateSpec, repeats: int, resident: dict) -> dict:
    engine = Engine(str(folder), device="cuda", offload=True)
    run = lambda: next(e for e in engine.generate(spec) if isinstance(e, Result)).pixels  # noqa: E731
    timing = interleaved(engine.device, {"offload": run}, repeats)
    median = timing["median"]["offload"]
    release(engine)
    return {"median_offload_s": median, "median_resident_s": resident["median_engine_s"],
            "ratio": median / resident["median_engine_s"], "peak_offload_mib": timing["peak_memory_mib"]["offload"],
            "peak_resident_mib": resident["peak_memory_mib"]["engine"],
            "max_abs_pixel_difference": float(np.abs(timing["values"]["offload"] - resident["pixels"]).max())}


def bf16_generation(folder: Path, size: int, steps: int, repeats: int) -> dict:
    """The generation comparison again with every component in bfloat16 (engine and peer alike)."""
    engine = Engine(str(folder), device="cuda", dtype=torch.bfloat16)
    engine.model.name = MODEL_NAME
    row = generate_vs_diffusers.compare(engine, PROMPT, size, steps, repeats)
    release(engine)
    return row


def compile_cost(folder: Path, spec: GenerateSpec, repeats: int, resident: dict) -> dict:
    engine = Engine(str(folder), device="cuda", compile_unet=True)
    run = lambda: next(e for e in engine.generate(spec) if isinstance(e, Result)).pixels  # noqa: E731
    first_seconds, _ = timed(engine.device, run)
    seconds = [timed(engine.device, run)[0] for _ in range(repeats)]
    pixels = run()
    release(engine)
    median = statistics.median(seconds)
    return {"first_job_s": first_seconds, "median_compiled_s": median, "median_eager_s": resident["median_engine_s"],
            "ratio": median / resident["median_engine_s"],
            "max_abs_pixel_difference": float(np.abs(pixels - resident["pixels"]).max())}


def out_of_memory_check(engine: Engine, spec: GenerateSpec) -> dict:
    """Cap the process at OOM_CAP of the GPU's memory, ask for a job far beyond it, then a normal one."""
    total = torch.cuda.get_device_properties(engine.device).total_memory
    torch.cuda.set_per_process_memory_fraction(OOM_CAP)  # the current device (it takes no device without index)
    huge = GenerateSpec(PROMPT, seed=0, steps=2, width=2048, height=2048, batch_size=8, preview_every=3)
    try:
        next(e for e in engine.generate(huge) if isinstance(e, Result))
        message = None
    except DeviceOutOfMemoryError as error:
        message = str(error)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    after = next(e for e in engine.generate(spec) if isinstance(e, Result))
    return {"cap_gib": total * OOM_CAP / 2**30, "error_message": message, "raised_clear_error": message is not None,
            "next_job_ran": after.pixels.shape[0] == spec.batch_size}


def _mib(value: float | None) -> float | None:
    return None if value is None else value / 2**20


# section -> (label, our seconds, the peer's seconds, ratio, target, (our, the peer's) peak MiB)
RATIO_ROWS: dict[str, tuple[str, str, str, str, float, Callable[[dict], tuple]]] = {
    "generate": ("generation vs StableDiffusionPipeline (max pixel diff {max_abs_pixel_difference:.1e})",
                 "median_engine_s", "median_diffusers_s", "ratio", 1.05,
                 lambda r: (r["peak_memory_mib"]["engine"], r["peak_memory_mib"]["diffusers"])),
    "attention": ("attention capture on vs off", "median_on_s", "median_off_s", "ratio_on_over_off", 1.25,
                  lambda r: (r["peak_memory_mib"]["on"], r["peak_memory_mib"]["off"])),
    "sdedit": ("SDEdit vs img2img (strength {strength})", "median_sdedit_s", "median_img2img_s", "ratio", 1.05,
               lambda r: (r["peak_memory_mib"]["sdedit"], r["peak_memory_mib"]["img2img"])),
    "diffedit": ("DiffEdit vs StableDiffusionDiffEditPipeline", "median_ours_s", "median_diffusers_s", "ratio", 1.1,
                 lambda r: (r["peak_memory_mib"]["ours"], r["peak_memory_mib"]["diffusers"])),
    "p2p": ("P2P step vs batch-4 CFG step (seconds per step)", "p2p_seconds_per_step", "cfg_batch4_seconds_per_step",
            "ratio", 1.3, lambda r: (_mib(r["p2p_peak_bytes"]), _mib(r["cfg_peak_bytes"]))),
}


def markdown(report: dict) -> list[str]:
    s = report["sections"]
    lines = [f"# Costs on {MODEL_NAME}, {report['size']}x{report['size']}, {report['dtype']}, {report['steps']} steps",
             "",
             f"Device: {report['device_name']} ({report['device']}), {report['torch_threads']} torch threads. "
             f"`python bench/sd15_costs.py --device {report['device']} --size {report['size']} --steps {report['steps']}`. "
             "Medians of interleaved runs after a warm-up; peak memory is the CUDA allocator's peak during a run.",
             "", "| comparison | ours s | peer s | ratio | target | peak MiB ours / peer |", "|---|---|---|---|---|---|"]

    for key, (label, ours, peer, ratio, target, peaks) in RATIO_ROWS.items():
        if key in s:
            r = s[key]
            peak_ours, peak_peer = peaks(r)
            peak = "n/a on CPU" if peak_ours is None else f"{peak_ours:.0f} / {peak_peer:.0f}"
            lines.append(f"| {label.format(**r)} | {r[ours]:.4g} | {r[peer]:.4g} | **{r[ratio]:.3f}x** | <= {target} | "
                         f"{peak} |")
    if "inversion" in s:
        lines += ["", "## Inversion: each method vs DDIM inversion (one photograph, w = 7.5)", "",
                  "| method | seconds | x DDIM | UNet passes | backward | passes x DDIM | latent MSE | peak MiB |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in s["inversion"]["rows"]:
            lines.append(f"| {r['method']} | {r['seconds']:.2f} | {r['seconds_vs_ddim']:.2f} | {r['inversion_unet_passes']} | "
                         f"{r['backward_passes']} | {r['passes_vs_ddim']:.1f} | {r['latent_mse']:.3g} | "
                         f"{'n/a' if r['peak_memory_mib'] is None else round(r['peak_memory_mib'])} |")
    if "offload" in s:
        r = s["offload"]
        lines += ["", "## CPU offload, torch.compile, out of memory (CUDA)", "",
                  f"- CPU offload (text encoder and UNet in CPU memory): {r['median_offload_s']:.3f} s vs "
                  f"{r['median_resident_s']:.3f} s resident (**{r['ratio']:.2f}x**); peak GPU memory "
                  f"{r['peak_offload_mib']:.0f} MiB vs {r['peak_resident_mib']:.0f} MiB; max pixel difference "
                  f"{r['max_abs_pixel_difference']:.1e}."]
    if "bf16" in s:
        r = s["bf16"]
        lines.append(f"- bfloat16 generation: {r['median_engine_s']:.3f} s vs {r['median_diffusers_s']:.3f} s for "
                     f"StableDiffusionPipeline in bfloat16 (**{r['ratio']:.3f}x**); peak "
                     f"{r['peak_memory_mib']['engine']:.0f} / {r['peak_memory_mib']['diffusers']:.0f} MiB; max pixel "
                     f"difference {r['max_abs_pixel_difference']:.1e}.")
    if "compile" in s:
        r = s["compile"]
        lines.append(f"- torch.compile of the UNet: first job {r['first_job_s']:.1f} s (compiling), then "
                     f"{r['median_compiled_s']:.3f} s vs {r['median_eager_s']:.3f} s eager (**{r['ratio']:.2f}x**); "
                     f"max pixel difference {r['max_abs_pixel_difference']:.1e}.")
    if "out_of_memory" in s:
        r = s["out_of_memory"]
        lines.append(f"- Out of memory (GPU capped at {r['cap_gib']:.0f} GiB, 8 images at 2048x2048): "
                     f"clear error raised: {r['raised_clear_error']} (\"{r['error_message']}\"); "
                     f"the next job ran: {r['next_job_ran']}.")
    for name, error in report["errors"].items():
        lines.append(f"- {name}: failed: `{error}`")
    if report.get("note"):
        lines += ["", report["note"]]
    return lines


def run_section(report: dict, name: str, measure: Callable[[], dict], out: Path) -> None:
    """Measure one section into the report and rewrite the results; a failure is reported, the others still run."""
    started = time.perf_counter()
    try:
        report["sections"][name] = measure()
    except Exception as error:
        traceback.print_exc()
        report["errors"][name] = f"{type(error).__name__}: {error}"
    print(f"{name}: {time.perf_counter() - started:.1f} s", flush=True)
    write_results(out, f"sd15_costs_{report['device'].split(':')[0]}", report, markdown(report))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None)
    parser.add_argument("--size", type=int, default=None, help="default: 512 on CUDA, 256 on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="default: 50 on CUDA, 10 on the CPU")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", default="", help="comma-separated sections (default: all)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cuda = device.type == "cuda"
    args.size = args.size or (512 if cuda else 256)
    args.steps = args.steps or (50 if cuda else 10)
    chosen = set(filter(None, args.only.split(",")))
    with sd15_folder() as folder:
        engine = Engine(str(folder), device=str(device))
        engine.model.name = MODEL_NAME
        report: dict[str, Any] = {**device_description(device), "model": MODEL_NAME, "size": args.size,
                                  "steps": args.steps, "repeats": args.repeats,
                                  "dtype": str(engine.model.dtype).replace("torch.", ""), "sections": {}, "errors": {}}
        size, steps, repeats = args.size, args.steps, args.repeats
        plain = GenerateSpec(PROMPT, seed=0, steps=steps, guidance_scale=generate_vs_diffusers.GUIDANCE, width=size,
                             height=size, preview_every=steps + 1)
        sections: list[tuple[str, Callable[[], dict]]] = [
            ("generate", lambda: generate_vs_diffusers.compare(engine, PROMPT, size, steps, repeats)),
            ("attention", lambda: attention_overhead.measure(engine, PROMPT, size, steps, repeats)),
            ("sdedit", lambda: sdedit_vs_img2img.compare(engine, "a red ball on a blue table", size, steps, 0.6, repeats)),
            ("diffedit", lambda: diffedit_cost(engine, size, steps, repeats)),
            ("p2p", lambda: p2p.cost(engine, steps, repeats, size)),
            ("inversion", lambda: inversion_cost(engine, size, steps)),
        ]
        if device.type == "cuda":
            sections.append(("out_of_memory", lambda: out_of_memory_check(engine, plain)))
        for name, measure in sections:
            if not chosen or name in chosen:
                run_section(report, name, measure, args.out)
        if device.type == "cuda" and "generate" in report["sections"]:
            resident = {**report["sections"]["generate"],
                        "pixels": next(e for e in engine.generate(plain) if isinstance(e, Result)).pixels}
            release(engine)  # the offloaded and the compiled engine each run alone on the GPU
            for name, measure in (("offload", lambda: offload_cost(folder, plain, repeats, resident)),
                                  ("bf16", lambda: bf16_generation(folder, size, steps, repeats)),
                                  ("compile", lambda: compile_cost(folder, plain, repeats, resident))):
                if not chosen or name in chosen:
                    run_section(report, name, measure, args.out)
    return report


if __name__ == "__main__":
    main()
