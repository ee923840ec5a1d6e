"""The Generate tab's pure pieces: form values -> typed spec, heat-map overlay, word picker defaults, what a
stopped run offers (and sends)."""

from __future__ import annotations

from dataclasses import replace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from studio import png_settings
from studio.errors import InvalidInputError
from studio.events import Preview
from studio.specs import GenerateSpec
from studio.ui import generate

FORM = dict(
    prompt="a red circle",
    negative_prompt=None,
    seed=42.0,
    random_seed=False,
    steps=10.0,
    guidance_scale=4.5,
    scheduler="euler",
    width=64.0,
    height=96.0,
    batch_size=2.0,
    capture_attention=True,
)


def test_form_becomes_a_typed_spec():
    spec = generate.spec_from_values(FORM)
    assert (spec.seed, spec.steps, spec.width, spec.height, spec.batch_size) == (42, 10, 64, 96, 2)
    assert all(isinstance(v, int) for v in (spec.seed, spec.steps, spec.width, spec.height, spec.batch_size))
    assert spec.negative_prompt == "" and spec.capture_attention and spec.scheduler == "euler"


def test_random_seed_leaves_the_seed_to_the_engine():
    assert generate.spec_from_values({**FORM, "random_seed": True, "seed": None}).seed is None


def test_missing_seed_without_random_is_an_input_error():
    with pytest.raises(InvalidInputError, match="Enter a seed"):
        generate.spec_from_values({**FORM, "seed": None})


def test_word_picker_starts_on_the_first_content_word_and_keeps_a_pick():
    state = {
        "tokens": ["a", "big", "red", "circle"],
        "maps": np.random.default_rng(0).random((4, 8, 8)).astype(np.float32),
        "image": np.zeros((64, 64, 3), np.uint8),
    }
    words, layers, overlay = generate.render_attention(state, None)
    assert words["value"] == 1 and words["choices"][3] == ("circle", 3)
    assert layers["value"] == generate.ALL_LAYERS
    assert overlay.size == (64, 64)
    assert generate.render_attention(state, 3)[0]["value"] == 3
    assert generate.render_attention(None, 2)[2] is None


def test_resolution_picker_shows_one_unet_resolution():
    rng = np.random.default_rng(0)
    state = {
        "tokens": ["red", "circle"],
        "maps": rng.random((2, 16, 16)).astype(np.float32),
        "per_resolution": {16: rng.random((2, 16, 16)).astype(np.float32), 8: np.zeros((2, 8, 8), np.float32)},
        "image": np.full((64, 64, 3), 128, np.uint8),
    }
    _, layers, all_layers = generate.render_attention(state, 0, generate.ALL_LAYERS)
    assert layers["choices"] == [("all", 0), ("16×16", 16), ("8×8", 8)]
    _, layers, coarse = generate.render_attention(state, 0, 8)
    assert layers["value"] == 8
    assert np.asarray(coarse).std() < np.asarray(all_layers).std()  # the all-zero 8x8 map is flat
    assert generate.render_attention(state, 0, 32)[1]["value"] == generate.ALL_LAYERS  # unknown: all


# --------------------------------------------------------------------------------------------
# Global guidance controls (issue #4)

ROWS = [
    ["a blue background", 3, "snr", 0.5, 0, 1],
    ["", None, "", None, None, None],  # an empty row, as the table's "+" adds it
    ["a yellow background", -2.0, None, None, 0.2, None],
]


@pytest.mark.parametrize("shape", ["array", "api-dict", "pandas"])
def test_condition_table_becomes_typed_conditions(shape):
    import pandas as pd

    table = {
        "array": ROWS,
        "api-dict": {"headers": list(generate.CONDITION_COLUMNS), "data": ROWS},
        "pandas": pd.DataFrame(ROWS, columns=generate.CONDITION_COLUMNS),
    }[shape]
    first, second = generate.conditions_from_table(table)
    assert (first.prompt, first.weight, first.schedule, first.exponent) == ("a blue background", 3.0, "snr", 0.5)
    assert (second.weight, second.schedule, second.start, second.stop) == (-2.0, "constant", 0.2, 1.0)
    assert generate.table_from_conditions([first, second])[1] == ["a yellow background", -2.0, "constant", 0.5, 0.2, 1.0]


def test_a_condition_cell_that_is_not_a_number_names_its_row():
    with pytest.raises(InvalidInputError, match="Condition 2: weight 'lots' is not a number"):
        generate.conditions_from_table([["a blue background", 1, "", "", "", ""], ["a red circle", "lots"]])


def test_form_with_conditions_and_classifier_guidance_becomes_a_spec():
    spec = generate.spec_from_values(dict(
        **FORM, conditions=ROWS, guidance_rescale=0.7, classifier_target="red object", classifier_strength=8,
    ))
    assert len(spec.conditions) == 2 and spec.guidance_rescale == 0.7
    assert spec.classifier_guidance.target == "red object" and spec.classifier_guidance.strength == 8.0
    assert generate.spec_from_values({**FORM, "classifier_target": generate.NO_CLASSIFIER}).classifier_guidance is None
    assert spec.classifier_guidance.normalise is True  # the spec's default when the form leaves it out
    raw = generate.spec_from_values({**FORM, "classifier_target": "red object", "classifier_normalise": False})
    assert raw.classifier_guidance.normalise is False


def test_a_png_restores_the_classifier_gradient_rule_it_ran_with(tiny_classifier_engine):
    with gr.Blocks():
        tab = generate.GenerateTab(tiny_classifier_engine)
    box = tab.form["classifier_normalise"]
    guided = {"prompt": "a red circle", "classifier_guidance": {"target": "red object", "strength": 4, "normalise": True}}
    assert tab.form.restore(guided)[box] is True
    before = {"prompt": "a red circle", "classifier_guidance": {"target": "red object", "strength": 2}}
    assert tab.form.restore(before)[box] is False  # made before normalisation: eq. 14's raw gradient
    assert tab.form.restore({"prompt": "a red circle", "classifier_guidance": None})[box] is box.value  # off: defaults


def test_weight_plot_draws_every_condition_and_the_classifier_strength():
    weights = np.array([[5.0, 0.0], [5.0, 2.0]])
    with_classifier = generate.weight_plot(["a red circle", "a blue background"], weights, np.array([0.0, 3.0]), "red object")
    without = generate.weight_plot(["a red circle", "a blue background"], weights)
    assert with_classifier.height > without.height  # one more legend row
    assert with_classifier.width == without.width


# --------------------------------------------------------------------------------------------
# Issue #16: seeds per batch item, a stopped run's settings, the heat map as a mask


def test_each_item_settings_remake_it_alone_with_its_own_seed():
    record = {"prompt": "a red circle", "seed": 41, "seeds": [41, 42, 43], "batch_size": 3}
    assert generate.item_seeds(record) == [41, 42, 43]
    assert generate.item_settings(record, 2) == {"prompt": "a red circle", "seed": 43, "seeds": [43], "batch_size": 1}
    assert generate.item_seeds({"seed": 7, "batch_size": 2}) == [7, 8]  # a record from before per-item seeds


def test_run_settings_are_loadable_and_say_where_a_stopped_run_stopped():
    spec = generate.spec_from_values(FORM)
    settings = generate.partial_settings(generate.run_settings(spec, "tiny-sd", 128), step=10)
    assert (settings["job"], settings["seed"], settings["seeds"]) == ("generate", 42, [42, 43])
    assert (settings["width"], settings["height"], settings["stopped_at_step"]) == (64, 96, 10)
    assert "capture_attention" not in settings  # a view option, not a setting
    restored = png_settings.spec_fields(settings)
    assert GenerateSpec(**restored) == replace(spec, capture_attention=False)
    native = generate.run_settings(GenerateSpec("a red circle", seed=1), "tiny-sd", 128)
    assert (native["width"], native["height"]) == (128, 128)  # the size the run draws, not "None"


def test_the_heat_map_shown_is_sent_as_a_mask_of_its_word_at_the_image_size():
    maps = np.zeros((2, 8, 8), np.float32)
    maps[1, :4, :4] = 1.0  # "circle" attends to the top-left quarter
    state = {"tokens": ["red", "circle"], "maps": maps, "per_resolution": {8: maps}, "step": 5,
             "image": np.zeros((64, 64, 3), np.uint8), "settings": {"prompt": "red circle", "seed": 1}}
    item = generate.map_sendable(state, 1, 8)
    assert item.word == "circle" and item.mask.shape == (64, 64) and item.settings["seed"] == 1
    assert item.mask[:28, :28].all() and not item.mask[36:, 36:].any()
    assert generate.map_sendable({**state, "maps": np.zeros_like(maps), "per_resolution": {}}, 1) is None  # flat
    heat_map = generate.render_attention(state, 1, 8)[2]
    carried = png_settings.read_png_settings(heat_map)
    assert (carried["picture"], carried["word"], carried["layers"], carried["seed"]) == ("heat map", "circle", "8×8", 1)


def test_a_stopped_runs_partial_images_are_what_the_send_buttons_carry(tiny_engine):
    with gr.Blocks():
        tab = generate.GenerateTab(tiny_engine)
    spec = generate.spec_from_values(FORM)
    shown = generate.Shown(generate.run_settings(spec, "tiny-sd", 128))
    shown.preview = Preview(step=4, images=[Image.new("RGB", (64, 96), (200, 0, 0)), Image.new("RGB", (64, 96), 0)])
    offered = tab.partial(shown)
    items = offered[tab.items]
    assert [item.settings["seed"] for item in items] == [42, 43]  # each partial image's own seed, not the last run's
    assert all(item.settings["stopped_at_step"] == 4 for item in items)
    assert (items[0].image == (200, 0, 0)).all() and offered[tab.sending] is items[0]


# --------------------------------------------------------------------------------------------
# Issue #17: structure rows in the condition table (a control row is a condition like a sub-prompt)

STRUCTURE_FORM = {**FORM, "steps": 3.0, "batch_size": 1.0, "capture_attention": False}


@pytest.fixture(scope="module")
def structure_tab(tiny_model_dir):
    from structure_harness import structure_engine

    with gr.Blocks():
        return generate.GenerateTab(structure_engine(tiny_model_dir))


def last_outputs(outputs) -> dict:
    """Every output a handler streamed, the last value of each component."""
    last = {}
    for update in outputs:
        last.update(update)
    return last


def test_without_a_picked_control_generate_runs_without_structure(tiny_engine):
    from studio.ui.structure_rows import NO_CONTROL, row_field

    assert generate.spec_from_values(FORM).structure is None
    with gr.Blocks():
        tab = generate.GenerateTab(tiny_engine)  # no controls loaded: the rows are hidden, a line says why
    assert tab.form[row_field(1, "control")].value == NO_CONTROL
    assert tab.form[row_field(1, "control")].choices == [("none", NO_CONTROL)]


def test_a_channel_control_row_and_the_image_prompt_run_and_their_png_restores_them(structure_tab):
    from structure_harness import square_map

    from studio.ui.structure_rows import row_field

    tab, row = structure_tab, lambda name: row_field(1, name)
    reference = np.zeros((32, 32, 3), np.uint8)
    reference[:] = (40, 40, 200)
    values = {**STRUCTURE_FORM, row("control"): "layout", row("image"): square_map(20, 30, 50), row("map"): "drawing",
              row("mode"): "channel", row("weight"): 3.0, row("schedule"): "snr", row("stop"): 0.5,
              "image_prompt_on": True, "image_prompt_reference": reference, "image_prompt_scale": 0.5}
    spec = generate.spec_from_values(values)
    (control,) = spec.structure.controls
    assert (control.control, control.mode, control.weight, control.schedule, control.stop) == (
        "layout", "channel", 3.0, "snr", 0.5)
    plan_values = {name: value for name, value in values.items() if name in generate.PLAN_FIELDS}
    _, structure_plot = tab.plot_weights(**plan_values)
    assert structure_plot["visible"] and structure_plot["value"].width > 0

    last = last_outputs(tab.run(None, **values))
    settings = last[tab.settings]
    assert settings["structure"]["controls"][0]["mode"] == "channel"
    assert settings["structure"]["image_prompt"]["scale"] == 0.5
    map_record = settings["structure_images"]["controls"][0]
    assert (map_record["width"], map_record["height"]) == (64, 96)  # the 128 px map resized to the image
    record = png_settings.read_png_settings(last[tab.downloads][0])
    restored = tab.form.restore(record)
    assert {name: restored[tab.form[name]] for name in (row("control"), row("mode"), row("stop"), "image_prompt_on")} \
        == {row("control"): "layout", row("mode"): "channel", row("stop"): 0.5, "image_prompt_on": True}
    plain = tab.form.restore({"prompt": "a red circle", "structure": None})
    assert plain[tab.form[row("control")]] == "none" and plain[tab.form["image_prompt_on"]] is False
    _, hidden = tab.plot_weights(**{name: value for name, value in FORM.items() if name in generate.PLAN_FIELDS})
    assert hidden["visible"] is False


@pytest.mark.parametrize(("change", "message"), [
    ({"row1_image": None}, r"Control row 1 \(layout, map from drawing\) has no image"),
    ({"row1_image": np.zeros((64, 64, 3), np.uint8)}, r"Control row 1 \(layout, map from drawing\): The control map is empty"),
    ({"row1_control": "nope"}, "nope"),
    ({"row1_control": "none", "image_prompt_on": True}, "no reference image"),
])
def test_a_structure_row_that_cannot_run_is_a_gradio_error(structure_tab, change, message):
    from structure_harness import square_map

    values = {**STRUCTURE_FORM, "row1_control": "layout", "row1_image": square_map(20, 30, 50), **change}
    with pytest.raises(gr.Error, match=message):
        last_outputs(structure_tab.run(None, **values))
