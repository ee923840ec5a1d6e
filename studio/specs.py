"""Job specifications: the one source of truth for parameters, their defaults and ranges.

The UI builds its sliders from `Range`s here; the engine validates every spec with `validate()`
before touching the model, raising InvalidInputError with a message a user can act on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from studio.errors import InvalidInputError

SCHEDULERS = ("ddim", "euler", "euler_ancestral", "dpmpp_2m")  # names shown in the UI


@dataclass(frozen=True)
class Range:
    low: float
    high: float
    step: float = 1
    label: str = ""

    def check(self, name: str, value: float) -> None:
        if not (self.low <= value <= self.high):
            raise InvalidInputError(f"{self.label or name} must be between {self.low:g} and {self.high:g}, got {value:g}.")


STEPS = Range(1, 150, 1, "Steps")
GUIDANCE = Range(0.0, 30.0, 0.1, "Guidance scale")
SIZE = Range(64, 2048, 8, "Image size")
BATCH = Range(1, 8, 1, "Batch size")
SEED = Range(0, 2**32 - 1, 1, "Seed")


@dataclass(frozen=True)
class GenerateSpec:
    """Plain text-to-image generation (Generate tab, `studio generate`, /generate endpoint)."""

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
    preview_every: int = 5  # emit a Preview every k steps (and at the last step)

    def validate(self, size_multiple: int = 8) -> None:
        if not self.prompt.strip():
            raise InvalidInputError("The prompt is empty: describe the image you want.")
        STEPS.check("steps", self.steps)
        GUIDANCE.check("guidance_scale", self.guidance_scale)
        BATCH.check("batch_size", self.batch_size)
        if self.seed is not None:
            SEED.check("seed", self.seed)
        if self.scheduler not in SCHEDULERS:
            raise InvalidInputError(f"Unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}.")
        for name, value in (("width", self.width), ("height", self.height)):
            if value is None:
                continue
            SIZE.check(name, value)
            if value % size_multiple:
                raise InvalidInputError(f"The {name} must be a multiple of {size_multiple} for this model, got {value}.")
        if self.attention_every < 1 or self.preview_every < 1:
            raise InvalidInputError("attention_every and preview_every must be at least 1.")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_settings(cls, settings: dict[str, Any]) -> GenerateSpec:
        """The spec a Result's settings describe (extra keys such as timings are ignored)."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in settings.items() if key in names})
