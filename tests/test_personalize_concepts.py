"""Concepts in the engine (studio.personalize.concepts): loaded LoRAs, embeddings and replaced weights apply exactly
to the jobs that use them, at their scales, and a job without them is bit-identical to one before any was loaded.

Files are written by the test with studio.personalize.files' writers on the embedded model (peft for the LoRA layers,
random so that they change the image), then loaded as users' files are."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

from studio.editing.p2p import P2PSpec
from studio.engine import Engine
from studio.errors import InvalidInputError
from studio.events import AttentionMaps, Result
from studio.personalize.files import (
    base_fingerprint,
    write_concept_json,
    write_custom_diffusion,
    write_dreambooth,
    write_embeddings,
    write_lora,
)
from studio.png_settings import format_parameters, parse_parameters, spec_fields
from studio.specs import ConceptUse, GenerateSpec

STEPS = 3
CROSS_K = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.weight"


@pytest.fixture
def engine() -> Engine:
    return Engine(device="cpu")


def run(engine: Engine, events) -> Result:
    return next(event for event in events if isinstance(event, Result))


def generate(engine: Engine, prompt: str = "a red circle on a blue background", **fields) -> np.ndarray:
    return run(engine, engine.generate(GenerateSpec(prompt, seed=3, steps=STEPS, **fields))).pixels


def concept_json(engine: Engine, folder: Path, method: str, words: list[str], files: list[Path]) -> Path:
    base = {"name": engine.model_name, "fingerprint": base_fingerprint(engine.model)}
    write_concept_json(folder, method=method, words=words, class_word="circle", base=base, steps=0, stopped=False,
                       files=files)
    return folder


def lora_folder(engine: Engine, folder: Path, word: str, seed: int, text_encoder: bool = False) -> Path:
    """A rank-2 LoRA of random A and B (peft's init_lora_weights=False) on the UNet's attention projections."""
    return lora_modules(engine, folder, word, seed, text_encoder)[0]


def lora_modules(engine: Engine, folder: Path, word: str, seed: int,
                 text_encoder: bool = False) -> tuple[Path, torch.nn.Module, torch.nn.Module | None]:
    """lora_folder, and the UNet (and text encoder) copies whose LoRA layers it holds."""
    torch.manual_seed(seed)
    encoder = None
    unet = copy.deepcopy(engine.model.unet)
    unet.add_adapter(LoraConfig(r=2, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    text_lora = None
    if text_encoder:
        encoder = inject_adapter_in_model(LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj",
                                                                                    "out_proj"], init_lora_weights=False),
                                          copy.deepcopy(engine.model.text_encoder))
        text_lora = get_peft_model_state_dict(encoder)
    files = write_lora(folder, word, get_peft_model_state_dict(unet), text_lora, alpha=4)
    return concept_json(engine, folder, "lora", [word], files), unet, encoder


def embedding_folder(engine: Engine, folder: Path, word: str, vectors: int = 1) -> Path:
    width = engine.model.text_encoder.get_input_embeddings().weight.shape[1]
    files = write_embeddings(folder, {word: torch.randn(vectors, width, generator=torch.Generator().manual_seed(5))})
    return concept_json(engine, folder, "textual-inversion", [word], files)


def base_state(engine: Engine) -> dict[str, torch.Tensor]:
    """The base weights, under peft's base_layer names too (LoRA layers themselves left out)."""
    model = engine.model
    state = {}
    for prefix, module in (("unet", model.unet), ("text_encoder", model.text_encoder)):
        for name, value in module.state_dict().items():
            if "lora_" not in name:
                state[f"{prefix}.{name.replace('.base_layer', '')}"] = value.clone()
    return state


def test_a_job_without_concepts_is_bit_identical_and_each_use_is_restored(engine, tmp_path):
    before = generate(engine)
    weights = base_state(engine)
    vocabulary = len(engine.model.tokenizer)
    engine.concepts.load(lora_folder(engine, tmp_path / "star", "star", seed=1, text_encoder=True))
    engine.concepts.load(embedding_folder(engine, tmp_path / "new", "<new>", vectors=2))
    assert len(engine.model.tokenizer) == vocabulary + 2  # "<new>" and "<new>_1"
    assert np.array_equal(generate(engine), before)
    with_both = generate(engine, "a red <new> and a star", concepts=[ConceptUse("star", 0.8), {"name": "<new>"}])
    assert with_both.shape == before.shape
    assert np.array_equal(generate(engine), before)
    after = base_state(engine)
    rows = engine.model.text_encoder.get_input_embeddings().weight
    assert torch.count_nonzero(rows[vocabulary:]) == 0  # new tokens' rows hold nothing between jobs
    for name, value in weights.items():
        if name.endswith("token_embedding.weight"):
            assert torch.equal(after[name][:vocabulary], value)
        else:
            assert torch.equal(after[name], value), name


def test_a_loaded_lora_computes_what_it_was_trained_as(engine, tmp_path):
    """alpha 4 over rank 2: the resident model under the concept gives the adapted copies' outputs (scale alpha/r kept)."""
    folder, unet, encoder = lora_modules(engine, tmp_path / "star", "star", seed=1, text_encoder=True)
    engine.concepts.load(folder)
    ids = torch.tensor([engine.tokenize("a red star").ids])
    latents = torch.randn(1, unet.config.in_channels, 8, 8, generator=torch.Generator().manual_seed(0))

    def forward(text_encoder, denoiser):
        with torch.no_grad():
            hidden = text_encoder(ids)[0]
            yield hidden, denoiser(latents, 500, encoder_hidden_states=hidden).sample

    hidden, noise = next(engine.concepts.running([ConceptUse("star")], forward(engine.model.text_encoder, engine.model.unet)))
    expected_hidden, expected_noise = next(forward(encoder, unet))
    torch.testing.assert_close(hidden, expected_hidden, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(noise, expected_noise, rtol=1e-5, atol=1e-5)
    base_hidden, _ = next(forward(engine.model.text_encoder, engine.model.unet))  # after the job: the base again
    assert (base_hidden - hidden).abs().max() > 1e-3


@pytest.mark.slow  # about 10 s; .ci/run runs it
def test_two_loras_with_their_own_weights_and_unloading_one(engine, tmp_path):
    before = generate(engine)
    star = engine.concepts.load(lora_folder(engine, tmp_path / "star", "star", seed=1))
    heart = engine.concepts.load(lora_folder(engine, tmp_path / "heart", "heart", seed=2))
    assert (star.kind, star.words, heart.name) == ("lora", ("star",), "heart")
    assert engine.concepts.load(tmp_path / "star") == star  # the same file twice: the same concept
    assert [info.name for info in engine.concepts.loaded()] == ["star", "heart"]

    # scale 0 adds 0 * B A x: the base output exactly; each LoRA and scale its own image
    assert np.array_equal(generate(engine, concepts=[ConceptUse("star", 0.0), ConceptUse("heart", 0.0)]), before)
    star_only = generate(engine, concepts=[ConceptUse("star")])
    heart_only = generate(engine, concepts=[ConceptUse("heart", 0.7)])
    both = generate(engine, concepts=[ConceptUse("star"), ConceptUse("heart", 0.7)])
    half_star = generate(engine, concepts=[ConceptUse("star", 0.5)])
    images = [before, star_only, heart_only, both, half_star]
    for i, first in enumerate(images):
        for second in images[i + 1:]:
            assert np.abs(first - second).max() > 1e-3

    engine.concepts.unload("star")
    assert [info.name for info in engine.concepts.loaded()] == ["heart"]
    assert np.array_equal(generate(engine, concepts=[ConceptUse("heart", 0.7)]), heart_only)
    assert np.array_equal(generate(engine), before)
    with pytest.raises(InvalidInputError, match="No concept named 'star'.*loaded: heart"):
        generate(engine, concepts=[ConceptUse("star")])


def test_an_embedding_word_works_only_in_jobs_that_use_it(engine, tmp_path):
    heart_row = engine.model.text_encoder.get_input_embeddings().weight[engine.model.tokenizer.convert_tokens_to_ids("heart")].clone()
    before = generate(engine, "a red heart on a blue background")  # the reserved word's untrained row
    info = engine.concepts.load(embedding_folder(engine, tmp_path / "heart", "heart"))
    assert (info.kind, info.words) == ("embedding", ("heart",))
    with pytest.raises(InvalidInputError, match="'heart' is the word of concept 'heart', which this job does not use"):
        generate(engine, "a red heart on a blue background")
    with pytest.raises(InvalidInputError, match="Condition 1: 'heart' is the word"):
        generate(engine, "a red circle", conditions=[{"prompt": "a heart"}])
    used = generate(engine, "a red heart on a blue background", concepts=[ConceptUse("heart")])
    assert np.abs(used - before).max() > 1e-3
    row = engine.model.text_encoder.get_input_embeddings().weight[engine.model.tokenizer.convert_tokens_to_ids("heart")]
    assert torch.equal(row, heart_row)  # the reserved row is back
    engine.concepts.unload("heart")
    assert np.array_equal(generate(engine, "a red heart on a blue background"), before)


@pytest.mark.slow  # about 11 s; .ci/run runs it
def test_replaced_weights_interpolate_and_are_restored(engine, tmp_path):
    """Custom Diffusion's K/V (and a DreamBooth UNet): W0 + scale (W1 - W0) during the job, W0 after."""
    before = generate(engine)
    base_k = engine.model.unet.get_parameter(CROSS_K).detach().clone()
    tuned = {CROSS_K: base_k + 0.5 * torch.randn_like(base_k)}
    width = engine.model.text_encoder.get_input_embeddings().weight.shape[1]
    folder = tmp_path / "cd"
    files = write_custom_diffusion(folder, tuned, {"<cd>": torch.randn(1, width)})
    info = engine.concepts.load(concept_json(engine, folder, "custom-diffusion", ["<cd>"], files))
    assert info.kind == "custom-diffusion"
    assert np.array_equal(generate(engine, concepts=[ConceptUse("<cd>", 0.0)]), before)  # lerp at 0 is W0
    full = generate(engine, "a red <cd>", concepts=[ConceptUse("<cd>")])
    assert np.abs(full - generate(engine, "a red <cd>", concepts=[ConceptUse("<cd>", 0.5)])).max() > 1e-4
    assert torch.equal(engine.model.unet.get_parameter(CROSS_K), base_k)

    # a LoRA wraps the projection afterwards: the replacement finds it under peft's base_layer name
    engine.concepts.load(lora_folder(engine, tmp_path / "star", "star", seed=1))
    assert np.array_equal(generate(engine, "a red <cd>", concepts=[ConceptUse("<cd>")]), full)
    assert np.array_equal(generate(engine), before)


def test_dreambooth_unet_swaps_in_per_job(engine, tmp_path):
    before = generate(engine)
    unet = copy.deepcopy(engine.model.unet)
    with torch.no_grad():
        for parameter in unet.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    folder = tmp_path / "db"
    engine.concepts.load(concept_json(engine, folder, "dreambooth", ["star"], write_dreambooth(folder, unet)))
    tuned = generate(engine, "a red star", concepts=[ConceptUse("star")])
    assert np.abs(tuned - generate(engine, "a red star", concepts=[ConceptUse("star", 0.0)])).max() > 1e-3
    assert np.array_equal(generate(engine, concepts=[ConceptUse("star", 0.0)]), before)
    assert np.array_equal(generate(engine), before)


def test_lora_runs_under_prompt_to_prompt_and_attention_capture(engine, tmp_path):
    spec = P2PSpec("a big red circle on a blue background", "a big red square on a blue background", edit="word swap",
                   seed=5, steps=STEPS)
    plain = run(engine, engine.p2p(spec)).images
    engine.concepts.load(lora_folder(engine, tmp_path / "star", "star", seed=1))
    edited = run(engine, engine.p2p(P2PSpec(**{**spec.__dict__, "concepts": (ConceptUse("star"),)})))
    assert edited.settings["concepts"][0]["name"] == "star"
    assert any(np.asarray(a, dtype=float).__sub__(np.asarray(b, dtype=float)).any()
               for a, b in zip(edited.images, plain))
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(run(engine, engine.p2p(spec)).images, plain))
    events = list(engine.generate(GenerateSpec("a red circle", seed=1, steps=STEPS, capture_attention=True,
                                               attention_every=1, concepts=(ConceptUse("star"),))))
    maps = [event for event in events if isinstance(event, AttentionMaps)]
    assert len(maps) == STEPS and np.isfinite(maps[-1].maps).all() and maps[-1].maps.max() > 0


def test_settings_record_the_concepts_and_a1111_text_carries_lora_tags(engine, tmp_path):
    star = engine.concepts.load(lora_folder(engine, tmp_path / "star", "star", seed=1))
    heart = engine.concepts.load(embedding_folder(engine, tmp_path / "heart", "heart"))
    spec = GenerateSpec("a red star and a heart", seed=1, steps=STEPS,
                        concepts=(ConceptUse("star", 0.8), ConceptUse("heart")))
    settings = run(engine, engine.generate(spec)).settings
    assert settings["concepts"] == [
        {"name": "star", "kind": "lora", "hash": star.hash, "scale": 0.8},
        {"name": "heart", "kind": "embedding", "hash": heart.hash, "scale": 1.0},
    ]
    text = format_parameters(settings)
    assert text.splitlines()[0] == "a red star and a heart <lora:star:0.8>"
    assert f'Lora hashes: "star: {star.hash}"' in text and f'TI hashes: "heart: {heart.hash}"' in text
    parsed = parse_parameters(text)
    assert parsed["prompt"] == "a red star and a heart" and parsed["concepts"] == settings["concepts"]
    assert GenerateSpec(**spec_fields(parsed)).concepts == spec.concepts
    assert GenerateSpec.from_settings(settings).concepts == spec.concepts
    # another tool's line: its <lora:...> tags become LoRA uses (no hashes)
    other = parse_parameters("a cat <lora:detail:0.6> <lora:style>\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1")
    assert other["prompt"] == "a cat"
    assert other["concepts"] == [{"name": "detail", "kind": "lora", "scale": 0.6},
                                 {"name": "style", "kind": "lora", "scale": 1.0}]


def test_bad_concept_uses_are_refused_with_a_message(engine, tmp_path):
    engine.concepts.load(lora_folder(engine, tmp_path / "star", "star", seed=1))
    with pytest.raises(InvalidInputError, match="Concept 'star': Concept scale must be between -2 and 2, got 3"):
        generate(engine, concepts=[ConceptUse("star", 3.0)])
    with pytest.raises(InvalidInputError, match="listed twice"):
        generate(engine, concepts=[ConceptUse("star"), ConceptUse("star", 0.5)])
    with pytest.raises(InvalidInputError, match="No concept named 'circle'"):
        generate(engine, concepts=[ConceptUse("circle")])
    with pytest.raises(InvalidInputError, match="'star' is the word of concept 'star'"):
        generate(engine, "a red star")
    with pytest.raises(InvalidInputError, match="Scale must be|Concept scale"):
        GenerateSpec("a red circle", concepts=[ConceptUse("star", -2.5)]).validate()
    with pytest.raises(InvalidInputError, match="named 'star' is loaded already"):
        engine.concepts.load(embedding_folder(engine, tmp_path / "other", "<other>"), name="star")
    with pytest.raises(InvalidInputError, match="belongs to the loaded concept 'star'"):
        engine.concepts.load(embedding_folder(engine, tmp_path / "star-embedding", "star"), name="star-embedding")


def test_sdxl_embeddings_fill_both_text_encoders_and_a_lora_loads(tmp_path):
    """SDXL's embedding files hold clip_l's and clip_g's vectors; both encoders' rows are written for the job only."""
    from safetensors.torch import save_file
    from test_sdxl import TINY_SDXL

    from studio.architectures import random_pipeline

    folder = tmp_path / "tiny-sdxl"
    random_pipeline(TINY_SDXL, seed=0).save_pretrained(folder)
    engine = Engine(str(folder), device="cpu")
    prompt = "a photograph of an astronaut"
    before = generate(engine, prompt)
    widths = [encoder.get_input_embeddings().weight.shape[1]
              for encoder in (engine.model.text_encoder, engine.model.text_encoder_2)]
    generator = torch.Generator().manual_seed(1)
    save_file({"clip_l": torch.randn(2, widths[0], generator=generator),
               "clip_g": torch.randn(2, widths[1], generator=generator)}, tmp_path / "xl-word.safetensors")
    info = engine.concepts.load(tmp_path / "xl-word.safetensors", token="<xl>")
    assert (info.kind, info.words) == ("embedding", ("<xl>",))
    tokens = engine.tokenize("a photograph of <xl>")
    assert tokens.words[-1] == "<xl>" and len(tokens.word_tokens[-1]) == 2  # two vectors, one word
    assert tokens.ids[1:6] == tokens.ids_2[1:6]  # the same new tokens in both tokenizers
    used = generate(engine, "a photograph of <xl>", concepts=[ConceptUse("<xl>")])
    with pytest.raises(InvalidInputError, match="'<xl>' is the word of concept '<xl>'"):
        generate(engine, "a photograph of <xl>")
    engine.concepts.load(lora_folder(engine, tmp_path / "lora", "<xl-lora>", seed=3))
    assert np.abs(generate(engine, prompt, concepts=[ConceptUse("<xl-lora>")]) - before).max() > 1e-4
    assert np.array_equal(generate(engine, prompt), before)
    assert used.shape == before.shape
