"""The structure settings of a run: which control maps and image prompt steer it, how strongly, when and how.

Checked before any model work (`StructureSpec.validate`), like every spec in studio.specs; the images travel beside
the spec (`StructureImages`), as SDEdit's guide does, so settings stay plain JSON.

The modes say where a control enters classifier-free guidance (Ho & Salimans 2022), in the names users know:

    balanced  diffusers' default and A1111's "Balanced": the control on both CFG branches, every layer at `scale`
    prompt    A1111's "My prompt is more important": both branches, layer k of n at scale * 0.825 ** (n - 1 - k)
    control   A1111's "ControlNet is more important": the conditional branch only (the unconditional one runs
              without the control, so CFG amplifies it), layers as "prompt" (A1111 softens them in both modes)
    guess     diffusers' guess_mode: the conditional branch only, layer k at logspace(-1, 0, n)[k] * scale
    channel   its own guidance term w(t) (eps_k - eps_u) with eps_k = the null text plus this control alone: the
              multi-condition form of Liu et al. 2022 that InstructPix2Pix (Brooks et al. 2023, eq. 3) uses per
              channel, possible because training dropped each channel independently (Brooks et al.; Composer,
              Huang et al. 2023)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from studio.errors import InvalidInputError
from studio.specs import (
    CONDITION_WEIGHT,
    START,
    STOP,
    Range,
    check_field,
    check_schedule,
)

CONTROL_MODES = ("balanced", "prompt", "control", "guess", "channel")
IMAGE_PROMPT_MODES = ("balanced", "channel")  # diffusers' IP-Adapter path, or its own guidance term
CONTROL_SCALE = Range(0.0, 2.0, 0.05, "Control scale")  # controlnet_conditioning_scale / adapter_conditioning_scale
IMAGE_PROMPT_SCALE = Range(0.0, 2.0, 0.05, "Image prompt scale")  # lambda of IP-Adapter eq. 5 (set_ip_adapter_scale)
MAX_CONTROLS = 4  # each ControlNet runs once per step over the samples it steers


def _check_mode(where: str, mode: str, modes: tuple[str, ...]) -> None:
    if mode not in modes:
        raise InvalidInputError(f"{where}: unknown mode {mode!r}; choose one of {', '.join(modes)}.")


def _check_window(where: str, start: float, stop: float) -> None:
    check_field(where, START, start)
    check_field(where, STOP, stop)
    if not start < stop:
        raise InvalidInputError(f"{where}: start ({start:g}) must be before stop ({stop:g}).")


@dataclass(frozen=True)
class ControlSpec:
    """One control row: a loaded ControlNet or T2I-Adapter reading one control map.

    The window follows diffusers: a ControlNet steers step i of N unless i/N < start or (i+1)/N > stop
    (control_guidance_start/end); a T2I-Adapter while N*start <= i < int(N*stop) (StableDiffusionXLAdapterPipeline's adapter_conditioning_factor).
    In "channel" mode weight/schedule/exponent/start/stop make its guidance weight w(t_i) as a text condition's
    (studio.guidance.schedule_factors) and the control runs at `scale` inside its own term at every step."""

    control: str  # name of a loaded control ("layout", "outline", "t2i-outline", or a user file's stem)
    scale: float = 1.0
    start: float = 0.0
    stop: float = 1.0
    mode: str = "balanced"
    weight: float = 2.0  # "channel" only
    schedule: str = "constant"
    exponent: float = 0.5

    def validate(self, row: int, available: Mapping[str, str]) -> None:
        where = f"Control {row}"
        if self.control not in available:
            loaded = ", ".join(f"{name} ({kind})" for name, kind in available.items()) or "none"
            raise InvalidInputError(
                f"{where}: no control named {self.control!r} is loaded (loaded: {loaded}); pick one of them or load "
                "its file (--controlnet / --t2i-adapter)."
            )
        check_field(where, CONTROL_SCALE, self.scale)
        _check_mode(where, self.mode, CONTROL_MODES)
        _check_window(where, self.start, self.stop)
        if self.mode == "channel":
            check_field(where, CONDITION_WEIGHT, self.weight)
            check_schedule(where, self.schedule, self.exponent, self.start, self.stop)


@dataclass(frozen=True)
class ImagePromptSpec:
    """The image-prompt row (IP-Adapter, Ye et al. 2023): a reference image read by decoupled cross-attention at
    lambda = `scale` (eq. 5). "balanced" is diffusers' path (the unconditional branch gets a zero image embedding);
    "channel" gives the image its own guidance term, weight w(t) as a text condition's. The window (ControlNet's
    rule) switches lambda to 0 outside it in "balanced" mode and shapes w(t) in "channel" mode."""

    scale: float = 1.0
    mode: str = "balanced"
    weight: float = 2.0
    schedule: str = "constant"
    exponent: float = 0.5
    start: float = 0.0
    stop: float = 1.0

    def validate(self) -> None:
        where = "Image prompt"
        check_field(where, IMAGE_PROMPT_SCALE, self.scale)
        _check_mode(where, self.mode, IMAGE_PROMPT_MODES)
        _check_window(where, self.start, self.stop)
        if self.mode == "channel":
            check_field(where, CONDITION_WEIGHT, self.weight)
            check_schedule(where, self.schedule, self.exponent, self.start, self.stop)


@dataclass(frozen=True)
class StructureSpec:
    """The structure channels of a run: control rows, in order, and an optional image prompt."""

    controls: tuple[ControlSpec, ...] = ()
    image_prompt: ImagePromptSpec | None = None

    def __post_init__(self) -> None:
        # Settings (JSON, PNG chunks) hold rows as dicts and lists; accept them as such.
        controls = tuple(ControlSpec(**c) if isinstance(c, dict) else c for c in self.controls or ())
        object.__setattr__(self, "controls", controls)
        if isinstance(self.image_prompt, dict):
            object.__setattr__(self, "image_prompt", ImagePromptSpec(**self.image_prompt))

    @property
    def empty(self) -> bool:
        return not self.controls and self.image_prompt is None

    def validate(self, available: Mapping[str, str], has_image_prompt: bool) -> None:
        """`available`: loaded control name -> what it was trained for; `has_image_prompt`: an IP-Adapter is loaded."""
        if len(self.controls) > MAX_CONTROLS:
            raise InvalidInputError(f"At most {MAX_CONTROLS} control rows, got {len(self.controls)}: remove some.")
        for row, control in enumerate(self.controls, start=1):
            control.validate(row, available)
        if self.image_prompt is not None:
            if not has_image_prompt:
                raise InvalidInputError(
                    "Image prompt: this model has no IP-Adapter loaded; load one (--ip-adapter FILE) or remove the "
                    "image-prompt row."
                )
            self.image_prompt.validate()


@dataclass(frozen=True)
class StructureImages:
    """The images a StructureSpec reads: one control map per ControlSpec, in the same order (any size or mode:
    the job prepares them with studio.structure.maps.prepare_control_map), and the image prompt's reference."""

    controls: tuple[np.ndarray, ...] = ()
    image_prompt: np.ndarray | None = None

    def check_against(self, spec: StructureSpec) -> None:
        """Raises InvalidInputError when an image the spec needs is missing."""
        if len(self.controls) != len(spec.controls):
            raise InvalidInputError(
                f"{len(spec.controls)} control rows but {len(self.controls)} control maps: give each row its map "
                "(draw it, or derive it from an image)."
            )
        if spec.image_prompt is not None and self.image_prompt is None:
            raise InvalidInputError("Image prompt: no reference image; upload one or remove the image-prompt row.")
