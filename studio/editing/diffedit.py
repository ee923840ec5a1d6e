"""DiffEdit (Couairon et al. 2023): find where a source and a target prompt disagree, then
regenerate only there under the target prompt.

    for event in engine.diffedit_mask(spec, image):   # Stage I: Mask events as the probes accumulate
        ...
    events = engine.diffedit(spec, image, mask=touched_up)   # Stage II (Stage I first when mask is None)

Stage I (Couairon et al.'s Step 1, computing the editing mask; they probe one noise level, we sum several):
at probe timesteps t in (0, strength_mask * T], the image's latents noised with a few
noise samples, x_t = sqrt(ab) x_0 + sqrt(1-ab) eps, go through the UNet under [uncond, source, target] in
ONE batched call; the CFG predictions of source and target are compared, as eps or as x0 (selectable), by
the L2 norm over latent channels, averaged over noise samples and summed over probes. The map is divided by
its maximum, upsampled to image size, thresholded at tau and cleaned by open/close (studio.editing.masks).

Stage II (Couairon et al.'s Step 3, decoding with mask guidance): the masked DDIM step under the target
prompt from t_edit, composed here: the DDIM step (Song et al. 2021, eq. 12) with the image's own x_0 in place of
x0_hat off the mask,
    x0_mix = (1 - M) x_0 + M x0_hat,   x_prev = sqrt(ab_prev) x0_mix + sqrt(1 - ab_prev) eps_hat,
taken by `MaskedDDIM`, a step rule for the one sampling loop. Its last step goes to ab = 1, so the latents
off the mask end exactly equal to the image's. It starts from the DDIM inversion of the image under the
source prompt (studio.inversion, the default; or a given inversion's trajectory) or from the image noised to
t_edit. Where it starts from an inversion, the latents off the mask follow that inversion's trajectory, as
Couairon et al. do (their Step 3, y_t = M y_t + (1 - M) x_t; diffusers' pipeline too):
x_prev = M x_prev + (1 - M) x_inv(t_prev). Re-noising x_0 off the mask instead (x0_mix alone) puts eps_hat,
the target prompt's guided prediction, off the mask, which the inversion never had there; on the embedded model that made 4 of 8 colour edits of bench/diffedit.py come out
as noise inside the mask, against 1 of 8 following the trajectory. An inversion with per-step corrections
(edit-friendly DDPM, Huberman-Spiegelglas et al. 2024) is edited with its own step inside the mask, the eta = 1
DDIM mean plus its stored correction (studio.inversion.sampling_rule), as that paper edits.

Decoding (ours): the latents off the mask end equal to the image's, but the embedded model's VAE decoder (as SD's)
is global -- self-attention over every latent cell in its mid-block, GroupNorm over the whole map -- so a changed
object still moves pixels far from the mask. Only the masked change is decoded (`decode_masked_change`): pixels of
latent cells off the mask are the decoding of the image's own latents, decoded in the same batch.

Structure (studio.structure): `spec.structure`, its maps in `structure_images`, steers Stage II and the DDIM
inversion it starts from (studio.structure.runtime.StructuredGuidance; a window is a fraction of the steps from
t_edit, as diffusers' ControlNet inpaint pipeline counts it); an inversion made under structure is edited under
it unless the spec brings its own. Stage I stays without it: its mask is where the two prompts' predictions for
the image disagree, and the same control on both would add where the control disagrees with the image (an outline
drawn elsewhere) to what the prompts change; the user draws that change with the control, not with the mask.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import ClassVar

import cv2
import numpy as np
import torch
from diffusers import DDIMScheduler
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from studio import schedule, specs
from studio.denoiser import Denoiser
from studio.editing import masks
from studio.conditioning import Cond, Tokens
from studio.costs import JobCost, guidance_passes, structure_passes
from studio.editing.sdedit import start_index
from studio.errors import InvalidInputError
from studio.events import CancelToken, DiffEditResult, Event, Mask, MaskResult, Notice, Progress, check_cancelled
from studio.generation import PreparedStructure, structure_attached
from studio.guidance import ClassifierFreeGuidance, Guider, cfg
from studio.images import ImageInput, encode_image, prepare_image, working_size
from studio.inversion.result import Inversion
from studio.jobs import (
    ModelHost,
    Stopwatch,
    image_record,
    inversion_record,
    mask_record,
    reproduction_record,
    resolve_seed,
    step_events,
    to_images,
)
from studio.inversion.ddim import ddim_inversion_steps
from studio.inversion.methods import edit_structure, sampling_guider, sampling_rule
from studio.inversion.steps import StepGrid
from studio.models import decode_latents
from studio.sampling import make_scheduler, sample_steps
from studio.structure.spec import StructureImages, StructureSpec

DEVIATIONS = ("eps", "x0")  # what Stage I compares: noise estimates (Couairon et al.) or x0 estimates (ours)
STARTS = ("inversion", "noise")  # where Stage II starts from
MASK_THRESHOLD = specs.Range(0.0, 1.0, 0.01, "Mask threshold")
DIFFEDIT_STRENGTH = specs.Range(0.05, 1.0, 0.05, "Strength")
PROBES = specs.Range(1, 10, 1, "Probe timesteps")
NOISE_SAMPLES = specs.Range(1, 16, 1, "Noise samples per probe")
CLEAN = specs.Range(0, 31, 1, "Open/close kernel (pixels)")
COVERAGE = specs.Range(0.0, 0.95, 0.05, "Latent cell coverage")


@dataclass(frozen=True)
class DiffEditSpec:
    RANGES: ClassVar[dict[str, specs.Range]] = {
        "steps": specs.STEPS, "guidance_scale": specs.GUIDANCE, "mask_strength": DIFFEDIT_STRENGTH,
        "edit_strength": DIFFEDIT_STRENGTH, "probes": PROBES, "noise_samples": NOISE_SAMPLES, "threshold": MASK_THRESHOLD,
        "clean_pixels": CLEAN, "cell_coverage": COVERAGE, "seed": specs.SEED,
    }

    source_prompt: str
    target_prompt: str
    steps: int = 25
    guidance_scale: float = 5.0
    # Stage I: 10 noise maps per mask as diffusers' generate_mask. Strength 0.6 and threshold 0.4 were chosen on
    # shapes-world colour edits, the benchmark's scenes included (mean IoU with the true mask 0.76 there, 0.58 at
    # diffusers' 0.5 / 0.5); a higher threshold misses object edges, a lower one spills onto neighbours.
    mask_strength: float = 0.6  # probes at timesteps up to this fraction of T
    probes: int = 2
    noise_samples: int = 5
    deviation: str = "eps"
    threshold: float = 0.4
    clean_pixels: int = 9  # open/close kernel; about one latent cell on SD-style VAEs (8 px)
    # Stage II
    edit_strength: float = 0.8  # t_edit / T (diffusers' inpaint_strength)
    # A latent cell is edited when more than this fraction of its pixels is in the mask. 0.25 (chosen on the
    # benchmark's scenes) keeps the background: "any pixel" (0) regenerated 1.4 dB more of it for the same success.
    cell_coverage: float = 0.25
    start: str = "inversion"
    # Decode only the masked change: the embedded VAE's decoder is global (mid-block self-attention over every latent
    # cell, GroupNorm over the whole map), so latents equal to the image's off the mask still decode to a moved
    # background once the object changes (pasting the true edited scene's own latents into the mask left 10-26 dB
    # outside it on bench/diffedit.py's scenes). On, the pixels of latent cells off the mask are the decoding of the
    # image's own latents (masks.decode_masked_change; one more decode in the same batch).
    decode_masked_change: bool = True
    # original pixels outside the mask after decoding (see masks.composite), as SDEdit: the decoder lets a big edit
    # shift pixels far from the mask (bench/results/first_edits.md)
    composite: bool = True
    keep_size: bool = False  # work at the upload's own size (images.working_size) instead of the model's native one
    seed: int | None = None
    preview_every: int = 5
    # control maps / image prompt (studio.structure) for Stage II, checked by the job; None edits an inversion under
    # its own
    structure: StructureSpec | None = None
    concepts: tuple[specs.ConceptUse, ...] = ()  # loaded concepts both stages run with (studio.personalize.concepts)

    def __post_init__(self) -> None:
        if isinstance(self.structure, dict):  # settings (JSON, PNG chunks) hold it as a dict
            object.__setattr__(self, "structure", StructureSpec(**self.structure))
        object.__setattr__(self, "concepts", specs.concept_uses(self.concepts))

    def validate(self) -> None:
        specs.check_ranges(self, self.RANGES)
        if self.deviation not in DEVIATIONS:
            raise InvalidInputError(f"Deviation must be one of {', '.join(DEVIATIONS)}, got {self.deviation!r}.")
        if self.start not in STARTS:
            raise InvalidInputError(f"Start must be one of {', '.join(STARTS)}, got {self.start!r}.")
        if round(self.edit_strength * self.steps) < 1:
            raise InvalidInputError(f"Strength {self.edit_strength:g} with {self.steps} steps leaves no step: raise either.")
        if " ".join(self.source_prompt.split()).lower() == " ".join(self.target_prompt.split()).lower():
            raise InvalidInputError(
                "The target prompt is the same as the source prompt: the two predictions agree everywhere, so the "
                "mask would be empty. Change the words for what should change (e.g. 'red' -> 'green')."
            )


# --------------------------------------------------------------------------------------------
# Pure maths


def probe_timesteps(strength: float, probes: int, num_train_timesteps: int) -> list[int]:
    """`probes` timesteps evenly spread over (0, strength * T], the highest first. Several probes
    are our extension: Couairon et al. 2023 (Step 1) noise the image at one strength, 0.5."""
    top = strength * num_train_timesteps
    return [max(0, round(top * k / probes) - 1) for k in range(probes, 0, -1)]


def deviation_map(source: Tensor, target: Tensor) -> Tensor:
    """D = ||target - source||_2 over latent channels (B, C, h, w) -> (B, h, w): the difference of the two
    predictions of Couairon et al. 2023's Step 1, its size taken as the L2 norm over channels."""
    return (target - source).float().norm(dim=1)


def normalise_deviation(deviation: Tensor) -> np.ndarray:
    """The aggregated map (h, w) divided by its maximum, into [0, 1], as Couairon et al. 2023
    rescale theirs (Step 1)."""
    peak = deviation.max()
    return (deviation / peak if peak > 0 else deviation).cpu().numpy().astype(np.float32)


def upsample(soft: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) latent-resolution map -> (H, W), bilinear: the thresholded border follows the map between cells
    instead of the 8-pixel staircase of the latent grid."""
    return cv2.resize(soft, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def binary_mask(soft: np.ndarray, threshold: float, clean_pixels: int) -> np.ndarray:
    """M = normalised map > tau (Couairon et al. 2023, Step 1), then open/close (ours). (H, W) float -> (H, W) bool."""
    return masks.clean_mask(soft > threshold, clean_pixels)


def masked_ddim_step(x0_predicted: Tensor, eps_predicted: Tensor, x0_original: Tensor, mask: Tensor,
                     alpha_bar_prev: float | Tensor) -> Tensor:
    """Song et al. 2021 (DDIM) eq. 12, eta = 0, with x_0 kept off the mask:
    x_prev = sqrt(ab_prev) ((1-M) x_0 + M x0_hat) + sqrt(1-ab_prev) eps_hat."""
    mixed = (1 - mask) * x0_original + mask * x0_predicted
    return schedule.noise_to(mixed, eps_predicted, alpha_bar_prev)


class MaskedDDIM:
    """The masked DDIM update as a step rule for studio.sampling.sample_steps (told the step index).

    x0_hat and eps_hat come from the model output through schedule.to_x0 / to_eps (finite for v-prediction at
    zero terminal SNR). Step i goes to the alpha_bar of timesteps[i + 1], and the last one to ab = 1: the
    clean image, so off the mask the result is the original latents exactly. To keep the latents off the
    mask on an inversion's path instead, add the post-step hook masks.follow_off_mask."""

    def __init__(self, timesteps: Tensor, alphas_cumprod: Tensor, prediction_type: str, mask: Tensor,
                 original: Tensor):
        self.timesteps = timesteps
        self.alphas_cumprod = alphas_cumprod
        self.prediction_type = prediction_type
        self.mask = mask  # (1, 1, h, w)
        self.original = original  # (1, C, h, w)

    def scale_model_input(self, sample: Tensor, timestep: Tensor) -> Tensor:
        return sample  # VP state: the UNet takes it as it is

    def step_at(self, i: int, model_output: Tensor, timestep: Tensor, sample: Tensor) -> Tensor:
        alpha_bar = schedule.alpha_bar_at(self.alphas_cumprod, timestep)
        following = i + 1
        last = following == len(self.timesteps)
        alpha_bar_prev = 1.0 if last else schedule.alpha_bar_at(self.alphas_cumprod, self.timesteps[following])
        x0 = schedule.to_x0(model_output, sample, alpha_bar, self.prediction_type)
        eps = schedule.to_eps(model_output, sample, alpha_bar, self.prediction_type)
        return masked_ddim_step(x0, eps, self.original, self.mask, alpha_bar_prev)


def overlay(image: Image.Image, mask: np.ndarray, colour: tuple[int, int, int] = (255, 0, 255)) -> Image.Image:
    """The image with the mask tinted (half-transparent), for the live preview."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    tinted = np.where(mask[..., None], 0.5 * pixels + 0.5 * np.array(colour, np.float32), pixels)
    return Image.fromarray(tinted.round().astype(np.uint8))


# --------------------------------------------------------------------------------------------
# Jobs


PROBE_PASSES = 3  # a Stage I probe predicts the unconditional, source and target noise in one UNet call


def _check_prompts(engine: ModelHost, spec: DiffEditSpec) -> tuple[Tokens, Tokens]:
    spec.validate()
    return engine.tokenize(spec.source_prompt, "Source prompt"), engine.tokenize(spec.target_prompt, "Target prompt")


def _image_of(engine: ModelHost, spec: DiffEditSpec, image: ImageInput | None, inversion: Inversion | None) -> Image.Image:
    """The upload at the size the edit works at; an inversion's image at its own size, which its trajectory has."""
    if image is None and inversion is None:
        raise InvalidInputError("Upload an image to edit (or run an inversion first).")
    if image is None:
        image = inversion.image
    size = inversion.image.width if inversion is not None else working_size(
        image, engine.native_size, engine.size_multiple, spec.keep_size)
    return prepare_image(image, size).image


def diffedit_mask(engine: ModelHost, spec: DiffEditSpec, image: ImageInput | None = None,
                  inversion: Inversion | None = None, cancel: CancelToken | None = None) -> Iterator[Event]:
    """Stage I alone: Mask events after every probe, then a MaskResult. Raises InvalidInputError first.
    `spec.structure` is Stage II's (see the module docstring): the mask is found without it."""
    tokens = _check_prompts(engine, spec)
    prepared = _image_of(engine, spec, image, inversion)
    job = _mask_job(engine, spec, prepared, inversion, tokens, resolve_seed(spec.seed), cancel)
    return engine.exclusive(job, spec.probes, cancel, f"{spec.noise_samples} noise samples per probe",
                            JobCost(prepared.width, prepared.height, spec.probes, spec.noise_samples, PROBE_PASSES))


def diffedit(engine: ModelHost, spec: DiffEditSpec, image: ImageInput | None = None, mask: np.ndarray | None = None,
             inversion: Inversion | None = None, structure_images: StructureImages | None = None,
             cancel: CancelToken | None = None) -> Iterator[Event]:
    """Stage II with `mask` ((H, W) bool at the image's size, True = edit), or Stages I and II when mask is None.
    `inversion` (a studio.inversion.Inversion) supplies the image and its DDIM inversion when given;
    `structure_images` the maps and reference image of `spec.structure`'s rows."""
    tokens = _check_prompts(engine, spec)
    source = image if image is not None else (inversion.image if inversion is not None else None)
    prepared = _image_of(engine, spec, image, inversion)
    if mask is not None:
        mask = masks.prepare_mask(mask, np.asarray(source).shape[:2], prepared.width)
    structure = edit_structure(engine, spec.structure, structure_images, inversion, prepared.width, prepared.height)
    edit_steps = round(spec.edit_strength * (inversion.steps if inversion is not None else spec.steps))
    inversion_steps = edit_steps if spec.start == "inversion" and inversion is None else 0
    total = edit_steps + inversion_steps + (spec.probes if mask is None else 0)
    job = _diffedit(engine, spec, prepared, mask, inversion, tokens, resolve_seed(spec.seed), total, structure, cancel)
    edit_scale = inversion.guidance_scale if inversion is not None else spec.guidance_scale
    passes = (  # Stage I's probes over its noise samples, the w = 1 inverted start, Stage II's edit
        (spec.probes * spec.noise_samples * PROBE_PASSES if mask is None else 0)
        + inversion_steps * (1 + structure_passes(spec.structure, has_unconditional=False))
        + edit_steps * (guidance_passes(edit_scale) + structure_passes(spec.structure, edit_scale != 1)))
    return engine.exclusive(job, total, cancel, "one image",
                            JobCost(prepared.width, prepared.height, total, 1, passes / max(total, 1)))


def _encode(engine: ModelHost, image: Image.Image, tokens: tuple[Tokens, Tokens]) -> tuple[Tensor, Cond, Cond, Cond]:
    """What both stages start from, encoded once: the image's latents (1, C, h, w), source, target, null."""
    model = engine.model
    latents = encode_image(model.vae, image).to(model.dtype)
    source, target = (engine.encode_prompt(t) for t in tokens)
    return latents, source, target, engine.null_conditioning()


@torch.no_grad()
def _mask_job(engine: ModelHost, spec: DiffEditSpec, image: Image.Image, inversion: Inversion | None,
              tokens: tuple[Tokens, Tokens], seed: int, cancel: CancelToken | None) -> Iterator[Event]:
    yield from _stage_one(engine, spec, image, _encode(engine, image, tokens), seed, cancel, finish=True,
                          inversion=inversion)


def _stage_one(engine: ModelHost, spec: DiffEditSpec, image: Image.Image, encoded: tuple[Tensor, Cond, Cond, Cond],
               seed: int, cancel: CancelToken | None, finish: bool, inversion: Inversion | None = None) -> Iterator[Event]:
    """Stage I on `_encode`'s tensors; yields Mask events (and a MaskResult when `finish`, whose record names
    `inversion` when the image is one), returns (soft, binary)."""
    clock = Stopwatch()
    model = engine.model
    # 1. the encoded image and prompts, and the scheduler's alpha_bar table
    latents, source, target, uncond = encoded
    scheduler = make_scheduler("ddim", model.scheduler_config)
    denoiser = Denoiser(model, scheduler.alphas_cumprod)
    size = (image.height, image.width)
    generator = torch.Generator("cpu").manual_seed(seed)

    # 2. probes: the same noisy states under source and target, all noise samples in one UNet call
    total = torch.zeros(latents.shape[2:], device=engine.device)  # (h, w)
    timesteps = probe_timesteps(spec.mask_strength, spec.probes, len(scheduler.alphas_cumprod))
    soft = binary = None
    for done, t in enumerate(timesteps, start=1):
        check_cancelled(cancel, done - 1, len(timesteps), "probes")
        alpha_bar = schedule.alpha_bar_at(scheduler.alphas_cumprod, t)
        noise = randn_tensor((spec.noise_samples, *latents.shape[1:]), generator=generator, device=engine.device,
                             dtype=model.dtype)  # (S, C, h, w)
        x_t = schedule.noise_to(latents, noise, alpha_bar)
        timestep = torch.tensor(t, device=engine.device)
        uncond_out, source_out, target_out = denoiser.predict(x_t, timestep, [uncond, source, target])
        guided = [cfg(uncond_out, out, spec.guidance_scale) for out in (source_out, target_out)]
        convert = schedule.to_eps if spec.deviation == "eps" else schedule.to_x0
        source_pred, target_pred = (convert(g, x_t, alpha_bar, model.prediction_type) for g in guided)
        total += deviation_map(source_pred, target_pred).mean(0)  # mean over noise samples
        soft = upsample(normalise_deviation(total), size)
        binary = binary_mask(soft, spec.threshold, spec.clean_pixels)
        yield Progress(done, len(timesteps), f"Mask: probe {done} / {len(timesteps)} (t = {t})")
        yield Mask(done, len(timesteps), soft, label="DiffEdit mask", binary=binary, image=image)
    if finish:
        timings = clock.timings()
        mask_fraction = float(binary.mean())
        # the mask's recipe (no timings: a mask is not an image the PNG settings describe)
        settings = reproduction_record(engine, "diffedit_mask", {"method": "diffedit mask", **asdict(spec)}, None, None,
                                       seed=seed, probe_timesteps=timesteps, mask_fraction=mask_fraction,
                                       **_inputs_record(image, binary, "Stage I", inversion))
        yield MaskResult([overlay(image, binary)], settings, timings, denoiser.unet_evaluations, seed=seed,
                         image=image, soft=soft, binary=binary, mask_fraction=mask_fraction, probe_timesteps=timesteps)
    return soft, binary


@torch.no_grad()
def _diffedit(engine: ModelHost, spec: DiffEditSpec, image: Image.Image, mask: np.ndarray | None,
              inversion: Inversion | None, tokens: tuple[Tokens, Tokens], seed: int, total: int,
              structure: PreparedStructure | None, cancel: CancelToken | None) -> Iterator[Event]:
    clock = Stopwatch()
    model = engine.model
    for note in structure.notes if structure is not None else ():
        yield Notice(note)
    # 1. encode the image and the prompts (once: Stage I, when no mask was given, uses them too)
    encoded = _encode(engine, image, tokens)
    original, source, target, uncond = encoded  # original: (1, C, h, w)
    soft = None
    if mask is None:
        soft, mask = yield from _stage_one(engine, spec, image, encoded, seed, cancel, finish=False)
        _check_found_mask(spec, mask)
    clock.lap("mask")

    # 2. the latent mask
    latent_mask = masks.to_latent_mask(mask, tuple(original.shape[2:]), engine.device, model.dtype, spec.cell_coverage)
    if not latent_mask.any():
        raise InvalidInputError(
            f"The mask covers no latent cell by more than {spec.cell_coverage:g} of its pixels: paint a larger "
            "region (or lower the threshold)."
        )

    # 3. timesteps from t_edit and the start state: the given inversion's state at t_edit, the DDIM inversion
    #    of the image under the source prompt up to t_edit, or the image noised to t_edit; with an inversion,
    #    `path` holds its states from t_edit down: what the latents off the mask follow
    scheduler = make_scheduler("ddim", model.scheduler_config)
    denoiser = Denoiser(model, scheduler.alphas_cumprod)  # counts the inverted start's passes and the edit's
    done = spec.probes if soft is not None else 0
    if inversion is not None:
        scheduler.set_timesteps(inversion.steps, device=engine.device)  # the grid its corrections (if any) were made on
        first = start_index(inversion.steps, spec.edit_strength)
        timesteps = inversion.timesteps[first:].to(engine.device)
    else:
        scheduler.set_timesteps(spec.steps, device=engine.device)
        first = start_index(spec.steps, spec.edit_strength)
        timesteps = scheduler.timesteps[first:]
    # Stage II's guider: the target prompt, with the structure over the steps from t_edit
    guider = _edit_guider(spec, target, uncond, inversion, first)
    if structure is not None:
        guider = structure.wrap(model, guider, uncond, timesteps, scheduler.alphas_cumprod)
    with structure_attached(guider, model.unet, denoiser):
        path = None
        if inversion is not None:
            path = [state.to(device=engine.device, dtype=model.dtype) for state in inversion.trajectory[first:]]
        elif spec.start == "inversion":
            path = yield from _inverted_start(engine, denoiser, original, source, uncond, scheduler, first, done,
                                              total, structure, cancel)
            done += len(timesteps)
        if path is not None:
            x = path[0]
        else:
            x = _noised_start(engine, original, schedule.alpha_bar_at(scheduler.alphas_cumprod, timesteps[0]), seed)
        clock.lap("start")

        # 4. Stage II under the target prompt, through the one sampling loop: the masked DDIM step, or an inversion's
        #    own corrected step where it has corrections (edit-friendly DDPM: they carry the image, and
        #    Huberman-Spiegelglas et al. 2024 edit with them); off the mask `path` overrides either
        if inversion is not None and inversion.corrections is not None:
            stepper = sampling_rule(inversion, scheduler, model.prediction_type, first)
        else:
            stepper = MaskedDDIM(timesteps, scheduler.alphas_cumprod, model.prediction_type, latent_mask, original)
        off_mask = masks.follow_off_mask(latent_mask, path[1:]) if path is not None else None
        for state in sample_steps(denoiser, guider, stepper, timesteps, x, cancel, after_step=off_mask):
            x = state["x"]
            yield from step_events(state, len(timesteps), model.vae, spec.preview_every, done, total, "Edit: ")
    clock.lap("edit")

    # 5. decode (only the masked change, and optionally pasting the original pixels back outside the mask)
    if spec.decode_masked_change:
        edited, unedited = decode_latents(model.vae, torch.cat([x, original]))  # (H, W, 3) each, one decoder call
        pixels = masks.decode_masked_change(edited, unedited, latent_mask)[None]
    else:
        pixels = decode_latents(model.vae, x)  # (1, H, W, 3)
    if spec.composite:
        pixels = masks.composite(pixels[0], np.asarray(image, dtype=np.float32) / 255, mask)[None]
    clock.lap("decode")
    timings = clock.timings()
    unet_evaluations = denoiser.unet_evaluations + (spec.probes if soft is not None else 0)
    mask_from = "Stage I" if soft is not None else "given"
    settings = reproduction_record(engine, "diffedit", {"method": "diffedit", **asdict(spec)}, timings,
                                   unet_evaluations, seed=seed, mask_fraction=float(mask.mean()), mask_from=mask_from,
                                   **_inputs_record(image, mask, mask_from, inversion, structure))
    yield DiffEditResult(to_images(pixels), settings, timings, unet_evaluations, pixels, seed=seed, mask=mask,
                         mask_from=mask_from, mask_fraction=float(mask.mean()), soft=soft, latents=x,
                         original_latents=original, latent_mask=latent_mask)


def _inputs_record(image: Image.Image, mask: np.ndarray, mask_from: str, inversion: Inversion | None,
                   structure: PreparedStructure | None = None) -> dict[str, object]:
    """What a DiffEdit record names of its inputs: the image edited, the mask, the inversion it edits (or None) and
    the structure Stage II ran under (the spec's, or the inversion's own) with its maps."""
    record = {"source_image": image_record(image), "mask": mask_record(mask, mask_from),
              "source_inversion": inversion_record(inversion) if inversion is not None else None}
    if structure is not None:
        record.update(structure=asdict(structure.spec), structure_images=structure.record())
    return record


def _check_found_mask(spec: DiffEditSpec, mask: np.ndarray) -> None:
    """Stage I's mask must leave something to edit and something to keep."""
    if not mask.any():
        raise InvalidInputError(
            f"No pixel's deviation is above the threshold {spec.threshold:g}: lower the threshold, or make the "
            "target prompt differ from the source in what should change."
        )
    if mask.all():
        raise InvalidInputError(
            f"Every pixel's deviation is above the threshold {spec.threshold:g}, so nothing would be kept: "
            "raise the threshold."
        )


def _edit_guider(spec: DiffEditSpec, target: Cond, uncond: Cond, inversion: Inversion | None, first: int) -> Guider:
    """CFG under the target prompt; an inversion is edited as it is sampled back from step `first` on (its own
    guidance scale and, for null-text and negative-prompt inversion, its per-step null embeddings), which is
    what reconstructs it."""
    if inversion is None:
        return ClassifierFreeGuidance(cond=target, uncond=uncond, scale=spec.guidance_scale)
    return sampling_guider(inversion, target, uncond, first)


def _noised_start(engine: ModelHost, original: Tensor, alpha_bar: Tensor, seed: int) -> Tensor:
    """x_{t_edit} = sqrt(ab) x_0 + sqrt(1 - ab) eps with the run's seed (start="noise")."""
    generator = torch.Generator("cpu").manual_seed(seed)
    noise = randn_tensor(original.shape, generator=generator, device=engine.device, dtype=original.dtype)
    return schedule.noise_to(original, noise, alpha_bar)


def _inverted_start(engine: ModelHost, denoiser: Denoiser, original: Tensor, source: Cond, uncond: Cond,
                    scheduler: DDIMScheduler, first: int, done: int, total: int, structure: PreparedStructure | None,
                    cancel: CancelToken | None) -> Iterator[Event]:
    """DDIM inversion (studio.inversion) of the image under the source prompt, over the steps from t_edit down
    only (Couairon et al. 2023, Step 2: encoding). Guidance w = 1, the guidance-neutral map; yields
    Progress, returns its states from x_{t_edit} down to x_0 (the image's latents), as an Inversion's
    trajectory holds them. Under `structure` (the edit's), so the path the latents off the mask follow is the
    image's under the same control."""
    grid = StepGrid.of(scheduler, engine.model.prediction_type)
    tail = StepGrid(grid.timesteps[first:], grid.alpha_bar[first:], grid.alpha_bar_prev[first:], grid.prediction_type)
    guider: Guider = ClassifierFreeGuidance(cond=source, uncond=uncond, scale=1.0)
    if structure is not None:
        guider = structure.wrap(engine.model, guider, uncond, tail.timesteps, scheduler.alphas_cumprod)
    states = [original]
    for state in ddim_inversion_steps(denoiser, guider, tail, original, cancel):
        states.append(state["x"])
        yield Progress(done + state["i"] + 1, total, f"DDIM inversion: step {state['i'] + 1} / {len(tail)}")
    return states[::-1]
