"""What an inversion produces and how it is asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from PIL import Image

from studio import specs
from studio.errors import InvalidInputError
from studio.structure.spec import StructureSpec

if TYPE_CHECKING:  # studio.generation imports the job layer, which imports this module: the type only
    from studio.generation import PreparedStructure

METHODS = ("ddim", "null_text", "negative_prompt", "edict", "bdia", "fixed_point", "direct", "ddpm")
METHOD_LABELS = {
    "ddim": "DDIM inversion",
    "null_text": "Null-text inversion",
    "negative_prompt": "Negative-prompt inversion",
    "edict": "EDICT",
    "bdia": "BDIA",
    "fixed_point": "Fixed-point inversion",
    "direct": "Direct inversion",
    "ddpm": "Edit-friendly DDPM inversion",
}

INNER_STEPS = specs.Range(1, 50, 1, "NTI inner iterations")
LEARNING_RATE = specs.Range(1e-4, 1.0, 1e-4, "NTI learning rate")
TOLERANCE = specs.Range(0.0, 1e-2, 1e-6, "NTI early-stop tolerance")
SMOOTHNESS = specs.Range(0.0, 100.0, 0.1, "NTI temporal smoothness")
IMAGE_WEIGHT = specs.Range(0.0, 100.0, 0.1, "NTI image-space weight")
NULL_BRANCH_METHODS = ("null_text", "negative_prompt")  # the methods that sample with their own null branch
NULL_STARTS = ("prompt", "empty")  # where NTI's null embedding starts: the caption's (NPI's) or the empty prompt's
EDICT_MIX = specs.Range(0.5, 1.0, 0.01, "EDICT mixing p")
BDIA_GAMMA = specs.Range(0.0, 0.95, 0.05, "BDIA gamma")  # 1 would be plain DDIM, not invertible
LR_DECAY = specs.Range(0.0, 1.0, 0.05, "NTI learning-rate decay")
MIN_IMPROVEMENT = specs.Range(0.0, 1.0, 0.01, "NTI minimum improvement")
FIXED_POINT_ITERATIONS = specs.Range(1, 20, 1, "Fixed-point iterations per step")
FIXED_POINT_TOLERANCE = specs.Range(0.0, 1e-2, 1e-6, "Fixed-point early-stop tolerance")
INVERSION_STEPS = specs.Range(2, 150, 1, "Steps")  # specs.STEPS from 2: the range the Inversion tab offers


@dataclass(frozen=True)
class InversionSpec:
    """One inversion of an uploaded image (Inversion tab, /invert endpoint, bench/inversion.py)."""

    RANGES: ClassVar[dict[str, specs.Range]] = {
        "steps": INVERSION_STEPS, "guidance_scale": specs.GUIDANCE, "inversion_guidance": specs.GUIDANCE,
        "inner_steps": INNER_STEPS, "learning_rate": LEARNING_RATE, "lr_decay": LR_DECAY, "tolerance": TOLERANCE,
        "min_improvement": MIN_IMPROVEMENT, "smoothness": SMOOTHNESS, "image_weight": IMAGE_WEIGHT,
        "edict_mix": EDICT_MIX, "bdia_gamma": BDIA_GAMMA, "fixed_point_iterations": FIXED_POINT_ITERATIONS,
        "fixed_point_tolerance": FIXED_POINT_TOLERANCE, "seed": specs.SEED,
    }

    prompt: str = ""  # the caption; "" inverts with the null prompt
    method: str = "ddim"
    steps: int = 50
    # w the inversion is sampled and edited with (P2P and DiffEdit of an inversion keep it). 2, not SD's 7.5: an edit
    # is pushed along (target - source prompt) x (w - 1), so the background moves with w. On bench/edit_bench.py's
    # 60 edits, P2P of an edit-friendly DDPM inversion kept 29.3 dB of the background at w = 2, 27.8 at 3, 25.2 at 5
    # and 23.0 at 7.5, its success 0.67-0.72 throughout (within a standard error; bench/results/edit_bench.md).
    guidance_scale: float = 2.0
    inversion_guidance: float = 1.0  # w of the DDIM inversion itself (DDIM only; NTI pivots at w = 1)
    keep_size: bool = False  # invert at the image's own size (images.working_size) instead of the model's native one
    # Null-text inversion (Mokady et al. 2023): Adam on O_t per step, lr decaying linearly to lr * (1 - lr_decay).
    # lr and tolerance chosen on the embedded model (bench/results/inversion.md): the paper's 1e-2 barely
    # moves shapes-sd's null embedding in 10 iterations. Started from the caption's embedding (negative-prompt
    # inversion's answer) most steps are under the 5e-4 per-element L_rec tolerance after 0-2 iterations, and
    # the reconstruction equals the 10-iteration recipe's (within 0.1 dB) or betters it.
    inner_steps: int = 10
    learning_rate: float = 0.1
    lr_decay: float = 0.5
    tolerance: float = 5e-4  # stop a step's optimisation once L_rec (mean squared latent error) is below this
    # also stop once two iterations improve L_rec by less than this fraction (off by default)
    min_improvement: float = 0.0
    null_start: str = "prompt"  # O_0's start: "prompt" (the caption's embedding, as NPI) or "empty" (Mokady et al.)
    smoothness: float = 0.0  # lambda of lambda * ||O_t - O_{t+1}||^2
    image_weight: float = 0.0  # weight of the pixel-space term ||D(x0_hat) - image||^2
    # EDICT (Wallace et al. 2022) and BDIA (Zhang et al. 2023)
    edict_mix: float = 0.93
    float64: bool = False  # EDICT/BDIA in float64 (CPU only)
    bdia_gamma: float = 0.0  # the symmetric scheme; inversion divides by 1 - gamma per step (bdia.py)
    # Fixed-point inversion (fixed_point.py; Pan et al. 2023, Garibi et al. 2024): iterations of each inverse step at
    # guidance_scale, stopping early once an update moves the state by less than the tolerance (mean squared)
    fixed_point_iterations: int = 3
    fixed_point_tolerance: float = 1e-5
    seed: int = 0  # edit-friendly DDPM inversion (ddpm.py): the seed of its independent noise per step
    # control maps / image prompt (studio.structure) the image is inverted and reconstructed under, so that edits
    # under the same control reconstruct it (lllyasviel/ControlNet#359); checked against the loaded controls by the job
    structure: StructureSpec | None = None
    concepts: tuple[specs.ConceptUse, ...] = ()  # loaded concepts the inversion runs with (studio.personalize.concepts)

    def __post_init__(self) -> None:
        if isinstance(self.structure, dict):  # settings (JSON, PNG chunks) hold it as a dict
            object.__setattr__(self, "structure", StructureSpec(**self.structure))
        object.__setattr__(self, "concepts", specs.concept_uses(self.concepts))

    def validate(self) -> None:
        if self.method not in METHODS:
            raise InvalidInputError(f"Unknown inversion method {self.method!r}; choose one of {', '.join(METHODS)}.")
        specs.check_ranges(self, self.RANGES)
        if self.null_start not in NULL_STARTS:
            raise InvalidInputError(f"Unknown NTI start {self.null_start!r}; choose one of {', '.join(NULL_STARTS)}.")
        channel_rows = [] if self.structure is None or self.method not in NULL_BRANCH_METHODS else [
            *(f"Control {row}" for row, c in enumerate(self.structure.controls, start=1) if c.mode == "channel"),
            *(["Image prompt"] if self.structure.image_prompt and self.structure.image_prompt.mode == "channel" else []),
        ]
        if channel_rows:
            # NPI and NTI replace the null branch that a channel row's term w(t) (eps_k - eps_u) also reads: with
            # NPI's eps_u = eps_c the term is no longer the one inverted, and NTI optimises the plain CFG step
            raise InvalidInputError(
                f"{', '.join(channel_rows)}: mode 'channel' adds its own guidance term, which "
                f"{METHOD_LABELS[self.method]} does not invert; pick balanced, prompt, control or guess, or invert "
                "with DDIM inversion, EDICT or BDIA."
            )


# eq=False: an Inversion is one object (hashed by identity), so a gr.State holding it can be watched for changes
# (Gradio hashes watched states; its images and tensors are not hashable by value).
@dataclass(frozen=True, eq=False)
class Inversion:
    """An image mapped into the model's latent trajectory, with all it takes to reconstruct or edit it.

    Trajectory convention: N = len(timesteps) sampling steps; trajectory[i] (i < N) is the state
    sampling step i starts from (at timesteps[i]), so trajectory[0] = x_T is where sampling and
    editing start; trajectory[N] is the end state on the x_0 side (for DDIM, NTI and NPI the encoded
    latents themselves; sampling step i lands on trajectory[i + 1]).
    Sampling: DDIMScheduler (model's config, N steps) from x_T, CFG at `guidance_scale`, with
    unconditional embedding uncond_embeddings[i] at step i (None: the empty prompt's).
    EDICT samples the pair (trajectory, coupled) with its own coupled steps; BDIA starts from the
    pair (trajectory[0], trajectory[1]) (its first step is given, every later one uses two states).
    Direct inversion samples as DDIM does and puts the source image back on the trajectory after every step;
    edit-friendly DDPM inversion samples with the eta = 1 DDIM mean plus `corrections[i]` at step i
    (methods.sampling_rule and methods.source_hook say how any inversion is sampled).
    """

    method: str
    image: Image.Image  # the prepared RGB image that was inverted (model size)
    prompt: str
    guidance_scale: float
    timesteps: torch.Tensor  # (N,) descending, as DDIMScheduler.timesteps
    latents: torch.Tensor  # (1, 4, h, w) x_0 = encode_image(vae, image)
    trajectory: list[torch.Tensor]  # N + 1 states (1, 4, h, w), see above
    uncond_embeddings: list[torch.Tensor] | None = None  # per step (1, T, D); None = the empty prompt's
    coupled: list[torch.Tensor] | None = None  # EDICT's y sequence, same convention as trajectory
    edict_mix: float | None = None  # EDICT's p
    bdia_gamma: float | None = None
    dtype: torch.dtype = torch.float32  # what the method computed in (EDICT/BDIA may use float64)
    preparation: str = ""  # what was done to the upload ("centre-cropped 640x480 to 480x480; ...")
    # NTI: L_rec per inner iteration, per step; fixed-point inversion: each iteration's mean squared move, per step
    losses: list[list[float]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)  # psnr, ssim, latent_mse, unet passes, seconds, ...
    # the InversionSpec fields its method read (NTI's learning rate, EDICT's p, ...), for the records of edits made
    # from it (studio.jobs.inversion_record); empty for an inversion made elsewhere
    method_settings: dict[str, object] = field(default_factory=dict)
    # edit-friendly DDPM inversion: per sampling step i the additive correction c_i (1, 4, h, w) that the stochastic
    # DDIM step's mean (eta = 1) is completed with, x_{i+1} = A x_i + B out + c_i, for every image sampled (ddpm.py)
    corrections: list[torch.Tensor] | None = None
    # the structure (checked spec, maps at this image's size) it was inverted and reconstructed under; its edits
    # sample under it unless they bring their own; None: no control
    structure: PreparedStructure | None = None

    @property
    def noise_latents(self) -> torch.Tensor:
        """x_T, where sampling and editing start."""
        return self.trajectory[0]

    @property
    def steps(self) -> int:
        return len(self.timesteps)

    @property
    def label(self) -> str:
        return METHOD_LABELS[self.method]
