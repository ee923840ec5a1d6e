"""Prompt-to-Prompt editing (Hertz et al. 2022, Algorithm 1) of generated and inverted images.

    events = engine.p2p(P2PSpec("a big red circle on a blue background",
                                "a big red square on a blue background", edit="word swap", seed=3))

The source and target prompts are denoised together in ONE batch ([uncond x 2, (source, target)]),
from the same initial latent, by the one sampling loop; attention control
(studio.attention.controllers) is installed for the run and told the step index by the sampler. A
real image is edited from its inversion (studio.inversion): its x_T, its timesteps and its guidance,
with null-text inversion's per-step unconditional embeddings or negative-prompt inversion's source
prompt as the negative branch (Miyake et al. 2023), so the unedited source branch reproduces the inversion's
reconstruction; a Direct Inversion's source is put back on its trajectory after every step (Ju et al. 2023, Alg. 1)
and an edit-friendly DDPM inversion's per-step corrections complete both images' steps (Huberman-Spiegelglas et
al. 2024): the inversion says how it is sampled (studio.inversion.sampling_rule, source_hook). Local blend is the loop's post-step hook: after every step the target keeps the
source's latents outside the blend mask (prompt-to-prompt's LocalBlend).

Structure (studio.structure): `spec.structure`, its maps in `structure_images`, wraps the guider
(studio.structure.runtime.StructuredGuidance), so source and target are drawn under the same control maps and the
source is Generate's image with that control and seed. An inversion made under structure is edited under the same
structure unless the spec brings its own, so its unedited source branch still reproduces its reconstruction.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import ClassVar

import numpy as np
import torch
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import Tensor

from studio import specs
from studio.attention.controllers import (
    DegreeWord,
    EditPlan,
    PromptToPromptController,
    WordWindow,
    blend_latents,
    edit_plan,
    local_blend_mask,
    refine_alignment,
    swap_alignment,
    token_equalizer,
    word_positions,
)
from studio.attention.maps import combined_maps
from studio.attention.processors import control_attention
from studio.conditioning import Cond, Tokens
from studio.costs import JobCost, guidance_passes, structure_passes
from studio.denoiser import Denoiser
from studio.errors import InvalidInputError
from studio.events import AttentionMaps, CancelToken, EditAttentionMaps, Event, Mask, Notice, P2PResult
from studio.generation import PreparedStructure, structure_attached
from studio.guidance import ClassifierFreeGuidance
from studio.inversion import METHOD_LABELS, Inversion, edit_structure, sampling_guider, sampling_rule, source_hook
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
from studio.models import decode_latents
from studio.prompt_weights import parse_weighted_prompt
from studio.sampling import chained, make_scheduler, sample_steps
from studio.structure.spec import StructureImages, StructureSpec

EDIT_TYPES = ("word swap", "refine", "style")  # re-weighting combines with any of them
# sampled through the one loop: plain DDIM with (per-step) CFG, the source kept on the trajectory (direct), or the
# eta = 1 DDIM mean plus per-step corrections (ddpm) -- studio.inversion.sampling_rule and source_hook
EDITABLE_INVERSIONS = ("null_text", "negative_prompt", "ddim", "fixed_point", "direct", "ddpm")
# The editable inversions, best first, as bench/edit_bench.py ranks P2P edits of them on the embedded model (60 edits
# of six kinds, bench/results/edit_bench.md, its RANKING): first the method of the best row over every method at
# InversionSpec's w and this one at other w (DDPM at w 2: 0.67 success, 29.3 dB background), then the rest at that w.
# The inversion the tabs make and pick for editing by default; tests/test_defaults.py holds it to the committed ranking.
EDIT_PREFERENCE = ("ddpm", "direct", "ddim", "null_text", "negative_prompt", "fixed_point")
WEIGHT = specs.WORD_WEIGHT  # the table's re-weights and the prompt's (word:w) share one cap
STYLE_ALPHA = specs.Range(0.0, 1.0, 0.05, "Style alpha")
BLEND_THRESHOLD = specs.Range(0.0, 1.0, 0.05, "Local-blend threshold")
SELF_LAYERS = specs.Range(0.0, 1.0, 0.125, "Self-attention layers (fraction of the latent side)")


@dataclass(frozen=True)
class P2PSpec:
    """A Prompt-to-Prompt edit. Windows are fractions of the run, like guidance windows; the defaults
    are prompt-to-prompt's (cross-attention replaced for 80% of the steps, self-attention for 40%,
    local blend from 20%, style alpha 0.2)."""

    RANGES: ClassVar[dict[str, specs.Range]] = {
        "steps": specs.STEPS, "guidance_scale": specs.GUIDANCE, "seed": specs.SEED, "blend_start": specs.START,
        "self_max_fraction": SELF_LAYERS, "style_alpha": STYLE_ALPHA, "blend_threshold": BLEND_THRESHOLD,
    }

    source_prompt: str
    target_prompt: str = ""  # "" = the source prompt (re-weighting only); may carry (word:1.3) weights
    edit: str = "refine"
    seed: int | None = None  # generated images; ignored when editing an inversion
    size: int | None = None  # side of the generated images in pixels (None: the model's native size); an
    # inversion is edited at its own size
    steps: int = 25
    guidance_scale: float = 5.0
    cross_start: float = 0.0
    cross_stop: float = 0.8
    self_start: float = 0.0
    self_stop: float = 0.4
    self_max_fraction: float = 1.0  # 1: every self-attention layer; SD's P2P used 0.25 (16x16 of 64x64)
    word_windows: tuple[WordWindow, ...] = ()  # per-word cross-attention windows
    reweights: tuple[tuple[str, float], ...] = ()  # (target word, column scale); all its occurrences
    degree_words: tuple[DegreeWord, ...] = ()
    style_alpha: float = 0.2
    blend_words: tuple[str, ...] = ()  # local blend: words of either prompt whose attention makes the mask
    blend_threshold: float = 0.5  # P2P used 0.3; on 16x16 latents (shapes-sd) 0.3 covers nearly the whole image
    blend_start: float = 0.2
    maps_every: int = 5  # stream attention maps and the blend mask every k steps (and at the last)
    # control maps / image prompt (studio.structure), checked by the job; None edits an inversion under its own
    structure: StructureSpec | None = None
    concepts: tuple[specs.ConceptUse, ...] = ()  # loaded concepts both images run with (studio.personalize.concepts)

    def __post_init__(self) -> None:
        # Settings (JSON) hold the nested tuples as lists and dicts; accept them as such.
        if isinstance(self.structure, dict):
            object.__setattr__(self, "structure", StructureSpec(**self.structure))
        object.__setattr__(self, "concepts", specs.concept_uses(self.concepts))
        windows = tuple(WordWindow(**w) if isinstance(w, dict) else w for w in self.word_windows)
        degrees = tuple(DegreeWord(**d) if isinstance(d, dict) else d for d in self.degree_words)
        object.__setattr__(self, "word_windows", windows)
        object.__setattr__(self, "degree_words", degrees)
        object.__setattr__(self, "reweights", tuple((str(w), float(s)) for w, s in self.reweights))
        object.__setattr__(self, "blend_words", tuple(self.blend_words))

    def validate(self, editing_inversion: bool, size_multiple: int = 8) -> None:
        if not self.source_prompt.strip() and not editing_inversion:
            raise InvalidInputError("The source prompt is empty: describe the image to generate and edit.")
        if self.edit not in EDIT_TYPES:
            raise InvalidInputError(f"Unknown edit {self.edit!r}; choose one of {', '.join(EDIT_TYPES)}.")
        specs.check_ranges(self, self.RANGES)
        if self.size is not None:
            specs.check_size("size", self.size, size_multiple)
        windows = [("Cross-attention window", self.cross_start, self.cross_stop),
                   ("Self-attention window", self.self_start, self.self_stop),
                   *((f"Window of {w.word!r}", w.start, w.stop) for w in self.word_windows)]
        for where, start, stop in windows:
            specs.START.check(f"{where} start", start)
            specs.STOP.check(f"{where} stop", stop)
            if start > stop:
                raise InvalidInputError(f"{where}: start ({start:g}) must not be after stop ({stop:g}).")
        for word, scale in self.reweights:
            WEIGHT.check(f"Re-weight of {word!r}", scale)
        if self.maps_every < 1:
            raise InvalidInputError("maps_every must be at least 1.")


@dataclass(frozen=True)
class PreparedEdit:
    """Everything checked and derived from a spec before model work (also the UI's token table)."""

    source: Tokens
    target: Tokens
    alignment: list[int | None]  # per target word: its source word, None for a new word
    equalizer: Tensor  # (T,)
    blend_columns: Tensor  # (2, T) 0/1: local-blend words' tokens in (source, target)

    def table(self) -> list[tuple[str, str, float]]:
        """(target word, source word it takes attention from or "", re-weight) per target word."""
        return [
            (word, self.source.words[i] if i is not None else "", float(self.equalizer[self.target.word_tokens[j][0]]))
            for j, (word, i) in enumerate(zip(self.target.words, self.alignment, strict=True))
        ]


def prepare_edit(engine: ModelHost, spec: P2PSpec, source_prompt: str) -> PreparedEdit:
    """Check a spec against the model's tokenizer and derive the alignment; raises InvalidInputError."""
    if "(" in source_prompt or ")" in source_prompt:
        raise InvalidInputError("Source prompt: weights such as (word:1.3) belong in the target prompt (re-weighting).")
    source = engine.tokenize(source_prompt, "Source prompt")
    weighted = parse_weighted_prompt(spec.target_prompt or source_prompt, "Target prompt")
    target = engine.tokenize(weighted.text, "Target prompt")
    if spec.edit == "word swap":
        alignment = swap_alignment(source.words, target.words)
    else:
        alignment = refine_alignment(source.words, target.words)
    word_weights = weighted.weights_of(target.words)
    for word, scale in spec.reweights:
        positions = word_positions(target, word)
        if not positions:
            raise InvalidInputError(
                f"Re-weight: {word!r} is not a word of the target prompt ({' '.join(target.words)})."
            )
        word_weights += [(j, scale) for j in positions]
    for window in spec.word_windows:
        if not word_positions(target, window.word):
            raise InvalidInputError(f"Word window: {window.word!r} is not a word of the target prompt.")
    blend_columns = torch.zeros(2, len(target.ids))
    for word in spec.blend_words:
        found = False
        for row, tokens in enumerate((source, target)):
            for j in word_positions(tokens, word):
                blend_columns[row, tokens.word_tokens[j]] = 1.0
                found = True
        if not found:
            raise InvalidInputError(f"Local blend: {word!r} is in neither the source nor the target prompt.")
    return PreparedEdit(source, target, alignment, token_equalizer(target, word_weights), blend_columns)


def plan_for(spec: P2PSpec, prepared: PreparedEdit, steps: int) -> EditPlan:
    return edit_plan(
        prepared.source, prepared.target, prepared.alignment, steps,
        cross_window=(spec.cross_start, spec.cross_stop),
        self_window=(spec.self_start, spec.self_stop),
        word_windows=spec.word_windows,
        equalizer=prepared.equalizer,
        style_alpha=spec.style_alpha if spec.edit == "style" else None,
        degree_words=spec.degree_words,
        self_max_fraction=spec.self_max_fraction,
    )


class LocalBlend:
    """The sampler's post-step hook: a mask from step i's attention to the blend words (source ∪ target),
    applied from `first_step` on."""

    def __init__(self, controller: PromptToPromptController, columns: Tensor, threshold: float, first_step: int):
        self.controller = controller
        self.columns = columns  # (2, T)
        self.threshold = threshold
        self.first_step = first_step
        self.soft: Tensor | None = None  # (h, w) latest mask, for the Mask event
        self.binary: Tensor | None = None

    def __call__(self, i: int, x: Tensor) -> Tensor:
        if i < self.first_step:
            return x
        self.soft, self.binary = local_blend_mask(self.controller.step_maps(self.columns), self.threshold)
        return blend_latents(x, self.binary)


def prompt_to_prompt(engine: ModelHost, spec: P2PSpec, inversion: Inversion | None = None,
                     structure_images: StructureImages | None = None,
                     cancel: CancelToken | None = None) -> Iterator[Event]:
    """Validate (before any model work), then return the queued job's event stream."""
    # 1. check inputs
    spec.validate(editing_inversion=inversion is not None, size_multiple=engine.size_multiple)
    source_prompt = inversion.prompt if inversion is not None else spec.source_prompt
    if inversion is not None and inversion.method not in EDITABLE_INVERSIONS:
        raise InvalidInputError(
            f"{inversion.label} samples with its own coupled steps, which Prompt-to-Prompt does not drive: "
            f"invert with {' or '.join(METHOD_LABELS[m] for m in EDITABLE_INVERSIONS)} to edit the image."
        )
    if inversion is not None and spec.source_prompt.strip() and spec.source_prompt.strip() != inversion.prompt.strip():
        raise InvalidInputError(
            f"The inversion was made with the prompt {inversion.prompt!r}; the source prompt must be that prompt "
            "(leave it empty to use it)."
        )
    prepared = prepare_edit(engine, spec, source_prompt)
    steps = len(inversion.timesteps) if inversion is not None else spec.steps
    size = inversion.image.width if inversion is not None else spec.size or engine.native_size
    structure = edit_structure(engine, spec.structure, structure_images, inversion, size, size)
    job = _edit(engine, spec, prepared, resolve_seed(spec.seed), inversion, structure, cancel)
    scale = inversion.guidance_scale if inversion is not None else spec.guidance_scale
    passes = guidance_passes(scale) + structure_passes(spec.structure, scale != 1)
    return engine.exclusive(job, steps, cancel, f"Prompt-to-Prompt at {size}px (2 images)",
                            JobCost(size, size, steps, 2, passes))  # the source and the edit in one batch


def stacked(source: Cond, target: Cond) -> Cond:
    """One condition holding both prompts: embeddings (2, T, D), so the batch is [source, target]."""
    pooled = None if source.pooled is None else torch.cat([source.pooled, target.pooled])
    return Cond(embeddings=torch.cat([source.embeddings, target.embeddings]), tokens=target.tokens, pooled=pooled)


@torch.no_grad()
def _edit(engine: ModelHost, spec: P2PSpec, prepared: PreparedEdit, seed: int, inversion: Inversion | None,
          structure: PreparedStructure | None, cancel: CancelToken | None) -> Iterator[Event]:
    clock = Stopwatch()
    model = engine.model
    for note in structure.notes if structure is not None else ():
        yield Notice(note)

    # 2. encode both prompts; the guider: plain CFG, or the inversion's own negative branch
    pair = stacked(engine.encode_prompt(prepared.source), engine.encode_prompt(prepared.target))
    scheduler = make_scheduler("ddim", model.scheduler_config)
    scheduler.set_timesteps(inversion.steps if inversion is not None else spec.steps, device=engine.device)
    timesteps = scheduler.timesteps  # an inversion's are these: it was made on the same DDIM grid
    null = engine.null_conditioning()
    if inversion is not None:
        # its per-step null embeddings (NTI's optimised ones, NPI's source prompt) for both images, so the
        # source branch reproduces its reconstruction
        guider = sampling_guider(inversion, pair, null)
    else:
        guider = ClassifierFreeGuidance(cond=pair, uncond=null, scale=spec.guidance_scale)
    if structure is not None:  # both images under the same maps: the batch's images share each control
        guider = structure.wrap(engine.model, guider, null, timesteps, scheduler.alphas_cumprod)
    steps = len(timesteps)
    denoiser = Denoiser(model, scheduler.alphas_cumprod)

    # 3. the same initial latent for both images: the seed's noise, or the inversion's x_T
    latents = _initial_latent(engine, spec, seed, inversion, scheduler.init_noise_sigma).expand(2, -1, -1, -1).clone()

    # 4. attention control for this run (source and target: the conditional branch's two images), and local blend
    #    after every step
    controller = PromptToPromptController(
        plan_for(spec, prepared, steps), source_index=denoiser.batch_index(guider.primary, 0, 2),
        target_index=denoiser.batch_index(guider.primary, 1, 2), latent_size=tuple(latents.shape[2:]),
        device=latents.device,
    )
    blend = None
    if spec.blend_words:
        first_step = int(np.ceil(spec.blend_start * (steps - 1) - 1e-9))
        blend = LocalBlend(controller, prepared.blend_columns.to(latents.device), spec.blend_threshold, first_step)
    # an inversion's own step rule (edit-friendly DDPM's corrections, for both images) and its source hook (Direct
    # Inversion: the source, batch item 0, back on the trajectory), before local blend so the target's kept
    # latents are the source's corrected ones
    rule = scheduler if inversion is None else sampling_rule(inversion, scheduler, model.prediction_type)
    after_step = chained(None if inversion is None else source_hook(inversion, source=0), blend)
    clock.lap("encode")

    # 5. the one loop, streaming progress, both images' previews, maps and the blend mask
    size = latents.shape[-1] * engine.size_multiple  # an inversion's own size, which may not be the native one
    aligned = [source_word for _, source_word, _ in prepared.table()]  # fixed for the run
    mask = None  # the blend mask at image size, as last streamed (the last step always streams)
    # the image prompt's attention, when there is one, wraps the editing processors
    with control_attention(model.unet, controller), structure_attached(guider, model.unet, denoiser):
        for state in sample_steps(denoiser, guider, rule, timesteps, latents, cancel,
                                  on_step_begin=controller.begin_step, after_step=after_step):
            latents = state["x"]
            yield from step_events(state, steps, model.vae, spec.maps_every)
            # the blend mask streams with the maps: bringing it to the host every step would make each step wait
            # for the GPU
            done = state["i"] + 1
            if done % spec.maps_every == 0 or done == steps:
                if blend is not None and blend.binary is not None:
                    mask = _to_image_size(blend.binary.float(), size) > 0.5
                    yield Mask(done, steps, _to_image_size(blend.soft, size), "local blend", mask)
                yield _maps_event(done, controller, prepared, aligned)
    sampling_seconds = clock.lap("sampling")

    # 6. decode both and report
    pixels = decode_latents(model.vae, latents)
    clock.lap("decode")
    timings = clock.timings()
    seed_used = None if inversion is not None else seed
    inputs_used: dict[str, object] = {"source_inversion": inversion_record(inversion) if inversion is not None else None}
    if inversion is not None:
        inputs_used["source_image"] = image_record(inversion.image)
    if mask is not None:
        inputs_used["mask"] = mask_record(mask, "local blend")
    if structure is not None:  # what ran: the spec's, or the inversion's own
        inputs_used.update(structure=asdict(structure.spec), structure_images=structure.record())
    settings = reproduction_record(
        engine, "p2p", asdict(spec), timings, denoiser.unet_evaluations,
        source_prompt=inversion.prompt if inversion is not None else spec.source_prompt,
        seed=seed_used,
        steps=steps,
        guidance_scale=inversion.guidance_scale if inversion is not None else spec.guidance_scale,
        inversion=inversion.method if inversion is not None else None,
        **inputs_used,
    )
    settings.update(seconds_per_step=sampling_seconds / steps, attention_maps_bytes=controller.stored_bytes)
    yield P2PResult(to_images(pixels), settings, timings, denoiser.unet_evaluations, pixels, seed=seed_used,
                    latents=latents, mask=mask, alignment=[(w, s) for w, s, _ in prepared.table()],
                    seconds_per_step=sampling_seconds / steps, attention_maps_bytes=controller.stored_bytes)


def _initial_latent(engine: ModelHost, spec: P2PSpec, seed: int, inversion: Inversion | None,
                    init_noise_sigma: float) -> Tensor:
    """(1, C, h, w): the inversion's x_T, or the seed's noise at the spec's size (seeded on the CPU, as generation)."""
    model = engine.model
    if inversion is not None:
        return inversion.noise_latents.to(engine.device, model.dtype)
    generator = torch.Generator("cpu").manual_seed(seed)
    latent_size = (spec.size or engine.native_size) // engine.size_multiple
    shape = (1, model.unet.config.in_channels, latent_size, latent_size)
    return randn_tensor(shape, generator=generator, device=engine.device, dtype=model.dtype) * init_noise_sigma


def _maps_event(step: int, controller: PromptToPromptController, prepared: PreparedEdit,
                aligned: list[str | None]) -> EditAttentionMaps:
    source_means, target_means = controller.means()
    return EditAttentionMaps(
        step,
        AttentionMaps(step, prepared.source.words, combined_maps(source_means, prepared.source.word_tokens)),
        AttentionMaps(step, prepared.target.words, combined_maps(target_means, prepared.target.word_tokens)),
        aligned,
    )


def _to_image_size(latent_mask: Tensor, size: int) -> np.ndarray:
    """(h, w) latent-resolution mask -> (size, size) float32, nearest (a latent cell is a block of pixels)."""
    image = Image.fromarray(latent_mask.float().cpu().numpy().astype(np.float32), mode="F")
    return np.asarray(image.resize((size, size), Image.Resampling.NEAREST), dtype=np.float32)
