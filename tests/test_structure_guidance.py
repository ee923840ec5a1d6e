"""Protects: structure as channels of guidance. A "channel" row adds w(t) (eps_k - eps_u) and nothing else (weight 0
is no control, a weight changes the image, text weight 0 leaves the prompt without effect but the control still
steering); a window outside the run is the control off; the modes put the control on the branches they name; T2I
features are computed once per run; the image prompt's attention composes with attention capture; and bad input
gets a message that says what to change, before any model work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from structure_harness import square_map
from structure_harness import structure_engine as random_structure_engine

from studio.errors import InvalidInputError
from studio.events import AttentionMaps, Notice, Result
from studio.guidance import ClassifierFreeGuidance, schedule_factors
from studio.sampling import make_scheduler
from studio.schedule import alpha_bars_at
from studio.specs import GenerateSpec
from studio.structure.runtime import SOFT_DECAY, ControlInput, structured_guider
from studio.structure.spec import (
    ControlSpec,
    ImagePromptSpec,
    StructureImages,
    StructureSpec,
)

PROMPT = "a big red circle on the left"
SETTINGS = dict(seed=3, steps=4, guidance_scale=6.0)
MAP = square_map(30, 30, 60)
REFERENCE = np.full((64, 64, 3), (30, 60, 200), np.uint8)


@pytest.fixture(scope="module")
def structure_engine(tiny_model_dir):
    return random_structure_engine(tiny_model_dir)


def run(engine, structure: StructureSpec | None = None, images: StructureImages | None = None, **changes) -> Result:
    spec = GenerateSpec(changes.pop("prompt", PROMPT), structure=structure, **{**SETTINGS, **changes})
    return list(engine.generate(spec, structure_images=images))[-1]


def control(row: ControlSpec) -> tuple[StructureSpec, StructureImages]:
    return StructureSpec((row,)), StructureImages((MAP,))


def test_a_channel_row_at_weight_zero_is_no_control_and_a_weight_changes_the_image(structure_engine):
    plain = run(structure_engine).pixels
    off = run(structure_engine, *control(ControlSpec("layout", mode="channel", weight=0.0)))
    on = run(structure_engine, *control(ControlSpec("layout", mode="channel", weight=3.0)))
    assert np.abs(off.pixels - plain).max() <= 1e-5  # the zero-weight term's net never runs
    assert off.settings["nfe_per_step"] == 3  # uncond, prompt, and the channel's own prediction
    assert np.abs(on.pixels - plain).max() > 1e-2


def test_a_window_outside_the_run_is_the_control_off(structure_engine):
    # 4 steps: step i runs when i/4 >= 0.2 and (i+1)/4 <= 0.3, which no step does
    outside = run(structure_engine, *control(ControlSpec("layout", start=0.2, stop=0.3)))
    assert np.array_equal(outside.pixels, run(structure_engine).pixels)


def test_text_weight_zero_leaves_the_prompt_without_effect_while_the_control_steers(structure_engine):
    row = control(ControlSpec("layout", mode="channel", weight=3.0))
    red = run(structure_engine, *row, guidance_scale=0.0)
    blue = run(structure_engine, *row, guidance_scale=0.0, prompt="a small blue square on the right")
    assert np.abs(red.pixels - blue.pixels).max() <= 1e-6
    assert np.abs(red.pixels - run(structure_engine, guidance_scale=0.0).pixels).max() > 1e-2


def guider_for(engine, rows: tuple[ControlSpec, ...], guidance_scale: float = 6.0, steps: int = 4):
    prompt = engine.encode_prompt(engine.tokenize(PROMPT))
    uncond = engine.null_conditioning()
    scheduler = make_scheduler("ddim", engine.model.scheduler_config)
    scheduler.set_timesteps(steps)
    inner = ClassifierFreeGuidance(cond=prompt, uncond=uncond, scale=guidance_scale)
    return structured_guider(inner, uncond, StructureSpec(rows), [MAP] * len(rows), None, engine.model.controls,
                             engine.model.image_prompt, scheduler.timesteps, scheduler.alphas_cumprod,
                             engine.device, engine.model.dtype), scheduler


@pytest.mark.parametrize(("mode", "on_uncond", "layer_factors"), [
    ("balanced", True, [1.5] * 13),
    ("prompt", True, [1.5 * SOFT_DECAY ** (12 - k) for k in range(13)]),
    ("control", False, [1.5 * SOFT_DECAY ** (12 - k) for k in range(13)]),  # A1111 softens it too
    ("guess", False, (torch.logspace(-1, 0, 13) * 1.5).tolist()),
])
def test_each_mode_puts_the_control_on_the_branches_it_names(structure_engine, mode, on_uncond, layer_factors):
    guider, _ = guider_for(structure_engine, (ControlSpec("layout", scale=1.5, mode=mode),))
    uncond, prompt = guider.conds_at(0)
    assert len(uncond.controls) == on_uncond
    (attached,) = prompt.controls
    assert attached.layer_factors(13) == pytest.approx(layer_factors)


def test_channel_rows_bring_their_own_null_when_the_uncond_branch_is_taken(structure_engine):
    rows = (ControlSpec("outline"), ControlSpec("layout", mode="channel", weight=2.0, schedule="ramp_up"))
    guider, scheduler = guider_for(structure_engine, rows)
    conds = guider.conds_at(1)
    # uncond (with the balanced outline), prompt, the pure null (eps_u of the channel terms), the layout channel
    assert [len(c.controls) for c in conds] == [1, 1, 0, 1]
    assert guider.null_position == 2
    alpha_bars = alpha_bars_at(scheduler.alphas_cumprod, scheduler.timesteps).double()
    expected = 2.0 * schedule_factors("ramp_up", 0.5, 0.0, 1.0, alpha_bars)
    assert torch.equal(guider.channel_weights[:, 0], expected)  # the plotted weights are what runs
    # at CFG scale 1 there is no unconditional branch: a channel row adds the null
    alone, _ = guider_for(structure_engine, rows[1:], guidance_scale=1.0)
    assert len(alone.conds_at(0)) == 3 and alone.null_position == 1


def test_t2i_adapter_features_are_computed_once_per_run(structure_engine):
    calls = []
    hook = structure_engine.model.controls["t2i-outline"].module.register_forward_hook(lambda *_: calls.append(1))
    try:
        run(structure_engine, *control(ControlSpec("t2i-outline")))
    finally:
        hook.remove()
    assert len(calls) == 1


def test_the_image_prompt_composes_with_attention_capture_and_its_window(structure_engine):
    image_row = (StructureSpec(image_prompt=ImagePromptSpec(scale=0.8)), StructureImages(image_prompt=REFERENCE))
    plain = run(structure_engine, *image_row).pixels
    events = list(structure_engine.generate(
        GenerateSpec(PROMPT, structure=image_row[0], capture_attention=True, attention_every=2, **SETTINGS),
        structure_images=image_row[1]))
    assert np.abs(events[-1].pixels - plain).max() <= 1e-6  # capture wraps the image attention: same pixels
    assert any(isinstance(e, AttentionMaps) for e in events)
    outside = StructureSpec(image_prompt=ImagePromptSpec(scale=0.8, start=0.2, stop=0.3))
    assert np.array_equal(run(structure_engine, outside, image_row[1]).pixels, run(structure_engine).pixels)
    channel = StructureSpec(image_prompt=ImagePromptSpec(scale=0.8, mode="channel", weight=3.0))
    assert np.abs(run(structure_engine, channel, image_row[1]).pixels - run(structure_engine).pixels).max() > 1e-3


def test_a_map_of_another_size_is_resized_with_a_notice(structure_engine):
    events = list(structure_engine.generate(
        GenerateSpec(PROMPT, structure=StructureSpec((ControlSpec("layout"),)), **SETTINGS),
        structure_images=StructureImages((square_map(10, 10, 30, side=64),))))
    notices = [e.text for e in events if isinstance(e, Notice)]
    assert notices == ["Control 1 (layout): The control map was 64x64; resized to 128x128."]
    assert isinstance(events[-1], Result)
    record = events[-1].settings["structure_images"]["controls"][0]
    assert (record["width"], record["height"]) == (128, 128)  # the map the run read, after the resize


def test_the_settings_make_the_structure_spec_again(structure_engine):
    structure = StructureSpec((ControlSpec("layout", scale=0.7, mode="channel", schedule="snr"),),
                              ImagePromptSpec(scale=0.5, stop=0.5))
    result = run(structure_engine, structure, StructureImages((MAP,), REFERENCE), steps=2)
    settings = json.loads(json.dumps(result.settings))  # as a PNG's settings chunk carries them
    assert GenerateSpec.from_settings(settings).structure == structure


@pytest.mark.parametrize(("structure", "images", "message"), [
    (StructureSpec((ControlSpec("canny"),)), StructureImages((MAP,)),
     "Control 1: no control named 'canny' is loaded (loaded: layout (controlnet for layout)"),
    (StructureSpec((ControlSpec("layout", start=0.6, stop=0.4),)), StructureImages((MAP,)),
     "Control 1: start (0.6) must be before stop (0.4)."),
    (StructureSpec((ControlSpec("layout", scale=2.5),)), StructureImages((MAP,)),
     "Control 1: Control scale must be between 0 and 2, got 2.5."),
    (StructureSpec((ControlSpec("layout", mode="strong"),)), StructureImages((MAP,)),
     "Control 1: unknown mode 'strong'; choose one of balanced, prompt, control, guess, channel."),
    (StructureSpec((ControlSpec("layout", mode="channel", schedule="cosine"),)), StructureImages((MAP,)),
     "Control 1: unknown schedule 'cosine'"),
    (StructureSpec((ControlSpec("layout"),)), StructureImages(()), "1 control rows but 0 control maps"),
    (StructureSpec((ControlSpec("layout"),)), None, "The structure rows need their images"),
    (StructureSpec((ControlSpec("layout"),)), StructureImages((np.zeros((128, 128, 3), np.uint8),)),
     "Control 1 (layout): The control map is empty"),
    (StructureSpec(image_prompt=ImagePromptSpec()), StructureImages(), "Image prompt: no reference image"),
    (StructureSpec(image_prompt=ImagePromptSpec(scale=-0.1)), StructureImages(image_prompt=REFERENCE),
     "Image prompt: Image prompt scale must be between 0 and 2"),
])
def test_bad_structure_input_is_refused_with_a_clear_message(structure_engine, structure, images, message):
    with pytest.raises(InvalidInputError, match=message.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        structure_engine.generate(GenerateSpec(PROMPT, structure=structure, **SETTINGS), structure_images=images)


def test_an_image_row_without_an_ip_adapter_and_controls_on_a_bare_model_are_refused(tiny_engine):
    with pytest.raises(InvalidInputError, match="this model has no IP-Adapter loaded"):
        tiny_engine.generate(GenerateSpec(PROMPT, structure=StructureSpec(image_prompt=ImagePromptSpec())),
                             structure_images=StructureImages(image_prompt=REFERENCE))
    with pytest.raises(InvalidInputError, match=r"no control named 'layout' is loaded \(loaded: none\)"):
        tiny_engine.generate(GenerateSpec(PROMPT, structure=StructureSpec((ControlSpec("layout"),))),
                             structure_images=StructureImages((MAP,)))


def test_the_guidance_plan_shows_each_rows_scale_and_channel_weight_per_step(structure_engine):
    rows = (ControlSpec("layout", scale=0.5, start=0.25), ControlSpec("t2i-outline", stop=0.5),
            ControlSpec("outline", mode="channel", weight=2.0, schedule="ramp_down"))
    plan = structure_engine.guidance_plan(GenerateSpec(PROMPT, steps=4, structure=StructureSpec(rows))).structure
    assert plan.labels == ["Control 1 (layout)", "Control 2 (t2i-outline)", "Control 3 (outline)"]
    assert plan.scales[:, 0].tolist() == [0.0, 0.5, 0.5, 0.5]  # ControlNet: i/N >= start and (i+1)/N <= stop
    assert plan.scales[:, 1].tolist() == [1.0, 1.0, 0.0, 0.0]  # T2I-Adapter: i < int(N * stop)
    assert plan.channel_labels == ["Control 3 (outline)"]
    assert plan.channel_weights[:, 0].tolist() == pytest.approx([2.0, 4 / 3, 2 / 3, 0.0])


def test_a_control_at_guidance_scale_one_steers_the_single_branch(structure_engine):
    # CFG at w = 1 skips the unconditional branch; a control row then rides on the prompt's branch alone
    steered = run(structure_engine, *control(ControlSpec("layout")), guidance_scale=1.0)
    assert steered.settings["nfe_per_step"] == 1
    assert np.abs(steered.pixels - run(structure_engine, guidance_scale=1.0).pixels).max() > 1e-2


def test_soft_layer_weights_of_an_sd_t2i_adapter_are_a1111s_table(structure_engine):
    adapter = structure_engine.model.controls["t2i-outline"]
    factors = ControlInput(adapter, torch.zeros(1, 3, 8, 8), 2.0, "soft").layer_factors(4)
    assert factors == pytest.approx([2.0 * w for w in (0.25, 0.62, 0.825, 1.0)])
