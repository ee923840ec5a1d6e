"""Fixed-point, Direct and edit-friendly DDPM inversion on the embedded model: the stochastic DDIM step they build on
is diffusers' step; each reconstructs a rendered scene at the VAE's ceiling; fixed-point inversion recovers an
under-described image ('' caption, 10 steps) that DDIM inversion reconstructs at about 4 dB; DDPM inversion's noise is
the seed's and recorded, and DiffEdit edits with its corrections; settings out of range are refused with a message naming them."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from studio.editing.diffedit import DiffEditSpec
from studio.editing.masks import dilate
from studio.errors import InvalidInputError
from studio.events import InversionResult
from studio.inversion import InversionSpec, StepGrid
from studio.inversion.steps import affine_step
from studio.jobs import inversion_record
from studio.shapes.judge import judge_pixels
from studio.shapes.render import Scene, make_object, render

CAPTION = "a big red circle on a blue background"
MODEL = "assets/models/shapes-sd"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return render(Scene("blue", (make_object("circle", "red", "big", "left"),))).image


def run(engine, image, prompt=CAPTION, steps=25, **options) -> InversionResult:
    *_, result = engine.invert(InversionSpec(prompt, steps=steps, guidance_scale=3.0, **options), image)
    assert isinstance(result, InversionResult)
    return result


@pytest.mark.parametrize("steps", [10, 30])
def test_stochastic_ddim_step_is_the_schedulers_eta_one_step(steps):
    """x_prev = A x + B out + sigma z with (A, B) = coefficients(i, eta=1) is DDIMScheduler.step(eta=1, variance_noise=z),
    and finite at zero terminal SNR."""
    scheduler = DDIMScheduler.from_pretrained(MODEL, subfolder="scheduler")
    scheduler.set_timesteps(steps)
    grid = StepGrid.of(scheduler, "v_prediction")
    generator = torch.Generator().manual_seed(0)
    for i, t in enumerate(scheduler.timesteps):
        x, v, z = torch.randn(3, 1, 4, 16, 16, generator=generator)
        expected = scheduler.step(v, t, x, eta=1.0, variance_noise=z, return_dict=False)[0]
        ours = affine_step(v, x, grid.coefficients(i, eta=1.0)) + grid.sigma(i, 1.0) * z
        if i == 0:  # ab_t = 0: sqrt(1 - ab_prev - sigma^2) of a difference that is 0, which diffusers takes in
            assert torch.isfinite(ours).all()  # float32 (off by 1e-3 at 10 steps, NaN at 30); ours is finite
            continue
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    assert grid.sigma(0, 0.0) == 0.0 and grid.coefficients(3, 0.0) == grid.coefficients(3)


def test_fixed_point_inversion_reaches_the_vae_ceiling(engine, image):
    result = run(engine, image, method="fixed_point")
    assert result.settings["psnr"] >= result.settings["vae_psnr"] - 0.5
    spec = InversionSpec()
    assert result.settings["inversion_unet_passes"] <= 25 * (1 + spec.fixed_point_iterations)  # guess + iterations
    assert len(result.inversion.losses) == 25  # each step's iteration moves


def test_fixed_point_recovers_an_under_described_image_ddim_inversion_loses(engine, image):
    """'' at 10 steps: DDIM inversion's out(x_prev) ~ out(x_t) fails where the model settles colours and layout."""
    ddim = run(engine, image, prompt="", steps=10, method="ddim")
    fixed = run(engine, image, prompt="", steps=10, method="fixed_point")
    assert ddim.settings["psnr"] < 10
    assert fixed.settings["psnr"] > ddim.settings["psnr"] + 20
    assert fixed.settings["psnr"] >= fixed.settings["vae_psnr"] - 1.0


def test_direct_inversion_reconstructs_exactly_by_construction(engine, image):
    result = run(engine, image, steps=10, method="direct")
    assert result.settings["latent_mse"] == 0.0  # the source is put back on the trajectory, ending on x_0
    assert result.settings["psnr"] == pytest.approx(result.settings["vae_psnr"], abs=1e-9)
    assert result.settings["inversion_unet_passes"] == 10  # one w = 1 pass per step


def test_ddpm_inversion_reconstructs_at_the_ceiling_and_its_noise_is_the_seeds(engine, image):
    first = run(engine, image, steps=10, method="ddpm", seed=7)
    again = run(engine, image, steps=10, method="ddpm", seed=7)
    other = run(engine, image, steps=10, method="ddpm", seed=8)
    assert first.settings["latent_mse"] < 1e-8
    assert abs(first.settings["psnr"] - first.settings["vae_psnr"]) < 0.05
    corrections = first.inversion.corrections
    assert len(corrections) == 10 and all(c.shape == first.inversion.latents.shape for c in corrections)
    assert torch.equal(first.inversion.noise_latents, again.inversion.noise_latents)
    assert not torch.equal(first.inversion.noise_latents, other.inversion.noise_latents)
    assert abs(other.settings["psnr"] - other.settings["vae_psnr"]) < 0.05  # any seed reconstructs
    assert inversion_record(first.inversion)["seed"] == 7  # what an edit of it records


@pytest.mark.parametrize("options, named", [
    ({"method": "fixed_point", "fixed_point_iterations": 0}, "Fixed-point iterations"),
    ({"method": "fixed_point", "fixed_point_iterations": 21}, "Fixed-point iterations"),
    ({"method": "fixed_point", "fixed_point_tolerance": -1.0}, "Fixed-point early-stop tolerance"),
    ({"method": "ddpm", "seed": -1}, "Seed"),
])
def test_settings_out_of_range_are_refused_naming_them(engine, image, options, named):
    with pytest.raises(InvalidInputError, match=named):
        engine.invert(InversionSpec(CAPTION, steps=10, **options), image)


def test_diffedit_of_a_ddpm_inversion_edits_with_its_corrections(engine, image):
    """Inside the mask DiffEdit samples a DDPM inversion with its own corrected step (the corrections carry the image's
    layout): circle -> square lands as a square; the masked DDIM step from the same trajectory leaves a circle."""
    inversion = run(engine, image, method="ddpm", seed=0).inversion
    region = dilate(render(Scene("blue", (make_object("circle", "red", "big", "left"),))).masks[0], 4)
    spec = DiffEditSpec(CAPTION, CAPTION.replace("circle", "square"), seed=0)
    shapes = []
    for edited in (inversion, dataclasses.replace(inversion, corrections=None)):
        *_, result = engine.diffedit(spec, mask=region, inversion=edited)
        out = np.asarray(result.images[0])
        assert np.array_equal(out[~region], image[~region])  # the original pixels outside the mask
        shapes.append(judge_pixels(out).objects[0].shape)
    assert shapes == ["square", "circle"]
