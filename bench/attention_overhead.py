"""Cost of live cross-attention maps: the same generation with capture on vs off.

Runs on the embedded model (whatever `Engine()` loads by default) with one seed, prompt and step
count; alternates off/on runs after a warm-up and compares medians. Target: on/off <= 1.25.
Writes bench/results/attention_overhead.json and .md.

    python bench/attention_overhead.py [--steps 25] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from studio.engine import Engine  # noqa: E402
from studio.specs import GenerateSpec  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_RATIO = 1.25
PROMPT = "a big red circle on the left and a small blue square on the right"


def timed_run(engine: Engine, spec: GenerateSpec) -> float:
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in engine.generate(spec):
        pass
    if engine.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model source (default: the embedded model)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    engine = Engine(args.model, device=args.device)
    # Same events either way except the maps: previews at the same steps, maps every 5 steps (UI default).
    base = GenerateSpec(PROMPT, seed=0, steps=args.steps, preview_every=5, attention_every=5)
    off, on = base, GenerateSpec(**{**base.to_dict(), "capture_attention": True})
    timed_run(engine, off), timed_run(engine, on)  # warm-up: allocator, kernels, lazy imports
    seconds = {"off": [], "on": []}
    for _ in range(args.repeats):  # interleaved so drift (other load, clocks) hits both alike
        seconds["off"].append(timed_run(engine, off))
        seconds["on"].append(timed_run(engine, on))
    median_off, median_on = statistics.median(seconds["off"]), statistics.median(seconds["on"])
    ratio = median_on / median_off

    result = {
        "model": engine.model_name,
        "device": str(engine.device),
        "device_name": torch.cuda.get_device_name(engine.device) if engine.device.type == "cuda" else (platform.processor() or platform.machine()),
        "torch_threads": torch.get_num_threads(),
        "steps": args.steps,
        "repeats": args.repeats,
        "native_size": engine.native_size,
        "seconds": seconds,
        "median_off_s": median_off,
        "median_on_s": median_on,
        "ratio_on_over_off": ratio,
        "target_ratio": TARGET_RATIO,
        "meets_target": ratio <= TARGET_RATIO,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "attention_overhead.json").write_text(json.dumps(result, indent=2) + "\n")
    (RESULTS / "attention_overhead.md").write_text(
        "# Attention-map capture overhead\n\n"
        f"Model `{engine.model_name}` ({engine.native_size}px) on `{engine.device}` "
        f"({result['device_name'] or 'unknown'}, {result['torch_threads']} torch threads), "
        f"{args.steps} steps, median of {args.repeats} interleaved runs after one warm-up each.\n\n"
        "| capture | median seconds |\n|---|---|\n"
        f"| off | {median_off:.3f} |\n| on (maps every 5 steps) | {median_on:.3f} |\n\n"
        f"**Ratio on/off: {ratio:.3f}** (target <= {TARGET_RATIO}) -> "
        f"{'meets' if ratio <= TARGET_RATIO else 'MISSES'} the target.\n"
    )
    print(f"capture off {median_off:.3f}s, on {median_on:.3f}s, ratio {ratio:.3f} (target <= {TARGET_RATIO})")


if __name__ == "__main__":
    main()
