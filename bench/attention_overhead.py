"""Cost of live cross-attention maps: the same generation with capture on vs off.

One seed, prompt and step count per model; off/on runs alternate after a warm-up and medians are
compared. Models: the embedded one (or --model) at its native size, and SD 1.5's architecture at
random init at --sd15-size (0 skips it). Target: on/off <= 1.25.
Writes bench/results/attention_overhead.json and .md.

    python bench/attention_overhead.py [--steps 25] [--repeats 5] [--device cpu] [--sd15-size 256 --sd15-steps 10]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import arguments, device_description, interleaved, peak_column, sd15_engine, write_results  # noqa: E402

from studio.engine import Engine  # noqa: E402
from studio.specs import GenerateSpec  # noqa: E402

TARGET_RATIO = 1.25
SHAPES_PROMPT = "a big red circle on the left and a small blue square on the right"
SD_PROMPT = "a photograph of an astronaut riding a horse"


def measure(engine: Engine, prompt: str, size: int, steps: int, repeats: int) -> dict:
    # Same events either way except the maps: previews at the same steps, maps every 5 steps (UI default).
    off = GenerateSpec(prompt, seed=0, steps=steps, width=size, height=size, preview_every=5, attention_every=5)
    on = GenerateSpec(**{**off.to_dict(), "capture_attention": True})
    timing = interleaved(engine.device, {"off": lambda: list(engine.generate(off)),
                                         "on": lambda: list(engine.generate(on))}, repeats)
    median = timing["median"]
    return {"model": engine.model_name, "size": size, "steps": steps, "seconds": timing["seconds"],
            "median_off_s": median["off"], "median_on_s": median["on"], "ratio_on_over_off": median["on"] / median["off"],
            "peak_memory_mib": timing["peak_memory_mib"]}


def main(argv: list[str] | None = None) -> dict:
    args = arguments(__doc__.splitlines()[0]).parse_args(argv)
    engine = Engine(args.model, device=args.device)
    rows = [measure(engine, SHAPES_PROMPT, engine.native_size, args.steps, args.repeats)]
    if args.sd15_size:
        rows.append(measure(sd15_engine(args.device), SD_PROMPT, args.sd15_size, args.sd15_steps, args.repeats))
    report = {**device_description(engine.device), "repeats": args.repeats, "target_ratio": TARGET_RATIO,
              "rows": rows, "meets_target": all(r["ratio_on_over_off"] <= TARGET_RATIO for r in rows)}
    write_results(args.out, "attention_overhead", report, [
        "# Attention-map capture overhead",
        "",
        f"Device: {report['device_name']} ({report['device']}), {report['torch_threads']} torch threads; maps every "
        f"5 steps (the UI's default), median of {args.repeats} interleaved runs after a warm-up. Target <= {TARGET_RATIO}x.",
        "",
        "| model | size | steps | capture off s | capture on s | on/off | peak MiB off / on |",
        "|---|---|---|---|---|---|---|",
        *(f"| {r['model']} | {r['size']} | {r['steps']} | {r['median_off_s']:.3f} | {r['median_on_s']:.3f} | "
          f"**{r['ratio_on_over_off']:.3f}x** | {peak_column(r['peak_memory_mib'], 'off', 'on')} |" for r in rows),
    ])
    return report


if __name__ == "__main__":
    main()
