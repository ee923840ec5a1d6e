"""The skeleton every engine job shares, written once.

A job (studio.generation, studio.editing.*, studio.inversion) is a module with an entry point that
checks its inputs before any model work and returns `host.exclusive(job, ..., cost)` (its studio.costs.JobCost,
checked against the engine's cap before the job queues), and a generator that
does the work and streams events. What they all need from the engine is `ModelHost`; what they all
do around the maths is here: the seed, the step events with throttled previews, pixels to images, phase
timings and the common part of the reproduction record. (The cancel check is studio.events.check_cancelled,
beside the token: the sampler calls it too, and the maths does not import the job layer.)
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from studio import specs
from studio.conditioning import Cond, Tokens
from studio.costs import JobCost
from studio.events import CancelToken, Event, Preview, Progress
from studio.images import to_uint8
from studio.models import LoadedModel, decode_latents
from studio.sampling import StepState

if TYPE_CHECKING:  # studio.inversion imports this module: the type only, to avoid the import cycle
    from studio.inversion.result import Inversion

# Result.settings["job"]: which job made a result, and how the UI names it ("this PNG was made by DiffEdit")
JOB_LABELS = {
    "generate": "Generate", "sdedit": "SDEdit", "diffedit_mask": "DiffEdit mask", "diffedit": "DiffEdit",
    "p2p": "Prompt-to-Prompt", "invert": "Inversion", "personalize": "Personalize",
}
JOBS = tuple(JOB_LABELS)


class ModelHost(Protocol):
    """What a job needs from the engine (studio.engine.Engine): the resident model, prompt encoding and
    a turn on the model."""

    model: LoadedModel

    @property
    def model_name(self) -> str: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def native_size(self) -> int: ...

    @property
    def size_multiple(self) -> int: ...

    def tokenize(self, prompt: str, label: str = "") -> Tokens: ...

    def encode_prompt(self, tokens: Tokens) -> Cond: ...

    def encode_negative_prompt(self, tokens: Tokens) -> Cond: ...

    def null_conditioning(self) -> Cond: ...

    def exclusive(self, job: Iterator[Event], total_steps: int, cancel: CancelToken | None, workload: str,
                  cost: JobCost) -> Iterator[Event]: ...

    def concept_records(self) -> list[dict[str, Any]]: ...


def resolve_seed(seed: int | None, span: int = 1) -> int:
    """The seed a job runs with: `seed`, or a random one such that the `span` consecutive seeds a job
    may use (SDEdit's repeat k runs with seed + k) all lie within specs.SEED."""
    if seed is not None:
        return seed
    return secrets.randbelow(int(specs.SEED.high) - span + 2)


def to_images(pixels: np.ndarray) -> list[Image.Image]:
    """(B, H, W, 3) float pixels in [0, 1] -> 8-bit RGB images, rounded as StableDiffusionPipeline's
    numpy_to_pil rounds (tests/test_parity.py)."""
    return [Image.fromarray(to_uint8(p)) for p in pixels]


def step_events(state: StepState, steps: int, vae: AutoencoderKL, preview_every: int, done_before: int = 0,
                total: int | None = None, label: str = "") -> Iterator[Event]:
    """The events after sampling step state["i"] of a run of `steps`: Progress (counting `done_before`
    units of earlier work, out of `total`, default `steps`), and every `preview_every` steps a Preview of
    the decoded x0 prediction (not after the last step: the Result follows with the final image).
    `label` ("Edit: ") prefixes a "step k / n" message; without it the Progress has none."""
    step = state["i"] + 1
    message = f"{label}step {step} / {steps}" if label else ""
    yield Progress(done_before + step, total if total is not None else steps, message)
    if step % preview_every == 0 and step < steps:
        yield Preview(done_before + step, to_images(decode_latents(vae, state["denoised"])))


class Stopwatch:
    """Seconds per phase of a job: `lap("sampling")` closes the phase that ran since the last lap."""

    def __init__(self) -> None:
        self.started = self.last = time.perf_counter()
        self.phases: dict[str, float] = {}

    def lap(self, phase: str) -> float:
        now = time.perf_counter()
        self.phases[phase] = now - self.last
        self.last = now
        return self.phases[phase]

    def timings(self) -> dict[str, float]:
        """Every phase and the "total" up to now."""
        return {**self.phases, "total": time.perf_counter() - self.started}


def reproduction_record(host: ModelHost, job: str, job_fields: dict[str, Any], timings: dict[str, float] | None,
                        unet_evaluations: int | None, **measured: Any) -> dict[str, Any]:
    """Result.settings: the model, which job made the result (one of JOBS), the job's parameters (`job_fields`,
    usually asdict(spec)), the loaded concepts it ran with (name, kind, hash, scale: host.concept_records(), in
    place of the spec's names and scales), what the job resolved or measured (`seed=` the
    seed used overrides a spec's None; its inputs as image_record / mask_record / inversion_record), its timings
    and UNet evaluations. Timings and UNet evaluations of None are left out: a record that is a recipe only
    (DiffEdit's mask)."""
    if job not in JOBS:
        raise ValueError(f"Unknown job {job!r} for a reproduction record; one of {', '.join(JOBS)}.")
    cost = {"timings": timings, "unet_evaluations": unet_evaluations}
    concepts = {"concepts": records} if (records := host.concept_records()) else {}
    return {"model": host.model_name, "job": job, **job_fields, **concepts, **measured,
            **{k: v for k, v in cost.items() if v is not None}}


def _short_hash(data: bytes, shape: tuple[int, ...]) -> str:
    """First 16 hex digits of sha256 over an array's shape and bytes: names the pixels, not the file."""
    return hashlib.sha256(str(tuple(shape)).encode() + data).hexdigest()[:16]


def image_record(image: Image.Image) -> dict[str, Any]:
    """An input image as a record names it: the hash of its 8-bit RGB pixels, and its size. Of the image a job
    worked on (after the crop/resize its "preparation" note describes), so an edit of an inversion names the
    same pixels as the inversion did."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    return {"hash": _short_hash(pixels.tobytes(), pixels.shape), "width": image.width, "height": image.height}


def mask_record(mask: np.ndarray, source: str) -> dict[str, Any]:
    """A (H, W) bool mask as a record names it: its hash, the fraction of pixels it selects, and where it came
    from ("given": passed in, painted or sent; "Stage I": DiffEdit's own; "local blend": P2P's)."""
    selected = np.asarray(mask, dtype=bool)
    return {"hash": _short_hash(np.packbits(selected).tobytes(), selected.shape), "fraction": float(selected.mean()),
            "from": source}


def inversion_record(inversion: Inversion) -> dict[str, Any]:
    """What an edit of `inversion` records about it: its method, caption, steps and guidance scale, the settings
    its method read (Inversion.method_settings) and the inverted image."""
    return {
        "method": inversion.method, "prompt": inversion.prompt, "steps": inversion.steps,
        "guidance_scale": inversion.guidance_scale, **inversion.method_settings,
        "source_image": image_record(inversion.image),
    }
