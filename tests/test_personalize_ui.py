"""The Personalize tab without a browser, on the embedded model: a training streams its loss and samples, its files
load into this browser session's concepts at once, and the new word then works in the Generate tab for this
session only; a user's file loads, takes a scale and unloads; what the user must change is a gr.Error.
"""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest

from studio.ui import generate, personalize
from studio.ui.session_concepts import SESSION_CONCEPTS

FAST = dict(method="textual-inversion", concept="star", class_word="circle", steps=4, learning_rate=0.02, rank=8,
            train_text_encoder=False, prior_preservation=True, prior_weight=1.0, class_images=4, sample_every=2,
            seed=0, second_concept="")
GENERATE = dict(prompt="a red star on a blue background", negative_prompt="", seed=3, random_seed=False, steps=4,
                guidance_scale=5.0, scheduler="ddim", width=128, height=128, batch_size=1, capture_attention=False)


def finished(outputs) -> dict:
    """Every output a handler streamed, the last value of each component."""
    last = {}
    for update in outputs:
        last.update(update)
    return last


def session(name: str) -> SimpleNamespace:
    return SimpleNamespace(session_hash=name)


@pytest.fixture(scope="module")
def tabs(engine, tmp_path_factory):
    """The tabs on the session's shared engine; what this module's trainings and loads add to it goes after it."""
    before = {info.name for info in engine.concepts.loaded()}
    with gr.Blocks():
        yield (personalize.PersonalizeTab(engine, concepts_dir=tmp_path_factory.mktemp("concepts")),
               generate.GenerateTab(engine))
    for info in engine.concepts.loaded():
        if info.name not in before:
            engine.concepts.unload(info.name)


@pytest.fixture(scope="module")
def trained(tabs):
    """A short Textual Inversion of the star, run through the tab in session "artist"."""
    tab, _ = tabs
    pictures = tab.render_pictures("star", 4, 0)
    return finished(tab.run(session("artist"), images=pictures, **FAST))


def test_a_training_streams_its_loss_and_samples_and_its_files_join_the_session(tabs, trained):
    tab, _ = tabs
    assert trained[tab.loss_view].size[0] > 0 and len(trained[tab.samples]) > 0
    names = {path.rsplit("/", 1)[-1] for path in trained[tab.files]}
    assert {"learned_embeds.safetensors", "star.pt", "concept.json"} <= names
    assert [row[:2] for row in trained[tab.concept_table]] == [["star", "embedding"]]
    assert "works in every tab" in trained[tab.concepts_note]
    assert [use.name for use in SESSION_CONCEPTS.uses("artist")] == ["star"]


def test_the_new_word_works_in_generate_for_its_session_only(tabs, trained):
    _, generating = tabs
    shown = finished(generating.run(session("artist"), **GENERATE))
    used = shown[generating.settings]
    assert [(c["name"], c["kind"], c["scale"]) for c in used["concepts"]] == [("star", "embedding", 1.0)]
    with pytest.warns(UserWarning, match=r"made with star \(embedding [0-9a-f]{16}, scale 1.0\): load the same files"):
        generating.read_settings(shown[generating.downloads][0])  # Load settings says which weights it needs
    # another browser session never loaded it: its word belongs to a concept that session does not use
    with pytest.raises(gr.Error, match="star"):
        finished(generating.run(session("visitor"), **GENERATE))


def test_a_concepts_scale_is_the_sessions_and_unload_lets_it_go(tabs, trained, engine):
    tab, generating = tabs
    tab.set_scale(session("artist"), "star", 0.5)
    assert tab.picked_scale(session("artist"), "star") == 0.5  # the slider follows the picked concept
    used = finished(generating.run(session("artist"), **GENERATE))[generating.settings]
    assert used["concepts"][0]["scale"] == 0.5
    with pytest.raises(gr.Error, match="between -2 and 2"):
        tab.set_scale(session("artist"), "star", 3.0)
    shown = tab.unload(session("artist"), "star")
    assert shown[tab.concept_table] == [] and "star" not in [info.name for info in engine.concepts.loaded()]
    # the file the run wrote loads back like a user's own (A1111 layout), and is the session's again
    star_pt = next(path for path in trained[tab.files] if path.endswith("star.pt"))
    loaded = tab.load_concept(session("artist"), star_pt)
    assert [row[0] for row in loaded[tab.concept_table]] == ["star"] and "Loaded embedding" in loaded[tab.concepts_note]


@pytest.mark.parametrize(("changes", "message"), [
    (dict(images=[]), "no images; give 3 to 10"),
    (dict(concept="circle"), "already draws"),
    (dict(learning_rate=5.0), "Learning rate must be between"),
    (dict(method="lora", lora_layers="everything"), "LoRA layers must be one of attention, convolutions"),
])
def test_what_the_user_must_change_is_said_before_training(tabs, changes, message):
    tab, _ = tabs
    values = {**FAST, "concept": "heart", "images": tab.render_pictures("heart", 3, 0), **changes}
    with pytest.raises(gr.Error, match=message):
        finished(tab.run(session("artist"), **values))


def test_the_renderer_draws_only_the_reserved_shapes(tabs):
    tab, _ = tabs
    assert len(tab.render_pictures("heart", 3, 1)) == 3
    with pytest.raises(gr.Error, match="draws star, heart"):
        tab.render_pictures("<my-star>", 3, 0)


def test_uploaded_pictures_of_another_size_train_as_a_word_with_a_note(tabs, monkeypatch):
    tab, _ = tabs
    uploads = [image.resize((96, 96)).convert("RGBA") for image, _ in tab.render_pictures("heart", 3, 2)]  # no captions
    notes: list[str] = []
    monkeypatch.setattr(personalize.gr, "Info", notes.append)
    shown = finished(tab.run(session("uploader"), images=uploads, **{**FAST, "concept": "heart", "steps": 2}))
    assert any(path.endswith("heart.pt") for path in shown[tab.files])
    assert len(notes) == 3 and all("96" in note for note in notes), notes


def test_picking_lora_shows_its_rank_layers_and_text_encoder_choice_only():
    shown = {name: update["visible"] for name, update in zip(personalize.METHOD_FIELDS,
                                                             personalize.method_visibility("lora"))}
    assert [name for name, visible in shown.items() if visible] == ["rank", "lora_layers", "train_text_encoder"]
    spec = personalize.form_spec({**FAST, "method": "lora", "lora_layers": "attention+convolutions"})
    assert (spec.method, spec.lora_layers) == ("lora", "attention+convolutions")

