"""Protects: structure control wherever the studio samples, on the tiny random model with random controls (their
zero convolutions perturbed, so a control changes the image). SDEdit, Prompt-to-Prompt, DiffEdit's Stage II and
inversion each come out different with a control than without; masked SDEdit and DiffEdit under a control keep
the latents and pixels off the mask exactly (the bounds of test_sdedit / test_diffedit); P2P's source under a
control (and an image prompt) is Generate's image with the same control and seed; an image inverted under a
control and edited with its source prompt reproduces its reconstruction (test_p2p_real's 1e-4 bound), for
negative-prompt inversion and null-text inversion (a control and an image prompt on both of NTI's branches), also
once saved to and read from a file (a model without that control refuses to edit it), and DDIM inversion's
reconstruction keeps its latent error under a windowed control;
a bad structure (unknown control, missing or empty map, a channel row NPI cannot invert) is refused in every job by
name, a map of another size is resized with a note, and every edit spec reads its structure back from settings."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import pytest
import torch
from structure_harness import square_map, structure_engine

from studio.editing.diffedit import DiffEditSpec
from studio.editing.p2p import P2PSpec
from studio.editing.sdedit import SDEditSpec
from studio.errors import InvalidInputError
from studio.events import Notice, Result
from studio.inversion import InversionSpec
from studio.specs import GenerateSpec
from studio.structure.spec import (
    ControlSpec,
    ImagePromptSpec,
    StructureImages,
    StructureSpec,
)

PROMPT = "a big red circle on the left"
TARGET = "a big red square on the left"
STEPS = 4
LAYOUT = StructureSpec(controls=(ControlSpec("layout", scale=1.5),))
MAP = square_map(10, 20, 60)  # (128, 128, 3) white square on black
MAPS = StructureImages(controls=(MAP,))
REFERENCE = np.random.default_rng(7).integers(0, 256, (96, 96, 3), dtype=np.uint8)
LAYOUT_AND_IMAGE = StructureSpec(controls=(ControlSpec("layout", scale=1.5),), image_prompt=ImagePromptSpec(scale=1.0))
MAPS_AND_IMAGE = StructureImages(controls=(MAP,), image_prompt=REFERENCE)


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    """An engine of its own on the tiny model, with random ControlNets, a T2I-Adapter and an IP-Adapter attached."""
    return structure_engine(tiny_model_dir)


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    """(128, 128, 3) a red disc on blue: the image the editing jobs edit."""
    yy, xx = np.mgrid[:128, :128]
    pixels = np.zeros((128, 128, 3), np.uint8)
    pixels[...] = (40, 60, 200)
    pixels[(yy - 50) ** 2 + (xx - 45) ** 2 < 30**2] = (220, 30, 30)
    return pixels


def last(events) -> Result:
    *_, result = events
    assert isinstance(result, Result)
    return result


def differ(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).max())


# --------------------------------------------------------------------------------------------
# SDEdit


def sdedit_spec(**changes) -> SDEditSpec:
    return SDEditSpec(**{"prompt": PROMPT, "strengths": (0.75,), "repeats": 1, "seed": 2, "steps": STEPS, **changes})


def test_sdedit_with_a_control_differs_and_records_the_control_and_its_map(engine, picture):
    plain = last(engine.sdedit(sdedit_spec(), picture))
    controlled = last(engine.sdedit(sdedit_spec(structure=LAYOUT), picture, structure_images=MAPS))
    assert differ(plain.pixels, controlled.pixels) > 1e-2
    assert controlled.settings["structure"]["controls"][0]["control"] == "layout"
    assert controlled.settings["structure_images"]["controls"][0]["width"] == 128
    assert "structure_images" not in plain.settings


def test_masked_sdedit_under_a_control_keeps_the_frozen_latents_and_pixels_exactly(engine, picture):
    mask = np.zeros((128, 128), bool)
    mask[:, 64:] = True
    guide = picture.copy()
    guide[mask] = (30, 200, 30)
    spec = sdedit_spec(structure=StructureSpec(controls=(ControlSpec("layout", scale=1.5),
                                                         ControlSpec("t2i-outline", stop=0.5))))
    maps = StructureImages(controls=(MAP, square_map(60, 50, 50)))
    result = last(engine.sdedit(spec, guide, mask=mask, original=picture, structure_images=maps))
    plain = last(engine.sdedit(sdedit_spec(), guide, mask=mask, original=picture))
    assert differ(plain.pixels, result.pixels) > 1e-2
    frozen = 1 - result.latent_mask
    assert torch.equal(result.latents * frozen, result.original_latents.expand_as(result.latents) * frozen)
    assert np.array_equal(np.asarray(result.images[0])[~mask], picture[~mask])


def test_a_map_of_another_size_is_resized_to_the_working_size_with_a_note(engine, picture):
    events = list(engine.sdedit(sdedit_spec(structure=LAYOUT), picture,
                                structure_images=StructureImages(controls=(square_map(20, 40, 120, side=256),))))
    notes = [event.text for event in events if isinstance(event, Notice)]
    assert notes == ["Control 1 (layout): The control map was 256x256; resized to 128x128."]
    assert isinstance(events[-1], Result)


@pytest.mark.parametrize("spec_class", [SDEditSpec, P2PSpec, DiffEditSpec, InversionSpec])
def test_every_edit_spec_reads_its_structure_back_from_settings(spec_class):
    required = {SDEditSpec: {}, P2PSpec: {"source_prompt": PROMPT}, DiffEditSpec: {"source_prompt": PROMPT,
                "target_prompt": TARGET}, InversionSpec: {}}[spec_class]
    spec = spec_class(**required, structure=LAYOUT_AND_IMAGE)
    assert spec_class(**asdict(spec)).structure == LAYOUT_AND_IMAGE  # settings hold the structure as a dict


# --------------------------------------------------------------------------------------------
# Prompt-to-Prompt


def test_p2p_source_under_a_control_and_an_image_prompt_is_generates_image(engine):
    structure = StructureSpec(controls=(ControlSpec("layout", scale=1.5),), image_prompt=ImagePromptSpec(scale=1.0))
    images = StructureImages(controls=(MAP,), image_prompt=REFERENCE)
    spec = P2PSpec(PROMPT, TARGET, edit="word swap", seed=5, steps=STEPS, structure=structure)
    edit = last(engine.p2p(spec, structure_images=images))
    generated = last(engine.generate(GenerateSpec(PROMPT, seed=5, steps=STEPS, structure=structure),
                                     structure_images=images))
    np.testing.assert_allclose(edit.pixels[0], generated.pixels[0], atol=1e-3)
    plain = last(engine.p2p(P2PSpec(PROMPT, TARGET, edit="word swap", seed=5, steps=STEPS)))
    assert differ(plain.pixels[0], edit.pixels[0]) > 1e-2 and differ(plain.pixels[1], edit.pixels[1]) > 1e-2
    assert edit.settings["structure"]["image_prompt"]["scale"] == 1.0
    assert edit.settings["structure_images"]["image_prompt"]["width"] == 96


# --------------------------------------------------------------------------------------------
# DiffEdit Stage II


def test_diffedit_stage_two_under_a_control_differs_and_keeps_every_pixel_off_the_mask(engine, picture):
    mask = np.zeros((128, 128), bool)
    mask[16:88, 10:84] = True
    spec = DiffEditSpec(PROMPT, TARGET, steps=STEPS, seed=0, edit_strength=0.75)
    plain = last(engine.diffedit(spec, picture, mask=mask))
    for start in ("inversion", "noise"):
        controlled_spec = DiffEditSpec(PROMPT, TARGET, steps=STEPS, seed=0, edit_strength=0.75, start=start,
                                       structure=LAYOUT)
        controlled = last(engine.diffedit(controlled_spec, picture, mask=mask, structure_images=MAPS))
        out = np.asarray(controlled.images[0])
        assert np.array_equal(out[~mask], picture[~mask])
        assert differ(out[mask], np.asarray(plain.images[0])[mask]) > 2
        assert controlled.settings["structure"]["controls"][0]["control"] == "layout"


# --------------------------------------------------------------------------------------------
# Inversion under a control, and edits of it


def invert(engine, picture, method: str, structure: StructureSpec | None = LAYOUT, **changes):
    spec = InversionSpec(**{"prompt": PROMPT, "method": method, "steps": STEPS, "guidance_scale": 3.0,
                            "structure": structure, **changes})
    images = None if structure is None else MAPS_AND_IMAGE if structure.image_prompt is not None else MAPS
    return last(engine.invert(spec, picture, structure_images=images))


def reconstruction(engine, inversion) -> torch.Tensor:
    """The inversion's own reconstruction (studio.inversion's sampler, under its structure), final latents."""
    from studio.denoiser import Denoiser
    from studio.inversion import reconstruction_steps
    from studio.sampling import make_scheduler

    scheduler = make_scheduler("ddim", engine.model.scheduler_config)
    denoiser = Denoiser(engine.model, scheduler.alphas_cumprod)
    cond = engine.encode_prompt(engine.tokenize(inversion.prompt))
    *_, state = reconstruction_steps(denoiser, inversion, cond, engine.null_conditioning(),
                                     engine.model.scheduler_config, model=engine.model)
    return state["x"]


@pytest.mark.parametrize(("method", "structure"), [("negative_prompt", LAYOUT), ("null_text", LAYOUT_AND_IMAGE)],
                         ids=["npi-control", "nti-control-and-image-prompt"])
def test_an_image_inverted_under_a_control_and_edited_with_its_prompt_reproduces_its_reconstruction(
        engine, picture, method, structure):
    inverted = invert(engine, picture, method, structure, inner_steps=2)
    inversion = inverted.inversion
    assert inversion.structure is not None and inverted.settings["structure_images"]["controls"]
    plain = invert(engine, picture, method, structure=None, inner_steps=2).inversion
    assert float((plain.noise_latents - inversion.noise_latents).abs().max()) > 1e-3  # the control was inverted
    edit = last(engine.p2p(P2PSpec("", "", edit="refine"), inversion))  # the source prompt, the inversion's control
    assert float((edit.latents[:1] - reconstruction(engine, inversion)).abs().max()) < 1e-4
    assert edit.settings["structure"]["controls"][0]["control"] == "layout"


def test_an_inversion_file_keeps_its_control_and_a_model_without_that_control_refuses_to_edit_it(
        engine, tiny_engine, picture, tmp_path):
    from studio.inversion.file import load_inversion, save_inversion

    inversion = invert(engine, picture, "negative_prompt", LAYOUT_AND_IMAGE).inversion
    loaded = load_inversion(save_inversion(inversion, tmp_path / "controlled.inversion.safetensors"))
    assert loaded.structure.spec == inversion.structure.spec
    assert np.array_equal(loaded.structure.maps[0], inversion.structure.maps[0])
    assert np.array_equal(loaded.structure.reference, inversion.structure.reference)
    edit = last(engine.p2p(P2PSpec("", "", edit="refine"), loaded))
    assert float((edit.latents[:1] - reconstruction(engine, inversion)).abs().max()) < 1e-4
    with pytest.raises(InvalidInputError, match="no control named 'layout' is loaded"):
        tiny_engine.p2p(P2PSpec("", TARGET, edit="word swap"), loaded)


def test_ddim_inversion_under_a_windowed_control_reconstructs_as_well_as_without_and_diffedit_edits_it_under_it(
        engine, picture):
    # a window (the first half of the steps): the inversion must apply it at the steps sampling will. Measured on
    # this model, 10 steps: latent MSE 0.0134 without control, 0.0139 under it, 0.0217 with the window's steps
    # mirrored (inverse step k told k instead of N-1-k). PSNR moves little here: the tiny random VAE bounds it.
    windowed = StructureSpec(controls=(ControlSpec("layout", scale=1.5, stop=0.5),))
    plain = invert(engine, picture, "ddim", structure=None, guidance_scale=1.0, steps=10)
    controlled = invert(engine, picture, "ddim", structure=windowed, guidance_scale=1.0, steps=10)
    assert controlled.settings["latent_mse"] <= 1.2 * plain.settings["latent_mse"]
    assert controlled.settings["psnr"] >= plain.settings["psnr"] - 1.0
    mask = np.zeros((128, 128), bool)
    mask[16:88, 10:84] = True
    edit = last(engine.diffedit(DiffEditSpec(PROMPT, TARGET, steps=STEPS), mask=mask, inversion=controlled.inversion))
    assert edit.settings["structure"]["controls"][0]["control"] == "layout"  # the inversion's own control
    assert np.array_equal(np.asarray(edit.images[0])[~mask], np.asarray(controlled.inversion.image)[~mask])


# --------------------------------------------------------------------------------------------
# Bad input


UNKNOWN = StructureSpec(controls=(ControlSpec("canny"),))
NO_MAPS = StructureImages()
MASK = np.eye(128, dtype=bool)
JOBS = {
    "SDEdit": lambda engine, picture, structure, images: engine.sdedit(sdedit_spec(structure=structure), picture,
                                                                       structure_images=images),
    "P2P": lambda engine, picture, structure, images: engine.p2p(P2PSpec(PROMPT, TARGET, structure=structure),
                                                                 structure_images=images),
    "DiffEdit": lambda engine, picture, structure, images: engine.diffedit(
        DiffEditSpec(PROMPT, TARGET, structure=structure), picture, mask=MASK, structure_images=images),
    "Inversion": lambda engine, picture, structure, images: engine.invert(InversionSpec(PROMPT, structure=structure),
                                                                          picture, structure_images=images),
}


@pytest.mark.parametrize("job", JOBS)
@pytest.mark.parametrize(("structure", "images", "message"), [
    (UNKNOWN, MAPS, "Control 1: no control named 'canny' is loaded"),
    (LAYOUT, NO_MAPS, "1 control rows but 0 control maps"),
    (LAYOUT, StructureImages(controls=(np.zeros((128, 128, 3), np.uint8),)), r"Control 1 \(layout\): The control map is empty"),
])
def test_a_bad_structure_is_refused_before_model_work_in_every_job(engine, picture, job, structure, images, message):
    with pytest.raises(InvalidInputError, match=message):
        JOBS[job](engine, picture, structure, images)


def test_a_channel_row_is_refused_for_the_inversions_that_replace_the_null_branch(engine, picture):
    channel = StructureSpec(controls=(ControlSpec("layout", mode="channel"),))
    for method in ("negative_prompt", "null_text"):
        with pytest.raises(InvalidInputError, match="mode 'channel' adds its own guidance term"):
            engine.invert(InversionSpec(PROMPT, method, structure=channel), picture, structure_images=MAPS)
