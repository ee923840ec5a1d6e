"""Null-text inversion (Mokady et al. 2023: pivotal inversion, then null-text optimization, Algorithm 1).

Stage I pivots on the DDIM inversion at w = 1 (ddim.py). Stage II walks the sampling steps from
x*_T and, at each step i, optimises the null embedding O_i with the network frozen so that the
guided DDIM step from the current state lands on the pivot's next state:

    L_rec(O_i) = || DDIMstep(x_i; O_i) - x*_{i+1} ||^2        (mean over latent elements; Mokady et al.'s loss)
    + lambda || O_i - O_{i-1} ||^2                             temporal smoothness (mean over elements)
    + mu || Decoder(DDIMstep(x_{N-1}; O_{N-1})) - image ||_1   image-space term, last step only

(the lambda and mu terms are optional additions of ours, not in Mokady et al. 2023; both default to 0)

then moves on from the state the optimised step reaches (so the errors of step i are seen by
step i + 1, as in the reference implementation). What makes it cheap, measured in bench/inversion.py:
- start from negative-prompt inversion (Miyake et al. 2023): O_0 starts from the caption's
  embedding c, not the empty prompt's. With O = c the guided step is the w = 1 step whatever w, i.e. the
  step the pivot was inverted with, so the first L_rec is only DDIM inversion's own error and most steps
  are under the tolerance after 0-2 iterations (from the empty prompt, the guided step starts far off
  and every step needs many iterations; `null_start="empty"` keeps that, Mokady et al.'s start);
- warm start: O_i starts from O_{i-1} (already close), so most steps need few iterations;
- early stop: a step stops as soon as L_rec < tolerance, or when two iterations gained less than
  `min_improvement` of it (the loss stalls far above any tolerance where the pivot is out of reach),
  and the forward pass that measured it is that step's final prediction (the reference recipe spends
  one more guided pass per step);
- the best iterate is kept, not the last (Adam's first moves can overshoot);
- the prompt's prediction eps(x_i, c) is computed once per step and reused by every iteration.
Autograd runs through the UNet only for the unconditional half; the weights stay frozen (gradients
are taken with torch.autograd.grad with respect to O_i alone, nothing accumulates in the model).
Under structure (a ControlNet, an image prompt) both branches carry the controls the sampler will give them at
step i, so O_i is optimised for the step that reconstruction and edits take; a ControlNet on the unconditional
branch reads O_i as its text, and autograd runs through it too.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from studio.conditioning import Cond
from studio.denoiser import Denoiser
from studio.events import NullTextLoss, check_cancelled
from studio.guidance import Guider, cfg
from studio.images import to_tensor
from studio.inversion.steps import affine_step


def learning_rate(base: float, decay: float, step: int, steps: int) -> float:
    """Linear decay from `base` to base (1 - decay) over the outer steps (the reference recipe:
    1e-2 (1 - i/100) over 50 steps, i.e. decay ~0.5)."""
    return base * (1 - decay * step / max(steps - 1, 1))


def stalled(losses: list[float], min_improvement: float) -> bool:
    """True when the last two iterations together improved the best L_rec by less than `min_improvement`
    (relative): where the pivot itself cannot be reached (images far from the model's data) the loss
    plateaus far above any tolerance, and further iterations only cost."""
    if min_improvement <= 0 or len(losses) < 3:
        return False
    return min(losses[-2:]) > (1 - min_improvement) * min(losses[:-2])


def unet_output(denoiser: Denoiser, x: Tensor, t: Tensor, embedding: Tensor, like: Cond) -> Tensor:
    """The UNet's output (B, C, h, w) for one embedding (1, T, D), differentiable with respect to it.
    Denoiser.predict is no_grad by design (sampling never needs gradients); NTI does, so it calls the UNet
    itself, with the added conditions of `like` (SDXL's pooled embedding) and its structure (control residuals,
    image tokens: as Denoiser.predict attaches them), and counts the pass."""
    embeddings = embedding.expand(x.shape[0], -1, -1)  # (B, T, D)
    added = denoiser.added_conditions([like], x, embedding.dtype) if denoiser.uses_added_conditions else None
    structure = denoiser.control_residuals([like], x, t, embeddings, added) if like.controls else {}
    if denoiser.image_tokens is not None:
        denoiser.image_tokens.set_batch([like], x.shape[0])
    output = denoiser.unet(x, t, encoder_hidden_states=embeddings, added_cond_kwargs=added, return_dict=False,
                           **structure)[0]
    denoiser.unet_evaluations += 1
    return output


def decode_differentiable(vae, latents: Tensor) -> Tensor:
    """Scaled latents -> pixels in [-1, 1] with gradients (models.decode_latents returns detached numpy)."""
    return vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]


def branches_at(guider: Guider, i: int, null: Cond) -> tuple[Cond, Cond]:
    """(unconditional, conditional) of CFG `guider` at step i, with what it attaches to each (structure); at w = 1
    it has no unconditional branch: `null` then."""
    conds = guider.conds_at(i)
    return (conds[guider.unconditional[0]] if guider.unconditional else null), conds[guider.primary]


def null_text_optimisation(ctx, pivot: list[Tensor]) -> Iterator[NullTextLoss]:
    """Stage II over `pivot` (the w = 1 DDIM trajectory, sampling order). Yields a NullTextLoss per
    step and returns (the optimised null embedding of each step, L_rec per inner iteration per step)."""
    spec, grid, denoiser = ctx.spec, ctx.grid, ctx.denoiser
    steps = len(grid)
    # (1, T, D) O's starting point: the empty prompt's (Mokady et al.) or the caption's, where
    # negative-prompt inversion already lands (Miyake et al. 2023), so NTI only corrects what NPI misses
    previous = (ctx.cond if spec.null_start == "prompt" else ctx.null).embeddings.detach()
    image_pixels = None
    if spec.image_weight > 0:
        image_pixels = to_tensor(ctx.image, ctx.latents.device, ctx.vae.dtype)  # (1, 3, H, W)
    x = pivot[0]
    guider = ctx.guidance(spec.guidance_scale)  # the caption's CFG at w with the run's structure, if any
    embeddings, all_losses = [], []
    for i, t in enumerate(grid.timesteps.to(x.device)):
        check_cancelled(ctx.cancel, i, steps, "null-text steps")
        coefficients = grid.coefficients(i)
        null, cond = branches_at(guider, i, ctx.null)
        cond_output = denoiser.predict(x, t, [cond])[0]  # reused by every inner iteration
        embedding = previous.clone().requires_grad_(True)  # warm start from O_{i-1}
        optimiser = torch.optim.Adam([embedding], lr=learning_rate(spec.learning_rate, spec.lr_decay, i, steps))
        losses, best = [], None  # best: (L_rec, embedding, x_next) of the best iterate so far
        for iteration in range(spec.inner_steps + 1):
            with torch.enable_grad():
                uncond_output = unet_output(denoiser, x, t, embedding, null)
                x_next = affine_step(cfg(uncond_output, cond_output, spec.guidance_scale), x, coefficients)
                reconstruction = F.mse_loss(x_next, pivot[i + 1])
                losses.append(reconstruction.item())
                if best is None or losses[-1] < best[0]:
                    best = (losses[-1], embedding.detach().clone(), x_next.detach())
                if losses[-1] < spec.tolerance or iteration == spec.inner_steps or stalled(losses, spec.min_improvement):
                    break  # this forward pass is the step's final prediction: no extra pass
                loss = reconstruction
                if spec.smoothness > 0 and i > 0:
                    loss = loss + spec.smoothness * F.mse_loss(embedding, previous)
                if image_pixels is not None and i == steps - 1:
                    loss = loss + spec.image_weight * F.l1_loss(decode_differentiable(ctx.vae, x_next), image_pixels)
                (gradient,) = torch.autograd.grad(loss, [embedding])
            ctx.backward_passes += 1
            embedding.grad = gradient
            optimiser.step()
        # Adam's first moves are ~lr per element whatever the gradient's size, and can overshoot (the last
        # steps, landing on x_0, are the most sensitive): keep the best iterate, not the last.
        _, previous, x = best
        embeddings.append(previous)
        all_losses.append(losses)
        yield NullTextLoss(i + 1, steps, losses)
    return embeddings, all_losses
