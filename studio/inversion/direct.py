"""Direct Inversion (Ju et al. 2023, "PnP Inversion: Boosting diffusion-based editing with 3 lines of code", Alg. 1).

DDIM inversion at w = 1 gives the trajectory z*_t (ddim.py). Sampling it back at w > 1 drifts off that trajectory
(the guided step is not the one inverted); null-text inversion optimises embeddings to close the gap. Direct
Inversion closes it in the latents instead: after every step the *source* branch is put back on the inversion's
trajectory, z_src_{t-1} <- z_src_{t-1} + (z*_{t-1} - z_src_{t-1}), while the target branch is left alone (it follows
the source through the edit's attention injection, Prompt-to-Prompt's). The source's reconstruction is therefore
exact by construction: it is the inversion's own trajectory, ending on the encoded latents.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor


class SourceOnPath:
    """An after-step hook (studio.sampling.StepHook): after loop step i, batch item `source` of x (B, C, h, w) is
    `path[i]` (the trajectory state that step lands on); every other image is left as the step left it."""

    def __init__(self, path: Sequence[Tensor], source: int = 0):
        self.path, self.source = path, source

    def __call__(self, i: int, x: Tensor) -> Tensor:
        corrected = x.clone()
        corrected[self.source] = self.path[i][0].to(x.device, x.dtype)  # z_src + (z* - z_src)
        return corrected
