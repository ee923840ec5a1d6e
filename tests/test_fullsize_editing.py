"""Every capability on the full-size SD 1.5 and SD 2.1 architectures (published configs, random weights).

What a user with a real checkpoint relies on, where these architectures differ from the embedded model
(SD 1.5: epsilon prediction, 768-wide CLIP text; SD 2.1: v-prediction, 1024-wide OpenCLIP text, linear
attention projections): multi-condition generation with attention maps for every word at every resolution
the UNet attends at; the eps/v/x0 conversions against diffusers' DDIM step; every inversion method (EDICT
and BDIA exact to float precision even with random weights); SDEdit (masked: pixels outside the mask
untouched); DiffEdit (mask, then edit); Prompt-to-Prompt (word swap, local blend, re-weight) of an inverted
photograph. Two steps each, at 64 px: the editing jobs keep a small upload's own size (`keep_size`,
studio.images.working_size) instead of resizing it to 512 / 768 px.

Slow: one architecture at a time is built (~1 B random float32 parameters, ~5 GB), shared by its tests
and freed before the next. The last tests are fast: `keep_size` on the tiny model.
"""

from __future__ import annotations

import gc
import shutil

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from studio import schedule
from studio.architectures import REPO_ROOT, SD15, SD21, random_pipeline
from studio.editing import masks
from studio.editing.diffedit import DiffEditSpec
from studio.editing.p2p import P2PSpec
from studio.editing.sdedit import SDEditSpec
from studio.engine import Engine
from studio.errors import InvalidInputError
from studio.events import AttentionMaps, DiffEditResult, EditAttentionMaps, InversionResult, Mask, MaskResult, P2PResult, Result, SDEditResult
from studio.images import prepare_image, working_size
from studio.inversion import METHODS, InversionSpec, StepGrid
from studio.sampling import make_scheduler
from studio.specs import Condition, GenerateSpec

SIZE = 64  # the smallest size the studio accepts: 8x8 latents, attention at 8, 4, 2 and the mid block's 1
STEPS = 2
CAPTION = "a photograph of a horse"
slow = pytest.mark.slow


@pytest.fixture(scope="module", params=[SD15, SD21], ids=["sd15", "sd21"])
def engine(request, tmp_path_factory):
    """The architecture saved as a diffusers folder and loaded as users load theirs; freed after its tests so
    that only one full-size model is alive at a time."""
    folder = tmp_path_factory.mktemp("full-size") / request.param.name.replace(" ", "")
    random_pipeline(request.param).save_pretrained(folder)
    loaded = Engine(str(folder), device="cpu")
    yield loaded
    loaded.model = None  # whatever still refers to the engine (a result, a traceback) must not hold ~5 GB
    gc.collect()
    shutil.rmtree(folder)  # pytest keeps the temporary folders of its last three runs: 4-5 GB each here


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    """A user's small upload, wider than tall: kept at its own size it is cropped to 64x64, never resampled."""
    return Image.open(REPO_ROOT / "assets" / "examples" / "astronaut.jpg").convert("RGB").resize((80, SIZE))


@pytest.fixture(scope="module")
def stroke_mask() -> np.ndarray:
    """(64, 80) bool painted on the photo: a block left of centre (the kept 64x64 is columns 8..72)."""
    mask = np.zeros((SIZE, 80), dtype=bool)
    mask[16:48, 16:40] = True
    return mask


@pytest.fixture(scope="module")
def inversions(engine, photo):
    """Each method's inversion of the photo, run once per architecture (DiffEdit and P2P edit the DDIM one)."""
    done: dict[str, tuple[list, InversionResult]] = {}

    def invert(method: str) -> tuple[list, InversionResult]:
        if method not in done:
            spec = InversionSpec(CAPTION, method=method, steps=STEPS, inner_steps=1, keep_size=True)
            events = list(engine.invert(spec, photo))
            done[method] = (events, events[-1])
        return done[method]

    return invert


def assert_images(result: Result, count: int) -> None:
    """What the user sees: `count` RGB images at the upload's kept size, finite pixels in [0, 1]."""
    assert len(result.images) == count
    assert all(image.size == (SIZE, SIZE) and image.mode == "RGB" for image in result.images)
    assert result.pixels.shape == (count, SIZE, SIZE, 3) and result.pixels.dtype == np.float32
    assert np.isfinite(result.pixels).all() and 0 <= result.pixels.min() and result.pixels.max() <= 1


def latent_cells(pixel_mask: np.ndarray) -> torch.Tensor:
    """(64, 64) nearest-upsampled latent mask -> (8, 8) bool (one value per 8x8 cell)."""
    return torch.from_numpy(np.ascontiguousarray(pixel_mask[::8, ::8]))


# --------------------------------------------------------------------------------------------
# Generation and the parameterisations


@slow
def test_multi_condition_generation_with_attention_maps_for_every_word_at_every_resolution(engine):
    spec = GenerateSpec(
        "a photograph of an astronaut riding a horse", negative_prompt="blurry", seed=1, steps=1, width=SIZE,
        height=SIZE, guidance_rescale=0.5, capture_attention=True, attention_every=1,
        conditions=(Condition("a red hat", 2.0, schedule="snr"), Condition("a desert", -1.0, start=0.5)),
    )
    events = list(engine.generate(spec))
    result = events[-1]
    assert_images(result, 1)
    assert result.unet_evaluations == 1  # negative, prompt and both conditions in ONE call per step
    assert result.settings["nfe_per_step"] == 4
    maps = [e for e in events if isinstance(e, AttentionMaps)]
    assert [m.step for m in maps] == [1]
    words = spec.prompt.split()
    for event in maps:
        assert event.tokens == words
        assert {size: m.shape for size, m in event.per_resolution.items()} == {
            size: (len(words), size, size) for size in (8, 4, 2, 1)
        }
        for word_maps in event.per_resolution.values():
            assert np.isfinite(word_maps).all() and word_maps.min() >= 0
            assert np.allclose(word_maps.reshape(len(words), -1).max(axis=1), 1)  # each word's own map


@slow
@torch.no_grad()
def test_eps_v_and_x0_from_the_unet_give_diffusers_ddim_step(engine):
    """The engine's conversions of the raw output (eps for SD 1.5, v for SD 2.1): a DDIM step through its eps
    and x0 is the scheduler's, and converting back gives the model's own output."""
    model = engine.model
    scheduler = make_scheduler("ddim", model.scheduler_config)
    scheduler.set_timesteps(10)
    grid = StepGrid.of(scheduler, engine.prediction_type)
    i = 3
    t, alpha_bar, alpha_bar_prev = grid.timesteps[i], grid.alpha_bar[i], grid.alpha_bar_prev[i]
    x_t = torch.randn(1, 4, SIZE // 8, SIZE // 8, generator=torch.Generator().manual_seed(0))
    cond = engine.encode_prompt(engine.tokenize(CAPTION))
    output = model.unet(x_t, t, encoder_hidden_states=cond.embeddings, return_dict=False)[0]
    eps = schedule.to_eps(output, x_t, alpha_bar, engine.prediction_type)
    x0 = schedule.to_x0(output, x_t, alpha_bar, engine.prediction_type)
    expected = scheduler.step(output, t, x_t, return_dict=True)
    torch.testing.assert_close(x0, expected.pred_original_sample, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(schedule.noise_to(x0, eps, alpha_bar_prev), expected.prev_sample, rtol=1e-4, atol=1e-4)
    for back in (schedule.from_eps(eps, x_t, alpha_bar, engine.prediction_type),
                 schedule.from_x0(x0, x_t, alpha_bar, engine.prediction_type)):
        torch.testing.assert_close(back, output, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# Inversion

# UNet passes (inversion, reconstruction) each method promises for N steps; NTI adds one per Adam step
PASSES = {"ddim": (STEPS, STEPS), "negative_prompt": (STEPS, STEPS), "null_text": (3 * STEPS, STEPS),
          "edict": (2 * STEPS, 2 * STEPS), "bdia": (STEPS, STEPS - 1), "direct": (STEPS, STEPS), "ddpm": (STEPS, STEPS),
          "fixed_point": (4 * STEPS, STEPS)}  # fixed-point: its guess and 3 iterations a step at most (early stops)


@slow
@pytest.mark.parametrize("method", METHODS)
def test_every_inversion_method_at_the_uploads_own_size(engine, inversions, method):
    events, result = inversions(method)
    assert isinstance(result, InversionResult)
    assert_images(result, 1)
    assert "centre-cropped 80x64 to 64x64" in result.settings["preparation"] and "resized" not in result.settings["preparation"]
    inversion = result.inversion
    assert inversion.image.size == (SIZE, SIZE) and len(inversion.trajectory) == STEPS + 1
    assert all(x.shape == (1, 4, SIZE // 8, SIZE // 8) and x.dtype == torch.float32 for x in inversion.trajectory)
    assert all(torch.isfinite(x).all() for x in inversion.trajectory)
    inversion_passes, reconstruction_passes = PASSES[method]
    if method == "fixed_point":
        assert 2 * STEPS <= result.settings["inversion_unet_passes"] <= inversion_passes
    else:
        assert result.settings["inversion_unet_passes"] == inversion_passes + result.settings["backward_passes"]
    assert result.settings["reconstruction_unet_passes"] == reconstruction_passes
    if method == "null_text":
        assert result.settings["backward_passes"] <= STEPS  # one inner iteration per step at most
        assert len(inversion.uncond_embeddings) == STEPS
    if method in ("edict", "bdia"):
        # exact: the reconstruction is the encoded latent up to float32 rounding (relative RMS error ~1e-5 after
        # two steps of a random UNet), whatever the weights; DDIM's is of the order of the latent itself
        scale = float(inversion.latents.double().pow(2).mean())
        assert result.settings["latent_mse"] <= 1e-8 * scale
        assert abs(result.settings["psnr"] - result.settings["vae_psnr"]) < 0.01


# --------------------------------------------------------------------------------------------
# SDEdit, DiffEdit, Prompt-to-Prompt


@slow
def test_sdedit_unmasked_batches_its_repeats_at_the_uploads_own_size(engine, photo):
    spec = SDEditSpec(CAPTION, strengths=(0.5,), repeats=2, seed=0, steps=STEPS, keep_size=True)
    result = list(engine.sdedit(spec, guide=photo))[-1]
    assert isinstance(result, SDEditResult)
    assert_images(result, 2)
    assert result.unet_evaluations == 1  # round(t0 * steps) steps, both repeats and CFG in one call
    assert result.latents.shape == (2, 4, SIZE // 8, SIZE // 8) and result.latents.dtype == engine.model.dtype
    assert not np.array_equal(result.pixels[0], result.pixels[1])  # repeat k has its own noise (seed + k)
    assert result.strip.size == (2 * SIZE, 2 * (SIZE + 24))
    assert result.settings["inputs"] == ["guide: centre-cropped 80x64 to 64x64"]


@slow
def test_masked_sdedit_leaves_every_pixel_outside_the_mask_as_it_was(engine, photo, stroke_mask):
    guide = photo.copy()
    ImageDraw.Draw(guide).rectangle((20, 20, 34, 42), fill=(220, 30, 30))  # a red stroke inside the mask
    spec = SDEditSpec(CAPTION, strengths=(0.5,), repeats=1, seed=0, steps=STEPS, keep_size=True, composite=True)
    result = list(engine.sdedit(spec, guide=guide, mask=stroke_mask, original=photo))[-1]
    assert_images(result, 1)
    assert result.unet_evaluations == 1
    kept = ~masks.prepare_mask(stroke_mask, stroke_mask.shape, SIZE)  # (64, 64) True = frozen
    original = np.asarray(prepare_image(photo, SIZE).image)
    assert np.array_equal(np.asarray(result.images[0])[kept], original[kept])
    frozen_cells = result.latent_mask[0, 0] == 0
    assert frozen_cells.any() and torch.equal(result.latents[0][:, frozen_cells], result.original_latents[0][:, frozen_cells])


@slow
def test_diffedit_mask_of_an_upload_then_edit_of_its_inversion(engine, photo, stroke_mask, inversions):
    spec = DiffEditSpec(CAPTION, "a photograph of a zebra", steps=STEPS, probes=1, noise_samples=2, edit_strength=1.0,
                        keep_size=True, seed=0)
    events = list(engine.diffedit_mask(spec, photo))
    found = events[-1]
    assert isinstance(found, MaskResult) and found.unet_evaluations == 1  # all noise samples in one call per probe
    assert found.soft.shape == found.binary.shape == (SIZE, SIZE) and found.binary.dtype == bool
    assert np.isfinite(found.soft).all() and found.soft.min() >= 0 and 0.9 < found.soft.max() <= 1  # its peak, upsampled
    assert [e.mask.shape for e in events if isinstance(e, Mask)] == [(SIZE, SIZE)]

    _, inverted = inversions("ddim")  # the same photo at the same 64 px, painted over
    painted = masks.prepare_mask(stroke_mask, stroke_mask.shape, SIZE)
    result = list(engine.diffedit(spec, mask=painted, inversion=inverted.inversion))[-1]
    assert isinstance(result, DiffEditResult)
    assert_images(result, 1)
    assert result.unet_evaluations == STEPS  # the edit from the inversion's x_T; no probes, no new inversion
    assert np.array_equal(result.mask, painted) and result.latents.dtype == engine.model.dtype
    kept = result.latent_mask[0, 0] == 0
    assert kept.any() and torch.equal(result.latents[0][:, kept], result.original_latents[0][:, kept])


@slow
def test_p2p_word_swap_with_local_blend_and_reweight_of_an_inversion(engine, inversions):
    _, inverted = inversions("ddim")
    # random weights attend almost uniformly (every cell within ~3% of the peak): only a threshold close to 1
    # leaves part of the image outside the blend mask
    spec = P2PSpec("", "a photograph of a zebra", edit="word swap", blend_words=("horse", "zebra"),
                   blend_threshold=0.99, reweights=(("zebra", 2.0),), maps_every=1)
    events = list(engine.p2p(spec, inversion=inverted.inversion))
    result = events[-1]
    assert isinstance(result, P2PResult)
    assert_images(result, 2)
    assert result.unet_evaluations == STEPS  # source and target under CFG: one batch of 4 per step
    assert result.alignment[-1] == ("zebra", "horse")
    assert result.latents.shape == (2, 4, SIZE // 8, SIZE // 8) and result.latents.dtype == engine.model.dtype
    # the unedited source branch is the inversion's own reconstruction
    assert np.abs(result.pixels[0] - inverted.pixels[0]).max() < 1e-3
    # local blend: outside its mask the target keeps the source's latents exactly
    assert result.mask.shape == (SIZE, SIZE) and [e.mask.shape for e in events if isinstance(e, Mask)][-1] == (SIZE, SIZE)
    outside = ~latent_cells(result.mask)
    assert outside.any() and torch.equal(result.latents[1][:, outside], result.latents[0][:, outside])
    maps = [e for e in events if isinstance(e, EditAttentionMaps)][-1]
    assert maps.source.tokens == CAPTION.split() and maps.target.tokens == spec.target_prompt.split()
    assert maps.target.maps.shape == (5, SIZE // 8, SIZE // 8) and np.isfinite(maps.target.maps).all()


# --------------------------------------------------------------------------------------------
# keep_size on the tiny model (fast)


def test_keep_size_works_at_the_uploads_own_size_and_off_it_at_the_native_one(tiny_engine):
    upload = np.zeros((72, 100, 3), dtype=np.uint8)  # shorter side 72: a multiple of 8
    assert working_size(upload, tiny_engine.native_size, tiny_engine.size_multiple, keep_size=False) == 128
    assert working_size(upload, tiny_engine.native_size, tiny_engine.size_multiple, keep_size=True) == 72
    assert working_size(Image.new("RGB", (70, 90)), 128, 8, keep_size=True) == 64  # down to a multiple of 8
    result = list(tiny_engine.invert(InversionSpec("a circle", steps=2, keep_size=True), upload))[-1]
    assert result.images[0].size == (72, 72) and result.settings["preparation"] == "centre-cropped 100x72 to 72x72"


@pytest.mark.parametrize("side", [56, 4096])
def test_keep_size_refuses_an_upload_outside_the_studios_sizes(tiny_engine, side):
    spec = SDEditSpec("", strengths=(0.5,), repeats=1, steps=2, keep_size=True)
    with pytest.raises(InvalidInputError, match=f"shorter side is {side} px.*untick keep size"):
        tiny_engine.sdedit(spec, guide=np.zeros((side, side, 3), dtype=np.uint8))


def test_diffedit_counts_the_passes_of_its_inverted_start(tiny_engine):
    spec = DiffEditSpec("a red circle", "a blue circle", steps=2, edit_strength=1.0, start="inversion", seed=0)
    mask = np.zeros((128, 128), dtype=bool)
    mask[32:96, 32:96] = True
    result = list(tiny_engine.diffedit(spec, np.zeros((128, 128, 3), dtype=np.uint8), mask=mask))[-1]
    assert result.unet_evaluations == 2 + 2  # DDIM inversion to t_edit, then the masked edit
    assert result.settings["unet_evaluations"] == 4
