"""Prompt-to-Prompt on real images (embedded model): an inversion's unedited source branch equals the
inversion's own reconstruction (same x_T, timesteps and per-step null embeddings), for negative-prompt
inversion and for null-text inversion (per-step optimised null embeddings), and for fixed-point, Direct and
edit-friendly DDPM inversion (their own step rule and source hook); a colour swap edits the inverted image and keeps
its shape (and, for the new methods, the background outside the true object); inversions P2P cannot drive are refused
by name."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from studio import metrics
from studio.denoiser import Denoiser
from studio.editing.p2p import P2PSpec
from studio.errors import InvalidInputError
from studio.events import InversionResult, P2PResult
from studio.inversion import InversionSpec, reconstruction_steps
from studio.sampling import make_scheduler
from studio.shapes.judge import judge_pixels
from studio.shapes.render import Scene, make_object, render

CAPTION = "a big red circle on a blue background"
TARGET = "a big red square on a blue background"
STEPS = 10
# the inversions' guidance, which the edit keeps: the target is pushed along (target - source) prompt x (w - 1), and
# at w = 5 a red -> yellow swap also tints the embedded model's blue background purple; at w = 3 it stays blue
GUIDANCE = 3.0


@pytest.fixture(scope="module")
def npi(engine):
    image = render(Scene("blue", (make_object("circle", "red", "big", "left"),))).image
    *_, result = engine.invert(InversionSpec(CAPTION, "negative_prompt", steps=STEPS, guidance_scale=GUIDANCE), image)
    assert isinstance(result, InversionResult)
    return result.inversion


def reconstruction(engine, inversion) -> torch.Tensor:
    """The inversion's own reconstruction (studio.inversion's sampler), final latents (1, C, h, w)."""
    scheduler = make_scheduler("ddim", engine.model.scheduler_config)
    denoiser = Denoiser(engine.model, scheduler.alphas_cumprod)
    cond = engine.encode_prompt(engine.tokenize(inversion.prompt))
    null = engine.encode_negative_prompt(engine.tokenize(""))
    *_, last = reconstruction_steps(denoiser, inversion, cond, null, engine.model.scheduler_config)
    return last["x"]


def edit(engine, inversion, **changes) -> P2PResult:
    spec = P2PSpec(**{"source_prompt": "", "target_prompt": TARGET, "edit": "word swap", "cross_stop": 0.2,
                      "self_stop": 0.2, **changes})
    *_, result = engine.p2p(spec, inversion)
    return result


@pytest.fixture(scope="module")
def nti(engine):
    image = render(Scene("blue", (make_object("circle", "red", "big", "left"),))).image
    *_, result = engine.invert(InversionSpec(CAPTION, "null_text", steps=STEPS, guidance_scale=GUIDANCE, inner_steps=3), image)
    return result.inversion


@pytest.mark.parametrize("method", ["npi", "nti"])
def test_unedited_source_branch_is_the_inversions_reconstruction(engine, method, request):
    inversion = request.getfixturevalue(method)
    assert inversion.uncond_embeddings is not None and len(inversion.uncond_embeddings) == STEPS
    result = edit(engine, inversion)
    expected = reconstruction(engine, inversion)
    assert float((result.latents[:1] - expected).abs().max()) < 1e-4
    assert result.settings["inversion"] == inversion.method and result.settings["source_prompt"] == CAPTION


@pytest.mark.parametrize("colour", ["yellow", "green"])
@pytest.mark.parametrize("method", ["npi", "nti"])
def test_colour_swap_edits_the_inverted_image_and_keeps_its_shape(engine, method, colour, request):
    result = edit(engine, request.getfixturevalue(method), target_prompt=f"a big {colour} circle on a blue background",
                  cross_stop=0.4, self_stop=0.2)
    source, edited = (judge_pixels(np.asarray(image)) for image in result.images)
    assert (source.objects[0].colour, source.objects[0].shape) == ("red", "circle")
    assert (edited.background, edited.objects[0].colour, edited.objects[0].shape) == ("blue", colour, "circle")


def test_inversions_p2p_cannot_drive_are_refused(engine, npi):
    with pytest.raises(InvalidInputError, match="EDICT"):
        engine.p2p(P2PSpec("", TARGET, edit="word swap"), replace(npi, method="edict"))
    with pytest.raises(InvalidInputError, match="must be that prompt"):
        engine.p2p(P2PSpec("a big blue circle", TARGET, edit="word swap"), npi)


# --------------------------------------------------------------------------------------------
# Fixed-point, Direct and edit-friendly DDPM inversion: P2P samples them as they reconstruct


@pytest.fixture(scope="module")
def scene():
    return render(Scene("blue", (make_object("circle", "red", "big", "left"),)))


@pytest.fixture(scope="module")
def inversions(engine, scene):
    """method -> its inversion of the scene at the edit guidance (10 steps)."""
    done = {}

    def invert(method: str):
        if method not in done:
            *_, result = engine.invert(InversionSpec(CAPTION, method, steps=STEPS, guidance_scale=GUIDANCE), scene.image)
            done[method] = result.inversion
        return done[method]

    return invert


NEW_METHODS = ["fixed_point", "direct", "ddpm"]


@pytest.mark.parametrize("method", NEW_METHODS)
def test_unedited_source_branch_of_the_new_methods_is_their_reconstruction(engine, inversions, method):
    """Direct: the source back on the trajectory after every step; DDPM: its corrections; fixed-point: plain DDIM."""
    inversion = inversions(method)
    result = edit(engine, inversion)
    expected = reconstruction(engine, inversion)
    assert float((result.latents[:1] - expected).abs().max()) < 1e-3
    if method == "direct":  # exact by construction: the encoded latents themselves
        assert torch.equal(result.latents[:1].cpu(), inversion.latents.cpu())


@pytest.mark.parametrize("method", NEW_METHODS)
def test_colour_swap_of_the_new_methods_changes_the_colour_and_keeps_the_background(engine, inversions, scene, method):
    result = edit(engine, inversions(method), target_prompt="a big yellow circle on a blue background",
                  cross_stop=0.4, self_stop=0.2)
    edited = judge_pixels(np.asarray(result.images[1]))
    assert (edited.background, edited.objects[0].colour, edited.objects[0].shape) == ("blue", "yellow", "circle")
    outside = ~scene.masks[0]  # the true object's pixels are the edit's; everything else should stay
    background_psnr = metrics.psnr(scene.image, np.asarray(result.images[1]), mask=outside)
    assert background_psnr > 20, f"{method}: background PSNR {background_psnr:.1f} dB"
