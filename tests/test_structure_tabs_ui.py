"""The Structure accordion of the editing tabs, without a browser: each tab's run hands its rows to the engine
(spec.structure and structure_images=), its PNG carries them and Load settings restores them; what the user must
change is a gr.Error.

Protects: SDEdit under a layout control read from its own strokes (strokes plus an outline/layout of them) and
under an image prompt; P2P, DiffEdit's Stage II and an inversion under a control; the rows start off (an edit runs without structure unless asked); a row reads the panel's own picture when one is
given; an empty map names its row; a model without controls hides the rows and says why.
"""

from __future__ import annotations

import gradio as gr
import numpy as np
import pytest

from studio import png_settings
from studio.shapes.vocabulary import COLOURS
from studio.ui import sdedit
from studio.ui.structure import NO_CONTROL, picture_canvas, row_field
from studio.ui.structure_panel import PICTURE

SIZE = 128


def scene() -> np.ndarray:
    """A red square on blue: the guide, and a picture whose layout is the square."""
    picture = np.empty((SIZE, SIZE, 3), np.uint8)
    picture[:] = COLOURS["blue"]
    picture[40:90, 40:90] = COLOURS["red"]
    return picture


def row(control: str, source: str, **changes) -> dict:
    """Row 1's values as the browser sends them."""
    values = {"control": control, "map": source, "scale": 1.0, "start": 0.0, "stop": 1.0, "mode": "balanced",
              "weight": 2.0, "schedule": "constant"}
    return {row_field(1, name): value for name, value in {**values, **changes}.items()}


def finished(outputs) -> dict:
    last = {}
    for update in outputs:
        last.update(update)
    return last


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    from structure_harness import structure_engine

    return structure_engine(tiny_model_dir)


@pytest.fixture(scope="module")
def sdedit_tab(engine):
    with gr.Blocks():
        return sdedit.SDEditTab(engine)


def sdedit_values(**changes) -> dict:
    return {"canvas": picture_canvas(scene()), "prompt": "a red square", "strengths": "0.5", "repeats": 1, "steps": 2,
            "guidance_scale": 5.0, "noise_form": "vp", "seed": 7, "random_seed": False, "composite": False, **changes}


def test_the_rows_start_off_and_offer_the_loaded_controls(sdedit_tab):
    control = sdedit_tab.form[row_field(1, "control")]
    assert control.value == NO_CONTROL and "layout" in {value for _, value in control.choices}
    assert control.elem_id == "sdedit-row1-control"


def test_sdedit_under_a_layout_of_its_strokes_carries_it_and_loads_back(sdedit_tab):
    last = finished(sdedit_tab.run(None, **sdedit_values(**row("layout", "layout (colours)", stop=0.5))))
    settings = last[sdedit_tab.settings]
    assert [(c["control"], c["stop"]) for c in settings["structure"]["controls"]] == [("layout", 0.5)]
    assert len(settings["structure_images"]["controls"]) == 1
    record = png_settings.read_png_settings(last[sdedit_tab.downloads][1])
    restored = sdedit_tab.form.restore(record)
    assert restored[sdedit_tab.form[row_field(1, "control")]] == "layout"
    assert restored[sdedit_tab.form[row_field(1, "stop")]] == 0.5
    assert restored[sdedit_tab.form[row_field(2, "control")]] == NO_CONTROL


def test_sdedit_without_rows_runs_as_before(sdedit_tab):
    settings = finished(sdedit_tab.run(None, **sdedit_values()))[sdedit_tab.settings]
    assert not settings.get("structure") and "structure_images" not in settings


def test_sdedit_with_an_image_prompt_carries_it_and_asks_for_its_reference(sdedit_tab):
    reference = np.empty((SIZE, SIZE, 3), np.uint8)
    reference[:] = COLOURS["green"]
    settings = finished(sdedit_tab.run(None, image_prompt_reference=reference,
                                       **sdedit_values(image_prompt_on=True, image_prompt_scale=0.5)))[sdedit_tab.settings]
    assert settings["structure"]["image_prompt"]["scale"] == 0.5 and settings["structure_images"]["image_prompt"]
    with pytest.raises(gr.Error, match="no reference image"):
        finished(sdedit_tab.run(None, **sdedit_values(image_prompt_on=True)))


def test_a_row_reads_the_panels_own_picture_when_one_is_given(engine):
    from studio.ui.structure_panel import StructurePanel

    panel = StructurePanel("sdedit")
    own = np.zeros((SIZE, SIZE, 3), np.uint8)
    own[10:30, 10:30] = 255
    structure, images = panel.structure({**row("layout", "drawing"), PICTURE: picture_canvas(own)}, scene(), SIZE)
    assert structure.controls[0].control == "layout"
    assert (images.controls[0][..., 0] > 127).sum() == 400  # the panel's square, not the tab's
    assert panel.structure(row(NO_CONTROL, "drawing"), scene(), SIZE) == (None, None)


def test_an_empty_map_names_its_row_as_a_gr_error(sdedit_tab):
    plain = np.empty((SIZE, SIZE, 3), np.uint8)
    plain[:] = COLOURS["blue"]  # no object: the layout is empty
    with pytest.raises(gr.Error, match=r"Row 1 \(layout, map from layout \(colours\)\): The control map is empty"):
        finished(sdedit_tab.run(None, **sdedit_values(canvas=picture_canvas(plain),
                                                      **row("layout", "layout (colours)"))))


@pytest.fixture(scope="module")
def scene_file(tmp_path_factory):
    from PIL import Image

    path = tmp_path_factory.mktemp("scene") / "scene.png"
    Image.fromarray(scene()).save(path)
    return str(path)


def test_p2p_under_a_control_from_the_panels_picture_carries_it(engine):
    from studio.ui import p2p

    with gr.Blocks():
        tab = p2p.P2PTab(engine, gr.State(None))
    values = dict(source_prompt="a red square", target_prompt="a green square", use_inversion=False,
                  edit="word swap", reweights=[], seed=3, steps=2, guidance_scale=5.0, inversion=None,
                  **row("layout", "layout (colours)"), **{PICTURE: picture_canvas(scene())})
    settings = finished(tab.run(None, **values))[tab.settings]
    assert [c["control"] for c in settings["structure"]["controls"]] == ["layout"]
    assert tab.form.restore(settings)[tab.form[row_field(1, "control")]] == "layout"
    without_picture = {name: value for name, value in values.items() if name != PICTURE}
    with pytest.raises(gr.Error, match="no picture to read"):  # a generated source has no image of its own
        finished(tab.run(None, **without_picture))


def test_diffedit_stage_two_under_a_layout_of_its_image_carries_it(engine):
    from studio.ui import diffedit

    with gr.Blocks():
        tab = diffedit.DiffEditTab(engine, gr.State(None))
    values = dict(image=scene(), use_inversion=False, source_prompt="a red square", target_prompt="a green square",
                  probes=1, noise_samples=1, steps=2, seed=3, mask=None, inversion=None,
                  **row("outline", "outline (Canny)"))
    settings = finished(tab.run(None, **values))[tab.settings]
    assert [c["control"] for c in settings["structure"]["controls"]] == ["outline"]
    assert tab.form.restore(settings)[tab.form[row_field(1, "control")]] == "outline"


def test_an_inversion_under_a_layout_carries_it(engine, scene_file):
    from studio.ui import inversion

    with gr.Blocks():
        tab = inversion.InversionTab(engine)
    values = dict(upload=scene_file, prompt="a red square", methods=["ddim"], steps=2, guidance_scale=1.0,
                  **row("layout", "layout (colours)"))
    settings = finished(tab.run(None, **values))[tab.settings]
    assert [c["control"] for c in settings["structure"]["controls"]] == ["layout"]
    assert tab.form.restore(settings)[tab.form[row_field(1, "control")]] == "layout"


def test_a_model_without_controls_hides_the_rows_and_says_why(tiny_engine):
    with gr.Blocks() as demo:
        tab = sdedit.SDEditTab(tiny_engine)
    assert tab.form[row_field(1, "control")].choices == [("none", NO_CONTROL)]
    notes = [block for block in demo.blocks.values() if getattr(block, "elem_id", None) == "sdedit-structure-no-controls"]
    assert notes and "No control models are loaded" in notes[0].value
