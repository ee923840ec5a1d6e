"""Structure at sampling time: what a run attaches to the denoiser's conditions, step by step.

`StructuredGuidance` wraps ANY guider (CFG, multi-condition, classifier guidance): at step i it hands the denoiser
the inner guider's conditions with the control maps and the image embedding attached as each row's mode says
(studio.structure.spec), plus one condition per "channel" row, and adds that row's own guidance term

    eps = inner(eps_0 .. eps_n) + sum_k w_k(t_i) (eps_k - eps_u)

eps_k = the null text with only channel k (Liu et al. 2022's composition; InstructPix2Pix, Brooks et al. 2023,
eq. 3, guides its image and text channels this way). The per-step scales and weights are precomputed data, so a
plot shows what runs. The denoiser (studio.denoiser) evaluates everything in one batched UNet call per step:
ControlNet residuals (Zhang et al. 2023, eq. 1-4: the zero-convolution outputs added to the UNet's skip
connections) summed over nets as diffusers' MultiControlNetModel does, T2I-Adapter features (Mou et al. 2024)
computed once per run, and the IP-Adapter's image tokens read by `ImagePromptAttention` (Ye et al. 2023, eq. 5).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention
from diffusers.models.embeddings import ImageProjection
from PIL import Image
from torch import Tensor, nn

from studio import schedule
from studio.attention.processors import replaced_processors
from studio.conditioning import Cond
from studio.guidance import Guider, schedule_factors
from studio.structure.adapters import ControlModel, ImagePromptAdapter
from studio.structure.spec import ControlSpec, ImagePromptSpec, StructureSpec

if TYPE_CHECKING:  # a type only: the denoiser reads these conditions, this module does not run it
    from studio.denoiser import Denoiser

LAYER_SCALES = ("uniform", "soft", "guess")
# sd-webui-controlnet's "soft injection", layer k of n at 0.825 ** (n - 1 - k): A1111 applies it in every mode but
# "Balanced" (soft_injection = mode != BALANCED; cfg_injection, the conditional branch only, = mode == CONTROL)
SOFT_DECAY = 0.825
T2I_SOFT_WEIGHTS = (0.25, 0.62, 0.825, 1.0)  # A1111's soft weights for a T2I-Adapter's four feature levels
UNCONDITIONAL_MODES = ("balanced", "prompt")  # the modes whose control also enters the unconditional branch
MODE_LAYER_SCALES = {"balanced": "uniform", "prompt": "soft", "control": "soft", "guess": "guess",
                     "channel": "uniform"}


@dataclass(frozen=True)
class ControlInput:
    """One control map for one condition at one step: what the denoiser feeds a ControlNet or adds as T2I features."""

    model: ControlModel
    image: Tensor  # (1, 3, H, W) in [0, 1], the model's device and dtype
    scale: float  # 0: this condition runs without it at this step
    layer_scales: str = "uniform"  # one of LAYER_SCALES
    features: tuple[Tensor, ...] | None = None  # a T2I-Adapter's adapter(image), computed once per run

    def layer_factors(self, n: int) -> list[float]:
        """The factor of each of n residuals, deepest last (ControlNet: the down blocks' then the mid block's).
        "guess" is diffusers' guess_mode, logspace(-1, 0, n) * scale in float32 as ControlNetModel computes it;
        "soft" is A1111's: 0.825 ** (n - 1 - k), or its own table for an SD T2I-Adapter's four levels."""
        if self.layer_scales == "guess":
            return (torch.logspace(-1, 0, n) * self.scale).tolist()
        if self.layer_scales == "soft":
            if self.model.kind == "t2i_adapter" and n == len(T2I_SOFT_WEIGHTS):
                return [self.scale * w for w in T2I_SOFT_WEIGHTS]
            return [self.scale * SOFT_DECAY ** (n - 1 - k) for k in range(n)]
        return [self.scale] * n


def control_tensor(control_map: np.ndarray, device: torch.device, dtype: torch.dtype) -> Tensor:
    """(H, W, 3) uint8 -> (1, 3, H, W) in [0, 1], as diffusers' control image processor (no normalisation)."""
    pixels = torch.from_numpy(np.asarray(control_map, dtype=np.float32) / 255.0)  # (H, W, 3)
    return pixels.permute(2, 0, 1)[None].to(device=device, dtype=dtype)


@torch.no_grad()
def image_embeds(adapter: ImagePromptAdapter, reference: np.ndarray | Image.Image) -> Tensor:
    """(1, E) embedding of the reference image, as diffusers' encode_image (its uncond is zeros_like of this)."""
    encoder = adapter.image_encoder
    picture = reference if isinstance(reference, Image.Image) else Image.fromarray(np.asarray(reference, np.uint8))
    pixels = adapter.image_processor(picture.convert("RGB"), return_tensors="pt").pixel_values
    return encoder(pixels.to(device=encoder.device, dtype=encoder.dtype)).image_embeds


def controlnet_keep(steps: int, start: float, stop: float) -> Tensor:
    """(N,) 1.0 where a ControlNet steers step i of N: diffusers' controlnet_keep, 1 - (i/N < start or (i+1)/N > stop)."""
    return torch.tensor([1.0 - float(i / steps < start or (i + 1) / steps > stop) for i in range(steps)],
                        dtype=torch.float64)


def adapter_keep(steps: int, start: float, stop: float) -> Tensor:
    """(N,) 1.0 where a T2I-Adapter steers step i: StableDiffusionXLAdapterPipeline's i < int(N * adapter_conditioning_factor), from N*start."""
    return torch.tensor([float(steps * start <= i < int(steps * stop)) for i in range(steps)], dtype=torch.float64)


@dataclass(frozen=True)
class ControlRow:
    """A ControlSpec made ready: its model, its map as a tensor (and T2I features), and its scale at each step."""

    spec: ControlSpec
    model: ControlModel
    image: Tensor  # (1, 3, H, W)
    features: tuple[Tensor, ...] | None
    scales: Tensor  # (N,) scale at step i (0 outside the window); "channel": scale at every step

    def input_at(self, i: int) -> ControlInput:
        return ControlInput(self.model, self.image, float(self.scales[i]), MODE_LAYER_SCALES[self.spec.mode],
                            self.features)


@dataclass(frozen=True)
class ImageRow:
    """The ImagePromptSpec made ready: the reference's embedding, its null, and lambda at each step."""

    spec: ImagePromptSpec
    embeds: Tensor  # (1, E)
    scales: Tensor  # (N,) lambda at step i

    @property
    def null(self) -> Tensor:
        return torch.zeros_like(self.embeds)  # diffusers' unconditional image embedding


@dataclass
class StructuredGuidance:
    """Any guider with structure attached (see the module docstring). `null` is the unconditional text (the inner
    guider's), which every channel term's eps_k and eps_u share. Conditions, in order: the inner guider's, then the
    pure null when eps_u needs one of its own (the inner guider has no unconditional branch, or its unconditional
    branch carries a control), then one per channel row (controls in row order, then the image)."""

    inner: Guider
    null: Cond
    controls: Sequence[ControlRow]
    image: ImageRow | None
    plan: StructureSchedule  # every per-step scale and channel weight
    image_prompt: ImagePromptAdapter | None = None
    inner_count: int = field(init=False)
    adds_null: bool = field(init=False)

    def __post_init__(self) -> None:
        self.inner_count = len(self.inner.conds_at(0))
        shared_uncond = any(row.spec.mode in UNCONDITIONAL_MODES for row in self.controls)
        self.adds_null = bool(self.channel_rows) and (not self.inner.unconditional or shared_uncond)

    @property
    def channel_rows(self) -> list[ControlRow | ImageRow]:
        rows: list[ControlRow | ImageRow] = [row for row in self.controls if row.spec.mode == "channel"]
        if self.image is not None and self.image.spec.mode == "channel":
            rows.append(self.image)
        return rows

    @property
    def channel_weights(self) -> Tensor:
        return self.plan.channel_weights  # (N, K)

    @property
    def primary(self) -> int:
        return self.inner.primary

    @property
    def unconditional(self) -> tuple[int, ...]:
        return (*self.inner.unconditional, *((self.inner_count,) if self.adds_null else ()))

    @property
    def null_position(self) -> int:
        """Where eps_u of the channel terms sits in conds_at(i)."""
        return self.inner_count if self.adds_null else self.inner.unconditional[0]

    def _with_image(self, cond: Cond, i: int, use_reference: bool) -> Cond:
        if self.image is None:
            return cond
        balanced = self.image.spec.mode == "balanced"
        embeds = self.image.embeds if use_reference and balanced else self.image.null
        return replace(cond, image_embeds=embeds, image_scale=float(self.image.scales[i]))

    def conds_at(self, i: int) -> list[Cond]:
        unconditional = set(self.inner.unconditional)
        conds = []
        for position, cond in enumerate(self.inner.conds_at(i)):
            is_uncond = position in unconditional
            controls = tuple(row.input_at(i) for row in self.controls if row.spec.mode != "channel"
                             and float(row.scales[i]) != 0 and not (is_uncond and row.spec.mode not in UNCONDITIONAL_MODES))
            conds.append(self._with_image(replace(cond, controls=controls), i, use_reference=not is_uncond))
        if self.adds_null:
            conds.append(self._with_image(self.null, i, use_reference=False))
        for k, row in enumerate(self.channel_rows):
            active = float(self.channel_weights[i, k]) != 0  # a zero-weight term is skipped, its net not run
            if isinstance(row, ImageRow):
                conds.append(replace(self.null, image_embeds=row.embeds, image_scale=float(row.scales[i]) * active))
            else:
                controls = (row.input_at(i),) if active else ()
                conds.append(self._with_image(replace(self.null, controls=controls), i, use_reference=False))
        return conds

    def combine(self, predictions: Sequence[Tensor], i: int, t: Tensor, x_t: Tensor) -> Tensor:
        guided = self.inner.combine(predictions[: self.inner_count], i, t, x_t)
        channels = predictions[self.inner_count + self.adds_null :]
        if not channels:  # no channel row: nothing to add (and an inner guider at w = 1 has no eps_u)
            return guided
        uncond = predictions[self.null_position]
        for k, prediction in enumerate(channels):
            weight = float(self.channel_weights[i, k])
            if weight != 0:  # Liu et al. 2022: + w_k (eps_k - eps_u), affine: fine in the model's own parameterisation
                guided = guided + weight * (prediction - uncond)
        return guided

    @contextmanager
    def attached(self, unet: UNet2DConditionModel, denoiser: Denoiser) -> Iterator[None]:
        """For the run: the image tokens' holder on the denoiser and ImagePromptAttention on the cross-attention
        layers, when an image row is active; both removed on exit (also on error or cancel)."""
        if self.image is None or self.image_prompt is None:
            yield
            return
        tokens = ImageTokens(self.image_prompt.image_proj)
        key_value = self.image_prompt.key_value

        def wrap(key: str, layer: Attention, processor: object) -> object | None:
            return ImagePromptAttention(processor, *key_value[key], tokens) if key in key_value else None

        denoiser.image_tokens = tokens
        try:
            with replaced_processors(unet, wrap):
                yield
        finally:
            denoiser.image_tokens = None


@dataclass(frozen=True)
class StructureSchedule:
    """Every per-step number of a run's structure rows: what the sampler applies, and what a plot shows."""

    labels: list[str]  # one per row: "Control 1 (layout)", ..., "Image prompt"
    scales: Tensor  # (N, R) float64 scale of row r at step i: 0 outside its window; a channel row's at every step
    channel_labels: list[str]  # the channel rows, in row order
    channel_weights: Tensor  # (N, K) w_k(t_i) of the channel rows (schedule and window applied)


def structure_schedule(structure: StructureSpec, kinds: Mapping[str, str], timesteps: Tensor,
                       alphas_cumprod: Tensor) -> StructureSchedule:
    """The StructureSchedule of `structure` over a run's timesteps; `kinds`: control name -> "controlnet" or
    "t2i_adapter" (their windows count steps differently, as diffusers' pipelines do). No model work."""
    steps = len(timesteps)
    alpha_bars = schedule.alpha_bars_at(alphas_cumprod, timesteps).double()
    rows: list[tuple[str, ControlSpec | ImagePromptSpec, str]] = [
        (f"Control {number} ({c.control})", c, kinds[c.control]) for number, c in enumerate(structure.controls, start=1)]
    if structure.image_prompt is not None:
        rows.append(("Image prompt", structure.image_prompt, "ip_adapter"))
    scales, channel_labels, weights = [], [], []
    for label, spec, kind in rows:
        if spec.mode == "channel":  # the weight w_k(t) gates the term; the control runs at its scale inside it
            scales.append(torch.full((steps,), spec.scale, dtype=torch.float64))
            channel_labels.append(label)
            weights.append(spec.weight * schedule_factors(spec.schedule, spec.exponent, spec.start, spec.stop, alpha_bars))
        else:
            keep = adapter_keep if kind == "t2i_adapter" else controlnet_keep
            scales.append(spec.scale * keep(steps, spec.start, spec.stop))

    def stacked(columns: list[Tensor]) -> Tensor:
        return torch.stack(columns, dim=1) if columns else torch.zeros((steps, 0), dtype=torch.float64)

    return StructureSchedule([label for label, _, _ in rows], stacked(scales), channel_labels, stacked(weights))


def structured_guider(inner: Guider, null: Cond, structure: StructureSpec, maps: Sequence[np.ndarray],
                      reference: np.ndarray | None, controls: Mapping[str, ControlModel],
                      image_prompt: ImagePromptAdapter | None, timesteps: Tensor, alphas_cumprod: Tensor,
                      device: torch.device, dtype: torch.dtype) -> StructuredGuidance:
    """The run's StructuredGuidance: maps (prepared, one per control row) as tensors, T2I-Adapter features once,
    the reference's image embedding, and the structure_schedule."""
    plan = structure_schedule(structure, {name: c.kind for name, c in controls.items()}, timesteps, alphas_cumprod)
    rows = []
    for column, (spec, control_map) in enumerate(zip(structure.controls, maps, strict=True)):
        model = controls[spec.control]
        image = control_tensor(control_map, device, dtype)
        features = None
        if model.kind == "t2i_adapter":
            if model.module.config.in_channels == 1:  # grey-map adapters (TencentARC's canny, sketch): white on
                image = image.mean(dim=1, keepdim=True)  # black reads the same in any grey conversion
            with torch.no_grad():
                features = tuple(model.module(image))  # Mou et al. 2024: once per generation, not per step
        rows.append(ControlRow(spec, model, image, features, plan.scales[:, column]))
    image_row = None
    if structure.image_prompt is not None:
        image_row = ImageRow(structure.image_prompt, image_embeds(image_prompt, reference).to(dtype), plan.scales[:, -1])
    return StructuredGuidance(inner, null, rows, image_row, plan, image_prompt)


class ImageTokens:
    """The image tokens of the current UNet batch, shared by every ImagePromptAttention layer; the denoiser sets
    them from the conditions before each call (`set_batch`)."""

    def __init__(self, image_proj: ImageProjection):
        self.image_proj = image_proj
        self.tokens: Tensor | None = None  # (S, num_tokens, D) or None when no sample reads the image this step
        self.scales: Tensor | None = None  # (S, 1, 1) lambda per sample

    def set_batch(self, conds: Sequence[Cond], batch: int) -> None:
        scales = [c.image_scale for c in conds]
        if all(scale == 0 for scale in scales):
            self.tokens = self.scales = None
            return
        embeds = torch.cat([c.image_embeds.expand(batch, -1) for c in conds])  # (N*B, E), condition-major
        with torch.no_grad():
            self.tokens = self.image_proj(embeds)  # (N*B, num_tokens, D)
        self.scales = torch.tensor(scales, dtype=self.tokens.dtype, device=self.tokens.device)
        self.scales = self.scales.repeat_interleave(batch).view(-1, 1, 1)


class ImagePromptAttention:
    """Decoupled cross-attention (Ye et al. 2023, eq. 5): Z = Attn(Q, K, V) + lambda Attn(Q, K', V'), K' = to_k_ip(c_i),
    V' = to_v_ip(c_i) of the image tokens c_i.

    Wraps whatever processor the layer has (stock SDPA, attention capture, Prompt-to-Prompt editing) and lets it
    compute the layer: while it runs, the layer's own query (the output of attn.to_q) is kept, and lambda
    Attn(Q, K', V') is added to the input of the output projection attn.to_out[0] -- where diffusers'
    IPAdapterAttnProcessor2_0 adds it, so the maths and the cost are its own (no second query, no second projection).
    """

    def __init__(self, inner: object, to_k_ip: nn.Linear, to_v_ip: nn.Linear, tokens: ImageTokens):
        self.inner = inner
        self.to_k_ip = to_k_ip
        self.to_v_ip = to_v_ip
        self.tokens = tokens
        self.heads = 1
        self.query: Tensor | None = None  # (B, N, H*d) the layer's query of the current call

    def __call__(self, attn: Attention, hidden_states: Tensor, encoder_hidden_states: Tensor | None = None,
                 attention_mask: Tensor | None = None, temb: Tensor | None = None, *args, **kwargs) -> Tensor:
        if self.tokens.tokens is None:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        self.heads = attn.heads
        hooks = (attn.to_q.register_forward_hook(self._keep_query),
                 attn.to_out[0].register_forward_pre_hook(self._add_image_attention))
        try:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
            self.query = None

    def _keep_query(self, module: nn.Module, inputs: tuple[Tensor, ...], query: Tensor) -> None:
        if len(query) == len(self.tokens.tokens):  # the layer's own call (a capture's one-sample query is not)
            self.query = query

    def _add_image_attention(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        (text_part,) = inputs  # (B, N, H*d) Attn(Q, K, V), heads merged
        batch, heads = self.query.shape[0], self.heads
        head_dim = self.query.shape[-1] // heads
        query = self.query.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, H, N, d)
        key = self.to_k_ip(self.tokens.tokens).view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, H, T_i, d)
        value = self.to_v_ip(self.tokens.tokens).view(batch, -1, heads, head_dim).transpose(1, 2)
        image_part = F.scaled_dot_product_attention(query, key, value, dropout_p=0.0, is_causal=False)
        image_part = image_part.transpose(1, 2).reshape(batch, -1, heads * head_dim).to(query.dtype)  # (B, N, H*d)
        return (text_part + image_part * self.tokens.scales,)
