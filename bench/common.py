"""Shared plumbing of the benchmarks: timing on any device, the device's description, and an engine
on SD 1.5's published architecture at random init (structure and speed need no real weights)."""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studio.architectures import SD15, random_pipeline  # noqa: E402
from studio.engine import Engine  # noqa: E402


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(device: torch.device, run: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of run() (device work included) and its return value."""
    synchronize(device)
    started = time.perf_counter()
    value = run()
    synchronize(device)
    return time.perf_counter() - started, value


def device_description(device: torch.device) -> dict[str, Any]:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": str(device), "device_name": name, "torch_threads": torch.get_num_threads()}


@contextmanager
def sd15_folder() -> Iterator[Path]:
    """SD 1.5's architecture with random weights saved as a diffusers folder, loaded as real weights would be."""
    with tempfile.TemporaryDirectory(prefix="bench-sd15-") as folder:
        random_pipeline(SD15).save_pretrained(folder)
        yield Path(folder)


def sd15_engine(device: str | None = None) -> Engine:
    """An Engine on SD 1.5's architecture with random weights (fp16 on CUDA, as for real weights)."""
    with sd15_folder() as folder:
        engine = Engine(str(folder), device=device)
    engine.model.name = "SD 1.5 architecture (random weights)"
    return engine


def peer_pipeline(engine: Engine, pipeline_class: type) -> Any:
    """A diffusers pipeline of `pipeline_class` on the engine's own loaded modules (same weights, device and
    dtype) with a DDIM scheduler from the model's config: the peer every comparison runs against."""
    from diffusers import DDIMScheduler

    model = engine.model
    pipeline = pipeline_class(
        vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer, unet=model.unet,
        scheduler=DDIMScheduler.from_config(model.scheduler_config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


def peak_memory_mib(device: torch.device, run: Callable[[], Any]) -> float | None:
    """Peak device memory (MiB) allocated during run(); None on the CPU (no per-call allocator statistics)."""
    if device.type != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats(device)
    run()
    return torch.cuda.max_memory_allocated(device) / 2**20


def interleaved(device: torch.device, runs: dict[str, Callable[[], Any]], repeats: int) -> dict[str, Any]:
    """Time each run `repeats` times, alternating between them after one warm-up each, so drift (other
    load, clocks) hits all alike. Returns seconds and medians per run, the last value each returned,
    and (CUDA) each run's peak memory."""
    for run in runs.values():  # warm-up: allocator, kernels, lazy imports
        run()
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    values: dict[str, Any] = {}
    for _ in range(repeats):
        for name, run in runs.items():
            elapsed, values[name] = timed(device, run)
            seconds[name].append(elapsed)
    return {
        "seconds": seconds,
        "median": {name: statistics.median(times) for name, times in seconds.items()},
        "values": values,
        "peak_memory_mib": {name: peak_memory_mib(device, run) for name, run in runs.items()},
    }


def arguments(description: str, steps: int = 25) -> argparse.ArgumentParser:
    """The options every peer comparison takes: the first model, its steps, repeats, SD 1.5's row, the output."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default=None, help="first model (default: the embedded one)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sd15-size", type=int, default=256, help="SD 1.5's architecture at this size; 0 skips it")
    parser.add_argument("--sd15-steps", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    return parser


def write_results(out: str | Path, name: str, report: dict, lines: list[str]) -> None:
    """bench/results/<name>.json (the report) and <name>.md (the table), and print the table."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def peak_column(memory: dict[str, float | None], first: str, second: str) -> str:
    return "n/a on CPU" if memory[first] is None else f"{memory[first]:.0f} / {memory[second]:.0f}"
