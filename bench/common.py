"""Shared plumbing of the benchmarks: timing on any device, the device's description, and an engine
on SD 1.5's published architecture at random init (structure and speed need no real weights)."""

from __future__ import annotations

import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
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


def sd15_engine(device: str | None = None) -> Engine:
    """An Engine on SD 1.5's architecture with random weights (fp16 on CUDA, as for real weights)."""
    folder = Path(tempfile.mkdtemp(prefix="bench-sd15-"))
    try:
        random_pipeline(SD15).save_pretrained(folder)
        engine = Engine(str(folder), device=device)
    finally:
        shutil.rmtree(folder)
    engine.model.name = "SD 1.5 architecture (random weights)"
    return engine
