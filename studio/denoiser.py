"""The UNet as a denoiser: all conditions and all images of a batch in ONE forward pass per step.

Predictions stay in the model's own parameterisation (eps, v or x0, `prediction_type`): diffusers
schedulers expect exactly that, and CFG is affine with weights summing to one, so it commutes with
the conversions. `to_x0` / `to_eps` give the common form when a caller needs it (previews,
inversion, editing; guidance rescale and classifier guidance convert inside studio.guidance).
The denoiser knows nothing of guidance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from studio import schedule
from studio.conditioning import Cond

if TYPE_CHECKING:  # a type only: the maths does not import the loaders
    from studio.models import LoadedModel


class Denoiser:
    def __init__(self, model: LoadedModel, alphas_cumprod: Tensor):
        self.unet = model.unet
        self.prediction_type = model.prediction_type
        self.alphas_cumprod = alphas_cumprod  # (num_train_timesteps,) of the scheduler in use
        self.unet_evaluations = 0  # forward passes, one per predict()
        self.uses_added_conditions = model.uses_added_conditions
        self.size_multiple = model.size_multiple

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
        output = self.unet(model_input, t, encoder_hidden_states=embeddings, added_cond_kwargs=added,
                           return_dict=False)[0]
        self.unet_evaluations += 1
        return list(output.chunk(len(conds)))

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
