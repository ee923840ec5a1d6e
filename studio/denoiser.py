"""The UNet as a denoiser: all conditions and all images of a batch in ONE forward pass per step.

Predictions stay in the model's own parameterisation (eps, v or x0, `prediction_type`): diffusers
schedulers expect exactly that, and CFG is affine with weights summing to one, so it commutes with
the conversions. `to_x0` / `to_eps` give the common form when a caller needs it (previews,
inversion, editing; guidance rescale and classifier guidance convert inside studio.guidance).
The denoiser knows nothing of guidance. Structure channels ride on the conditions (studio.structure.runtime):
ControlNet residuals and T2I-Adapter features join the same UNet call, and the IP-Adapter's image tokens are set
on the run's `image_tokens` holder before it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from studio import schedule
from studio.conditioning import Cond

if TYPE_CHECKING:  # types only: the maths does not import the loaders
    from studio.models import LoadedModel
    from studio.structure.runtime import ControlInput, ImageTokens


def _add_at(total: Tensor | None, part: Tensor, samples: Tensor, size: int) -> Tensor:
    """total + `part` placed at rows `samples` of a batch of `size` (zeros elsewhere; None is all zeros). A part
    covering the whole batch is used as it is, so one net gives the UNet exactly its scaled residuals."""
    if len(samples) == size:  # every row, in order (samples ascend)
        return part if total is None else total + part
    if total is None:
        total = part.new_zeros((size, *part.shape[1:]))
    total[samples] += part  # total is a sum made here: updating it in place is safe
    return total


class Denoiser:
    def __init__(self, model: LoadedModel, alphas_cumprod: Tensor):
        self.unet = model.unet
        self.prediction_type = model.prediction_type
        self.alphas_cumprod = alphas_cumprod  # (num_train_timesteps,) of the scheduler in use
        self.unet_evaluations = 0  # forward passes, one per predict()
        self.uses_added_conditions = model.uses_added_conditions
        self.size_multiple = model.size_multiple
        self.image_tokens: ImageTokens | None = None  # set for a run with an image prompt (StructuredGuidance.attached)

    @torch.no_grad()
    def predict(self, x_t: Tensor, t: Tensor, conds: Sequence[Cond]) -> list[Tensor]:
        """Model output for each condition; x_t (B, C, h, w) -> [ (B, C, h, w) ] * len(conds).

        The batch is laid out condition-major, [cond0 x B, cond1 x B, ...], like
        StableDiffusionPipeline's [uncond x B, text x B], so CFG is bit-identical to it.
        """
        batch = x_t.shape[0]
        model_input = torch.cat([x_t] * len(conds))  # (N*B, C, h, w)
        embeddings = torch.cat([c.embeddings.expand(batch, -1, -1) for c in conds])  # (N*B, T, D)
        added = self.added_conditions(conds, x_t, embeddings.dtype) if self.uses_added_conditions else None
        structure = self.control_residuals(conds, model_input, t, embeddings, added) if any(c.controls for c in conds) else {}
        if self.image_tokens is not None:
            self.image_tokens.set_batch(conds, batch)
        output = self.unet(model_input, t, encoder_hidden_states=embeddings, added_cond_kwargs=added,
                           return_dict=False, **structure)[0]
        self.unet_evaluations += 1
        return list(output.chunk(len(conds)))

    def control_residuals(self, conds: Sequence[Cond], model_input: Tensor, t: Tensor, embeddings: Tensor,
                          added: dict[str, Tensor] | None) -> dict[str, Any]:
        """The UNet's extra inputs from the conditions' controls, for the whole (N*B) batch.

        Each ControlNet runs once over the samples it steers at a non-zero scale (a net no sample needs this step is
        skipped: x + 0 is x), with each sample's own text, and its residuals are scaled per layer, summed over nets
        as diffusers' MultiControlNetModel sums them, zero for the other samples. T2I-Adapter
        features (computed once per run) are scaled and summed the same way into down_intrablock_additional_residuals.
        """
        batch = model_input.shape[0] // len(conds)
        groups: dict[tuple[int, int], list[tuple[int, ControlInput]]] = {}  # one map of one model -> its conditions
        for position, cond in enumerate(conds):
            for control in cond.controls:
                if control.scale != 0:
                    groups.setdefault((id(control.model), id(control.image)), []).append((position, control))
        size = len(model_input)
        residuals: dict[str, list[Tensor | None]] = {}  # UNet keyword -> per-layer sums over the whole batch
        for members in groups.values():
            samples = torch.tensor([position * batch + image for position, _ in members for image in range(batch)],
                                   device=model_input.device)  # ascending: condition-major
            first = members[0][1]
            rows = slice(None) if len(samples) == size else samples  # the whole batch: no copies of its inputs
            if first.model.kind == "t2i_adapter":
                parts = {"down_intrablock_additional_residuals": list(first.features)}
            else:
                net_added = None if added is None else {key: value[rows] for key, value in added.items()}
                down, mid = first.model.module(
                    model_input[rows], t, encoder_hidden_states=embeddings[rows],
                    controlnet_cond=first.image.expand(len(samples), -1, -1, -1), conditioning_scale=1.0,
                    added_cond_kwargs=net_added, return_dict=False,
                )
                parts = {"down_block_additional_residuals": list(down), "mid_block_additional_residual": [mid]}
            layers = sum(len(tensors) for tensors in parts.values())  # ControlNet: the down blocks', then the mid's
            # a map steers every condition it is attached to at one scale per step (StructuredGuidance attaches it
            # so): each layer's residual is one scalar product, as diffusers scales it
            factors = first.layer_factors(layers)
            if any(control.layer_factors(layers) != factors for _, control in members):
                raise ValueError(f"{first.model.name}: one control map at several scales in one step")
            layer = 0
            for keyword, tensors in parts.items():
                sums = residuals.setdefault(keyword, [None] * len(tensors))
                for k, tensor in enumerate(tensors):
                    # (S, C, h, w), a new tensor (a T2I feature, computed once, serves every sample)
                    scaled = tensor.expand(len(samples), *tensor.shape[1:]) * factors[layer]
                    sums[k] = _add_at(sums[k], scaled, samples, size)
                    layer += 1
        # the UNet takes the mid block's residual as one tensor, the others as lists
        return {keyword: sums[0] if keyword == "mid_block_additional_residual" else sums
                for keyword, sums in residuals.items()}

    def added_conditions(self, conds: Sequence[Cond], x_t: Tensor, dtype: torch.dtype) -> dict[str, Tensor]:
        """SDXL's micro-conditioning, as its pipeline's defaults: the pooled text embedding per condition
        and (original size, crop top-left, target size) = ((H, W), (0, 0), (H, W)) of the image made."""
        batch, height, width = x_t.shape[0], x_t.shape[2] * self.size_multiple, x_t.shape[3] * self.size_multiple
        pooled = torch.cat([c.pooled.expand(batch, -1) for c in conds])  # (N*B, P)
        time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=dtype, device=x_t.device)
        return {"text_embeds": pooled, "time_ids": time_ids.expand(len(pooled), -1)}

    def batch_index(self, cond_position: int, image: int, batch: int) -> int:
        """Where image `image` under conds[cond_position] sits in the UNet's batch (for attention capture)."""
        return cond_position * batch + image

    def alpha_bar(self, t: Tensor) -> Tensor:
        return schedule.alpha_bar_at(self.alphas_cumprod, t)

    def to_x0(self, prediction: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return schedule.to_x0(prediction, x_t, self.alpha_bar(t), self.prediction_type)

    def to_eps(self, prediction: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        return schedule.to_eps(prediction, x_t, self.alpha_bar(t), self.prediction_type)
