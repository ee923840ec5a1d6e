"""A concept's word works in every job the tabs run, on the embedded model: Prompt-to-Prompt's word swap to the new
word, SDEdit, DiffEdit (both stages), an inversion captioned with it and generation under structure control; each
result records the concept, and without the concept the same word is refused with a message naming it.

The concept here is an embedding for "star" written by the test (its vector the embedding of "triangle", so the
model draws something pointed there) — what training writes, without the minutes of training.
"""

from __future__ import annotations

import numpy as np
import pytest

from studio.editing.diffedit import DiffEditSpec
from studio.editing.p2p import P2PSpec
from studio.editing.sdedit import SDEditSpec
from studio.errors import InvalidInputError
from studio.events import Result
from studio.inversion import InversionSpec
from studio.personalize.files import write_embeddings
from studio.shapes.render import Scene, make_object, render
from studio.specs import ConceptUse, GenerateSpec
from studio.structure.spec import ControlSpec, StructureImages, StructureSpec

STAR = (ConceptUse("star"),)
SCENE = render(Scene("blue", (make_object("circle", "red", "big", "center"),))).image


@pytest.fixture(scope="module")
def star(engine, tmp_path_factory):
    model = engine.model
    row = model.text_encoder.get_input_embeddings().weight[model.tokenizer.convert_tokens_to_ids("triangle")]
    folder = tmp_path_factory.mktemp("star")
    write_embeddings(folder, {"star": row.detach().clone()[None]})
    info = engine.concepts.load(folder / "learned_embeds.safetensors")
    yield info
    engine.concepts.unload(info.name)


def result_of(events) -> Result:
    *_, last = events
    assert isinstance(last, Result)
    return last


def recorded(result: Result) -> list[tuple[str, str]]:
    return [(c["name"], c["kind"]) for c in result.settings["concepts"]]


def test_p2p_swaps_a_word_for_the_new_word(engine, star):
    spec = P2PSpec("a big red circle on a blue background", "a big red star on a blue background", edit="word swap",
                   seed=1, steps=6, concepts=STAR)
    result = result_of(engine.p2p(spec))
    assert recorded(result) == [("star", "embedding")] and len(result.images) == 2
    with pytest.raises(InvalidInputError, match="star"):
        engine.p2p(P2PSpec(spec.source_prompt, spec.target_prompt, edit="word swap", seed=1, steps=6))


def test_sdedit_and_diffedit_edit_towards_the_new_word(engine, star):
    sdedit = result_of(engine.sdedit(SDEditSpec("a big red star on a blue background", strengths=(0.5,), repeats=1,
                                                seed=0, steps=6, concepts=STAR), SCENE))
    assert recorded(sdedit) == [("star", "embedding")]
    diffedit = result_of(engine.diffedit(DiffEditSpec("a big red circle on a blue background",
                                                      "a big red star on a blue background", steps=6, seed=0,
                                                      noise_samples=2, concepts=STAR), SCENE))
    assert recorded(diffedit) == [("star", "embedding")]


def test_an_inversion_captioned_with_the_new_word_records_it(engine, star):
    result = result_of(engine.invert(InversionSpec("a big red star on a blue background", steps=6, concepts=STAR),
                                     SCENE))
    assert recorded(result) == [("star", "embedding")]


def test_generation_under_a_layout_control_takes_the_new_word(engine, star):
    layout = np.zeros_like(SCENE)
    layout[32:96, 32:96] = (255, 255, 255)
    spec = GenerateSpec("a big red star on a blue background", seed=2, steps=6, concepts=STAR,
                        structure=StructureSpec(controls=(ControlSpec("layout"),)))
    result = result_of(engine.generate(spec, structure_images=StructureImages(controls=(layout,))))
    assert recorded(result) == [("star", "embedding")] and result.settings["structure"]["controls"]
