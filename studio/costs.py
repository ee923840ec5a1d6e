"""What a job costs the model, in the one unit every limit speaks: the standard image.

One standard image is one Stable Diffusion 512x512 image sampled in 50 steps with classifier-free guidance, i.e.
512 * 512 pixels x 50 steps x 2 UNet passes a step = 1.0. A UNet pass is one image through the UNet once:
studio.denoiser.Denoiser.predict batches the N conditions of a batch of B into one call of N * B images, whose
time grows with N * B and with the pixels, so a job's cost is pixels x steps x batch x passes, the passes being the
conditions each step evaluates (CFG 2, or 1 at w = 1 where the unconditional branch is skipped; N conditions beside
the prompt N + 2; EDICT's two coupled sequences 2 x CFG; a training step's backward pass 1 or 2 forward ones more).
A job of several phases (DiffEdit's mask, inversion and edit) gives its mean passes over all its steps.

The cost ignores what is small beside the UNet: the VAE, the text encoder, a classifier's gradient, a ControlNet's
encoder copy (about half a UNet on the branches it runs on) and T2I-Adapter features computed once a run.
"""

from __future__ import annotations

from dataclasses import dataclass

from studio.errors import JobTooCostlyError
from studio.structure.runtime import UNCONDITIONAL_MODES
from studio.structure.spec import StructureSpec

STANDARD_IMAGE = 512 * 512 * 50 * 2  # pixels x steps x UNet passes of one standard image

# A training step: the forward pass, then the backward pass through the same activations. The backward of a frozen
# layer computes the activations' gradient only (about one forward); of a trained layer the weights' too (two).
# Textual Inversion, LoRA and Custom Diffusion train a sliver of the UNet: 1 + 1; DreamBooth all of it: 1 + 2.
ADAPTER_TRAINING_PASSES = 2
FULL_TRAINING_PASSES = 3


@dataclass(frozen=True)
class JobCost:
    """A job's size as the model sees it: `steps` steps over `batch` images of width x height pixels, each step
    `passes` UNet passes per image (a mean, for a job of several phases)."""

    width: int
    height: int
    steps: int
    batch: int
    passes: float

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def units(self) -> float:
        """The job in standard images (see the module docstring): one SD 512-px 50-step CFG image is 1.0."""
        return self.pixels * self.steps * self.batch * self.passes / STANDARD_IMAGE

    def describe(self) -> str:
        """ "512x512, 50 steps, batch 4, 2 UNet passes a step" """
        return (f"{self.width}x{self.height}, {self.steps} steps, batch {self.batch}, "
                f"{self.passes:.3g} UNet passes a step")

    def check(self, cap: float | None) -> None:
        """Raise JobTooCostlyError when the job is over `cap` standard images (None: no cap)."""
        if cap is not None and self.units > cap:
            raise JobTooCostlyError(
                f"This job would cost {self.units:.2f} standard images ({self.describe()}), over this studio's "
                f"limit of {cap:g} (a standard image is one 512x512 image in 50 steps with guidance): "
                "lower the steps, the size or the batch."
            )


def guidance_passes(scale: float) -> int:
    """UNet passes of classifier-free guidance at `scale`: studio.guidance.ClassifierFreeGuidance skips the
    unconditional branch at w = 1."""
    return 1 if scale == 1 else 2


def structure_passes(structure: StructureSpec | None, has_unconditional: bool = True) -> int:
    """The passes studio.structure.runtime.StructuredGuidance adds to its inner guider's: one per channel row (its
    own guidance term), and a pure null branch when there is a channel row and the inner guider has no
    unconditional branch of its own or its unconditional branch carries a control."""
    if structure is None or structure.empty:
        return 0
    channel_rows = sum(row.mode == "channel" for row in structure.controls)
    channel_rows += structure.image_prompt is not None and structure.image_prompt.mode == "channel"
    shared_unconditional = any(row.mode in UNCONDITIONAL_MODES for row in structure.controls)
    adds_null = channel_rows > 0 and (not has_unconditional or shared_unconditional)
    return channel_rows + adds_null
