"""Job specifications: the one source of truth for parameters, their defaults and ranges.

The UI builds its sliders from `Range`s here; the engine validates every spec with `validate()`
before touching the model, raising InvalidInputError with a message a user can act on.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar

from studio.errors import InvalidInputError

if TYPE_CHECKING:  # studio.structure.spec reads this module's Ranges: the type only, to avoid the import cycle
    from studio.structure.spec import StructureSpec

SCHEDULERS = ("ddim", "euler", "euler_ancestral", "dpmpp_2m")  # names shown in the UI
# How a condition's weight (or the classifier strength) varies over the run, w(t) = w * f(t)
# (studio.guidance.schedule_factors): constant; SNR(t)^alpha and sigma(t)^-beta (our own schedules,
# weaker at high noise); a linear ramp up from 0 or down to 0 across the start/stop window.
GUIDANCE_SCHEDULES = ("constant", "snr", "sigma", "ramp_up", "ramp_down")


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    step: float = 1
    label: str = ""

    @property
    def whole(self) -> bool:
        """A count, a seed or a size in pixels: its bounds and step are written as ints."""
        return all(isinstance(bound, int) for bound in (self.low, self.high, self.step))

    def check(self, name: str, value: float) -> None:
        """Refuse what is not a finite number in [low, high] (a whole one for a `whole` range): settings files and
        API callers can send strings, NaN and inf, which comparisons alone would let through or fail on."""
        label = self.label or name
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise InvalidInputError(f"{label} must be a number, got {shown(value)}.")
        if not math.isfinite(value):
            raise InvalidInputError(f"{label} must be a finite number between {self.low:g} and {self.high:g}, got {value}.")
        if not (self.low <= value <= self.high):
            raise InvalidInputError(f"{label} must be between {self.low:g} and {self.high:g}, got {value:g}.")
        if self.whole and not float(value).is_integer():
            raise InvalidInputError(f"{label} must be a whole number, got {value:g}.")


def shown(value: object, limit: int = 40) -> str:
    """A value's repr for a message, cut to `limit` characters (a hostile value may be megabytes long)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


STEPS = Range(1, 150, 1, "Steps")
GUIDANCE = Range(0.0, 30.0, 0.1, "Guidance scale")
SIZE = Range(64, 2048, 8, "Image size")
BATCH = Range(1, 8, 1, "Batch size")
SEED = Range(0, 2**32 - 1, 1, "Seed")
CONDITION_WEIGHT = Range(-30.0, 30.0, 0.1, "Weight")  # negative: a negative condition
SCHEDULE_EXPONENT = Range(0.0, 2.0, 0.05, "Schedule exponent")  # alpha for snr, beta for sigma
START = Range(0.0, 1.0, 0.01, "Start")  # fractions of the run (0 = first step, 1 = last)
STOP = Range(0.0, 1.0, 0.01, "Stop")
GUIDANCE_RESCALE = Range(0.0, 1.0, 0.05, "Guidance rescale")
CLASSIFIER_STRENGTH = Range(0.0, 100.0, 0.5, "Classifier strength")
# A LoRA's or concept's weight, as A1111's <lora:name:weight> reads it: 0 turns it off, negative pushes away from it
CONCEPT_SCALE = Range(-2.0, 2.0, 0.05, "Concept scale")
MAX_CONDITIONS = 8  # each adds the batch of images to every UNet call
# A prompt's re-weight, (word:w) in the prompt or a row of P2P's table: the column scale of its cross-attention
# (Hertz et al. 2022 §3.2, "Attention Re-weighting"); beyond +-10 the softmax saturates into noise or black.
WORD_WEIGHT = Range(-10.0, 10.0, 0.1, "Re-weight")
# Text caps, checked before any tokenizing: a CLIP prompt is 77 tokens (some 300-400 characters of English), so a
# prompt of MAX_PROMPT_CHARS is refused by length anyway; the cap keeps a megabyte of text from being tokenized.
MAX_PROMPT_CHARS = 2000
MAX_WORD_CHARS = 64  # a concept's word or a class word: one token's worth of text, with room
MAX_NAME_CHARS = 128  # a concept's or file's name shown back in the UI


def check_text(label: str, text: str, limit: int) -> None:
    """Refuse text longer than `limit` characters, saying how long it is and what the cap is."""
    if not isinstance(text, str):
        raise InvalidInputError(f"{label} must be text, got {shown(text)}.")
    if len(text) > limit:
        raise InvalidInputError(f"{label} is {len(text)} characters long; the limit is {limit}: shorten it.")


def check_ranges(spec: object, ranges: Mapping[str, Range]) -> None:
    """Check each named field of `spec` against its Range (a spec's RANGES: the table its validate() and its
    UI form read); a field left None (a seed the engine draws, the native size) is not checked."""
    for name, bounds in ranges.items():
        value = getattr(spec, name)
        if value is not None:
            bounds.check(name, value)


def check_size(name: str, value: int, size_multiple: int) -> None:
    """An image side in pixels: within SIZE and a multiple of the model's pixels per latent cell."""
    SIZE.check(name, value)
    if value % size_multiple:
        raise InvalidInputError(f"The {name} must be a multiple of {size_multiple} for this model, got {value}.")


def check_schedule(where: str, schedule: str, exponent: float, start: float, stop: float) -> None:
    """A guidance weight's schedule (GUIDANCE_SCHEDULES), exponent and start < stop window; `where` names the row."""
    if schedule not in GUIDANCE_SCHEDULES:
        raise InvalidInputError(f"{where}: unknown schedule {schedule!r}; choose one of {', '.join(GUIDANCE_SCHEDULES)}.")
    for bounds, value in ((SCHEDULE_EXPONENT, exponent), (START, start), (STOP, stop)):
        check_field(where, bounds, value)
    if not start < stop:
        raise InvalidInputError(f"{where}: start ({start:g}) must be before stop ({stop:g}).")


def check_field(where: str, bounds: Range, value: float) -> None:
    """bounds.check with the row named first ("Condition 2: Weight must be ...")."""
    try:
        bounds.check(bounds.label, value)
    except InvalidInputError as error:
        raise InvalidInputError(f"{where}: {error}") from error


@dataclass(frozen=True)
class ConceptUse:
    """A loaded concept (studio.personalize.concepts: a LoRA, an embedding, Custom Diffusion or DreamBooth weights)
    that a job runs with, at `scale`: the LoRA update's multiplier (Hu et al. 2021 eq. 3, h = W0 x + scale (alpha/r) B A x),
    or the interpolation W0 + scale (W1 - W0) of replaced weights; an embedding's rows are used as learned."""

    name: str
    scale: float = 1.0

    @classmethod
    def of(cls, value: ConceptUse | Mapping[str, Any]) -> ConceptUse:
        """A use from a spec field or a settings record ({"name", "scale", and the record's "kind", "hash", ...})."""
        if isinstance(value, ConceptUse):
            return value
        return cls(name=str(value["name"]), scale=float(value.get("scale", 1.0)))

    def validate(self) -> None:
        if not self.name.strip():
            raise InvalidInputError("A concept without a name: choose a loaded concept or remove the row.")
        check_field(f"Concept {self.name!r}", CONCEPT_SCALE, self.scale)


def concept_uses(values: Any) -> tuple[ConceptUse, ...]:
    """A spec's `concepts` field as ConceptUses (settings JSON holds them as dicts in a list)."""
    return tuple(ConceptUse.of(value) for value in values or ())


def check_concepts(concepts: tuple[ConceptUse, ...]) -> None:
    """Each use's scale in range, and each concept used once."""
    names = [use.name for use in concepts]
    if len(set(names)) < len(names):
        raise InvalidInputError(f"A concept is listed twice ({', '.join(sorted({n for n in names if names.count(n) > 1}))}): "
                                "give it one scale.")
    for use in concepts:
        use.validate()


@dataclass(frozen=True)
class Condition:
    """One extra text condition of multi-condition guidance (Liu et al. 2022): its prediction eps_k joins
    the batch and adds w_k(t) (eps_k - eps_u) to the guided prediction; a negative weight subtracts it."""

    prompt: str
    weight: float = 2.0
    schedule: str = "constant"
    exponent: float = 0.5  # alpha of "snr", beta of "sigma"; unused by the others
    start: float = 0.0  # active from this fraction of the run ...
    stop: float = 1.0  # ... up to this one

    def validate(self, row: int) -> None:
        where = f"Condition {row}"
        if not self.prompt.strip():
            raise InvalidInputError(f"{where}: the prompt is empty; write one or remove the row.")
        check_field(where, CONDITION_WEIGHT, self.weight)
        check_schedule(where, self.schedule, self.exponent, self.start, self.stop)


@dataclass(frozen=True)
class ClassifierGuidanceSpec:
    """Classifier guidance (Dhariwal & Nichol 2021 §4): push x_t along s(t) * grad log p(target | x_t) of the model's
    noisy-latent classifier. `target` is one of the engine's `classifier_targets` ("red object", ...)."""

    target: str
    strength: float = 2.0  # with normalise: first of bench/results/guidance_sweep.md's ranking on its tuning prompts
    schedule: str = "constant"
    exponent: float = 0.5
    start: float = 0.0
    stop: float = 1.0
    # step along the gradient's direction by a share of |eps| (studio.guidance.normalised_classifier_eps) instead of
    # eq. 14's raw gradient: a strength then gives every target the same push (bench/results/guidance_sweep.md)
    normalise: bool = True

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> ClassifierGuidanceSpec:
        """The spec a settings record (PNG, JSON) holds; records from before `normalise` existed ran eq. 14."""
        return cls(**{"normalise": False, **record})

    def validate(self) -> None:
        where = "Classifier guidance"
        if not self.target.strip():
            raise InvalidInputError(f"{where}: choose a target class.")
        check_field(where, CLASSIFIER_STRENGTH, self.strength)
        check_schedule(where, self.schedule, self.exponent, self.start, self.stop)


@dataclass(frozen=True)
class GenerateSpec:
    """Plain text-to-image generation (Generate tab, `studio generate`, /generate endpoint)."""

    RANGES: ClassVar[dict[str, Range]] = {
        "steps": STEPS, "guidance_scale": GUIDANCE, "batch_size": BATCH, "seed": SEED, "guidance_rescale": GUIDANCE_RESCALE,
    }

    prompt: str
    negative_prompt: str = ""
    seed: int | None = None  # None: draw a random seed and report it in Result.settings
    steps: int = 25
    guidance_scale: float = 5.0
    scheduler: str = "ddim"
    width: int | None = None  # None: the model's native size
    height: int | None = None
    batch_size: int = 1
    capture_attention: bool = False
    attention_every: int = 5  # emit AttentionMaps every k steps (and at the last step)
    preview_every: int = 5  # emit a Preview every k steps (not at the last: the Result follows)
    # Global guidance (issue #4). The prompt is condition 0 with weight guidance_scale; the negative
    # prompt replaces the unconditional branch as usual; `conditions` add signed, scheduled terms.
    conditions: tuple[Condition, ...] = ()
    guidance_rescale: float = 0.0  # phi of Lin et al. 2023 section 3.4; 0 = off
    classifier_guidance: ClassifierGuidanceSpec | None = None
    # Structure control (issue #17): control maps and an image prompt, checked against the loaded controls by the
    # job (studio.generation); None or empty runs exactly as without.
    structure: StructureSpec | None = None
    # Personalization (issue #18): loaded concepts the job runs with, applied while it holds the model (Engine)
    concepts: tuple[ConceptUse, ...] = ()

    def __post_init__(self) -> None:
        # Settings (JSON, PNG chunks) hold conditions as dicts and lists; accept them as such.
        conditions = tuple(Condition(**c) if isinstance(c, dict) else c for c in self.conditions or ())
        object.__setattr__(self, "conditions", conditions)
        object.__setattr__(self, "concepts", concept_uses(self.concepts))
        if isinstance(self.classifier_guidance, dict):
            object.__setattr__(self, "classifier_guidance", ClassifierGuidanceSpec.from_record(self.classifier_guidance))
        if isinstance(self.structure, dict):
            from studio.structure.spec import StructureSpec

            object.__setattr__(self, "structure", StructureSpec(**self.structure))

    def size_on(self, native_size: int) -> tuple[int, int]:
        """(width, height) in pixels: the spec's, or the model's native size where it leaves them None."""
        return self.width or native_size, self.height or native_size

    @property
    def uses_global_guidance(self) -> bool:
        """False for plain CFG, which runs exactly as StableDiffusionPipeline does."""
        return bool(self.conditions) or self.guidance_rescale > 0 or self.classifier_guidance is not None

    def validate(self, size_multiple: int = 8) -> None:
        if not self.prompt.strip():
            raise InvalidInputError("The prompt is empty: describe the image you want.")
        check_ranges(self, self.RANGES)
        if self.scheduler not in SCHEDULERS:
            raise InvalidInputError(f"Unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}.")
        for name, value in (("width", self.width), ("height", self.height)):
            if value is not None:
                check_size(name, value, size_multiple)
        if self.attention_every < 1 or self.preview_every < 1:
            raise InvalidInputError("attention_every and preview_every must be at least 1.")
        if len(self.conditions) > MAX_CONDITIONS:
            raise InvalidInputError(f"At most {MAX_CONDITIONS} conditions, got {len(self.conditions)}: remove some rows.")
        for row, condition in enumerate(self.conditions, start=1):
            condition.validate(row)
        if self.classifier_guidance is not None:
            self.classifier_guidance.validate()
        check_concepts(self.concepts)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> GenerateSpec:
        """The spec a Result's settings describe (extra keys such as timings are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in settings.items() if key in names})
