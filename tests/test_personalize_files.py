"""Personalization files (studio.personalize.files): what the studio writes reads back, stock diffusers reads it too, and
every layout users have — LoRA in diffusers' and kohya's layout (SGM block names too; kohya's default layers and
conv_dim's convolutions, each at its alpha), embeddings from diffusers, A1111, kohya and SDXL, Custom Diffusion,
DreamBooth — written here for SD 1.5, SD 2.1 and SDXL's full-size architectures, is read and checked against them.
Full-size bases are built on the meta device (only their shapes are compared) and the files hold small random LoRA /
embedding tensors of the right shapes, so this is fast. Layouts the studio cannot apply (LyCORIS LoHA, LoKr, lora_mid,
DoRA, unknown keys), a file for another architecture and a truncated file are refused with messages that name the keys
or both architectures.
"""

from __future__ import annotations

import copy
import functools
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from accelerate import init_empty_weights
from diffusers import StableDiffusionPipeline, UNet2DConditionModel
from diffusers.utils import convert_state_dict_to_kohya
from peft import LoraConfig, inject_adapter_in_model, set_peft_model_state_dict
from peft.utils import get_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from studio.architectures import SD15, SD21, SDXL
from studio.engine import Engine
from studio.errors import ModelLoadError
from studio.events import Result
from studio.export_single_file import rename_modules, unet_module_names
from studio.models import tiny_random_pipeline
from studio.personalize import files
from studio.personalize.files import (
    base_fingerprint,
    check_fits,
    describe,
    peft_adapter,
    read_concept,
    write_concept_json,
    write_custom_diffusion,
    write_dreambooth,
    write_embeddings,
    write_lora,
)
from studio.specs import ConceptUse, GenerateSpec

UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")
RANK, ALPHA = 4, 8.0


@functools.cache
def meta_base(arch_name: str) -> SimpleNamespace:
    """What check_fits reads of a LoadedModel, for a full-size architecture on the meta device (shapes only)."""
    arch = {"SD 1.5": SD15, "SD 2.1": SD21, "SDXL": SDXL}[arch_name]
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(arch.unet)
        text_encoder = CLIPTextModel(CLIPTextConfig(**arch.text_encoder))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**arch.text_encoder_2)) \
            if arch.text_encoder_2 else None
    return SimpleNamespace(name=arch.name, unet=unet, text_encoder=text_encoder, text_encoder_2=text_encoder_2)


# what kohya's sd-scripts trains by default (networks.lora: every Linear of the transformer blocks, and SD 1.x's 1x1
# proj_in / proj_out convolutions) and with --network_args conv_dim (the ResNets' 3x3 convolutions): most users' files
KOHYA_UNET_TARGETS = (*UNET_TARGETS, "ff.net.0.proj", "ff.net.2", "proj_in", "proj_out", "conv1", "conv2")
KOHYA_TEXT_TARGETS = (*TEXT_TARGETS, "fc1", "fc2")  # CLIP's attention and MLP


def lora_state(module: torch.nn.Module, targets: tuple[str, ...], seed: int = 0,
               scale: float = 0.01) -> dict[str, torch.Tensor]:
    """peft-named LoRA layers (what get_peft_model_state_dict returns) with the shapes of `module`'s Linear and Conv2d
    layers named `targets` (a convolution's down weight has its kernel, its up weight is 1x1, as in peft and kohya)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, layer in module.named_modules():
        if not name.endswith(targets):
            continue
        if isinstance(layer, torch.nn.Linear):
            down, up = (RANK, layer.in_features), (layer.out_features, RANK)
        elif isinstance(layer, torch.nn.Conv2d):
            down, up = (RANK, layer.in_channels, *layer.kernel_size), (layer.out_channels, RANK, 1, 1)
        else:
            continue
        state[f"{name}.lora_A.weight"] = torch.randn(*down, generator=generator)
        state[f"{name}.lora_B.weight"] = torch.randn(*up, generator=generator) * scale
    return state


def kohya_file(path, unet_state, text_states: dict[str, dict], sgm_config=None):
    """A kohya-layout file as users have them: `lora_unet_…` (SGM block names when `sgm_config` is given),
    `lora_te_` / `lora_te1_` + `lora_te2_` with CLIP's `text_model.` root, an `.alpha` per layer."""
    if sgm_config is not None:
        unet_state = rename_modules(unet_state, unet_module_names(sgm_config), prefix="")
    prefixed = {f"unet.{key}": value for key, value in unet_state.items()}
    for part, state in text_states.items():
        root = "" if part == "text_encoder_2" else "text_model."
        prefixed.update({f"{part}.{root}{key}": value for key, value in state.items()})
    kohya = {key: torch.tensor(ALPHA) if key.endswith(".alpha") else value
             for key, value in convert_state_dict_to_kohya(prefixed).items()}
    if list(text_states) == ["text_encoder"]:
        kohya = {key.replace("lora_te1_", "lora_te_"): value for key, value in kohya.items()}
    save_file(kohya, path)
    return path


def tiny_with_lora(seed: int = 0):
    """The tiny pipeline with trained-looking LoRA layers on its UNet and text encoder (lora_B non-zero)."""
    pipe = tiny_random_pipeline(seed)
    pipe.unet.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(UNET_TARGETS)))
    inject_adapter_in_model(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=list(TEXT_TARGETS)), pipe.text_encoder)
    torch.manual_seed(seed + 1)
    for name, parameter in [*pipe.unet.named_parameters(), *pipe.text_encoder.named_parameters()]:
        if "lora_B" in name:
            torch.nn.init.normal_(parameter, std=0.05)
    return pipe


def unet_output(unet, text_encoder, tokenizer) -> torch.Tensor:
    ids = tokenizer(["a red circle"], padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    torch.manual_seed(0)
    latents = torch.randn(1, unet.config.in_channels, 16, 16)
    with torch.no_grad():
        return unet(latents, 500, encoder_hidden_states=text_encoder(ids)[0]).sample


# ----- the studio's own files on the tiny model --------------------------------------------------------------------

def test_lora_round_trip_both_layouts_and_stock_diffusers_reads_ours(tmp_path):
    trained = tiny_with_lora()
    written = write_lora(tmp_path, "<my-star>", get_peft_model_state_dict(trained.unet),
                         get_peft_model_state_dict(trained.text_encoder), alpha=ALPHA)
    assert [path.name for path in written] == ["pytorch_lora_weights.safetensors", "my-star.kohya.safetensors"]
    kohya_keys = load_file(written[1])
    assert any(key.startswith("lora_unet_down_blocks_") and key.endswith(".lora_down.weight") for key in kohya_keys)
    assert any(key.startswith("lora_te_text_model_encoder_layers_") for key in kohya_keys)
    assert all(float(value) == ALPHA for key, value in kohya_keys.items() if key.endswith(".alpha"))
    expected = unet_output(trained.unet, trained.text_encoder, trained.tokenizer)

    diffusers_file, kohya = (read_concept(path) for path in written)
    assert (diffusers_file.layout, kohya.layout) == ("diffusers", "kohya")
    assert diffusers_file.lora.keys() == kohya.lora.keys()
    for key, value in diffusers_file.lora.items():
        assert torch.equal(value, kohya.lora[key]), key
    assert set(diffusers_file.network_alphas.values()) == set(kohya.network_alphas.values()) == {ALPHA}
    assert diffusers_file.network_alphas.keys() == kohya.network_alphas.keys()

    base = tiny_random_pipeline()
    assert not torch.allclose(unet_output(base.unet, base.text_encoder, base.tokenizer), expected, atol=1e-3)
    check_fits(kohya, base)
    for part in ("unet", "text_encoder"):  # what the engine does to apply a LoRA concept: peft, by name
        config, state = peft_adapter(kohya, part)
        module = getattr(base, part)
        inject_adapter_in_model(config, module, adapter_name="star")
        set_peft_model_state_dict(module, state, adapter_name="star")
    assert torch.allclose(unet_output(base.unet, base.text_encoder, base.tokenizer), expected, atol=1e-5)

    by_diffusers = tiny_random_pipeline()  # or diffusers' loaders, given the normalised layers and their metadata
    StableDiffusionPipeline.load_lora_into_unet(kohya.lora, None, by_diffusers.unet, adapter_name="star",
                                                metadata=kohya.lora_metadata)
    StableDiffusionPipeline.load_lora_into_text_encoder(kohya.lora, None, by_diffusers.text_encoder,
                                                        prefix="text_encoder", adapter_name="star",
                                                        metadata=kohya.lora_metadata)
    assert torch.allclose(unet_output(by_diffusers.unet, by_diffusers.text_encoder, by_diffusers.tokenizer), expected,
                          atol=1e-5)

    stock = tiny_random_pipeline()  # peer check: stock diffusers reads our diffusers-layout file, alpha included
    stock.load_lora_weights(tmp_path, weight_name="pytorch_lora_weights.safetensors")
    assert torch.allclose(unet_output(stock.unet, stock.text_encoder, stock.tokenizer), expected, atol=1e-5)


def test_embeddings_round_trip_diffusers_and_a1111(tmp_path):
    vectors = {"<my-star>": torch.randn(2, 32), "heart": torch.randn(32)}
    written = write_embeddings(tmp_path, vectors, step=40)
    assert [path.name for path in written] == ["learned_embeds.safetensors", "my-star.pt", "heart.pt"]
    diffusers_file = read_concept(written[0])
    assert (diffusers_file.kind, diffusers_file.layout, diffusers_file.words) == ("embedding", "diffusers",
                                                                                  ("<my-star>", "heart"))
    assert torch.equal(diffusers_file.embeddings["heart"], vectors["heart"][None])
    a1111 = read_concept(written[1])
    assert (a1111.layout, a1111.words) == ("a1111", ("my-star",)) and "file's name" in a1111.notes[0]
    named = read_concept(written[1], token="<my-star>")
    assert named.words == ("<my-star>",) and not named.notes
    assert torch.equal(named.embeddings["<my-star>"], vectors["<my-star>"])
    stock = tiny_random_pipeline()
    check_fits(diffusers_file, stock)
    # peer check: diffusers reads one word's A1111 file (its name inside; 2 vectors = 2 tokens); its own loader takes a
    # learned_embeds file of one word only
    stock.load_textual_inversion(written[1])
    ids = stock.tokenizer.convert_tokens_to_ids(["<my-star>", "<my-star>_1"])
    assert torch.equal(stock.text_encoder.get_input_embeddings().weight[ids].detach(), vectors["<my-star>"])


def test_trained_folders_read_back_with_their_record(tmp_path):
    pipe = tiny_random_pipeline()
    fingerprint = base_fingerprint(pipe)
    assert len(fingerprint) == 12 and fingerprint == base_fingerprint(tiny_random_pipeline(seed=3))  # configs, not weights

    kv = {name: parameter.detach() + 1 for name, parameter in pipe.unet.named_parameters()
          if "attn2.to_k." in name or "attn2.to_v." in name}
    custom = tmp_path / "custom"
    record = {"method": "custom-diffusion", "words": ["<new1>"], "class_word": "shape",
              "base": {"name": "tiny", "fingerprint": fingerprint}, "steps": 12, "stopped": True}
    write_concept_json(custom, files=write_custom_diffusion(custom, kv, {"<new1>": torch.randn(32)}, unet=pipe.unet), **record)
    weights = load_file(custom / "pytorch_custom_diffusion_weights.safetensors")
    assert all(".processor.to_k_custom_diffusion.weight" in key or ".processor.to_v_custom_diffusion.weight" in key
               or (key.endswith("attn1.processor") and weights[key].numel() == 0) for key in weights)
    concept = read_concept(custom)
    assert (concept.kind, concept.layout, concept.words) == ("custom-diffusion", "studio folder", ("<new1>",))
    assert concept.base["fingerprint"] == fingerprint and set(concept.embeddings) == {"<new1>"}
    assert concept.parameters.keys() == kv.keys()
    assert all(torch.equal(concept.parameters[name], value) for name, value in kv.items())
    check_fits(concept, pipe)
    stock = tiny_random_pipeline()  # peer check; diffusers 0.42 installs the processors only when given the pipeline
    stock.unet.load_attn_procs(custom, weight_name="pytorch_custom_diffusion_weights.safetensors", _pipeline=stock)
    trained = {f"{name.removesuffix('.processor')}.to_k.weight": processor.to_k_custom_diffusion.weight
               for name, processor in stock.unet.attn_processors.items() if ".attn2." in name}
    assert trained.keys() <= kv.keys() and all(torch.equal(value, kv[name]) for name, value in trained.items())
    assert len(trained) == len(kv) // 2

    dreambooth = tmp_path / "dreambooth"
    record.update(method="dreambooth", words=["star"])
    write_concept_json(dreambooth, files=write_dreambooth(dreambooth, pipe.unet), **record)
    concept = read_concept(dreambooth)
    assert concept.kind == "dreambooth" and concept.parameters.keys() == pipe.unet.state_dict().keys()
    check_fits(concept, pipe)
    assert "trained on tiny" in describe(dreambooth)
    with pytest.raises(ModelLoadError, match=r"DreamBooth UNet is for tiny \(32-wide cross-attention\); the loaded "
                                             r"model, SD 1.5, is SD 1.x \(768-wide"):
        check_fits(concept, meta_base("SD 1.5"))

    lora = tmp_path / "lora"  # a LoRA that added its word to the tokenizer keeps the word's vectors beside it
    trained = tiny_with_lora()
    written = write_lora(lora, "<sks>", get_peft_model_state_dict(trained.unet), alpha=ALPHA)
    written += write_embeddings(lora, {"<sks>": torch.randn(1, 32)}, step=12)
    record.update(method="lora", words=["<sks>"])
    write_concept_json(lora, files=written, **record)
    concept = read_concept(lora)
    assert (concept.kind, concept.layout, concept.words, set(concept.embeddings)) == ("lora", "studio folder",
                                                                                      ("<sks>",), {"<sks>"})
    assert concept.lora and concept.lora_metadata["unet.lora_alpha"] == ALPHA
    check_fits(concept, pipe)


# ----- files users have, on full-size architectures ----------------------------------------------------------------

@pytest.mark.parametrize("arch", ["SD 1.5", "SD 2.1", pytest.param("SDXL", marks=pytest.mark.slow)])  # SDXL: 12 s
def test_users_lora_layouts_read_for_full_size_architectures(tmp_path, arch):
    base = meta_base(arch)
    unet_state = lora_state(base.unet, UNET_TARGETS)
    text_states = {"text_encoder": lora_state(base.text_encoder, TEXT_TARGETS, seed=1)}
    if base.text_encoder_2 is not None:
        text_states["text_encoder_2"] = lora_state(base.text_encoder_2, TEXT_TARGETS, seed=2)
    layouts = {"kohya": kohya_file(tmp_path / "kohya.safetensors", unet_state, text_states),
               "kohya (SGM names)": kohya_file(tmp_path / "sgm.safetensors", unet_state, text_states,
                                               sgm_config=base.unet.config)}
    diffusers_layout = {f"unet.{key}": value for key, value in unet_state.items()}
    for part, state in text_states.items():
        diffusers_layout.update({f"{part}.{key}": value for key, value in state.items()})
    save_file(diffusers_layout, tmp_path / "pytorch_lora_weights.safetensors")
    layouts["diffusers"] = tmp_path / "pytorch_lora_weights.safetensors"

    # diffusers' first LoRA files (save_attn_procs, UNet only, pickled): `<attention>.processor.to_q_lora.down.weight`
    old_names = {".to_out.0.lora_A.": ".processor.to_out_lora.down.", ".to_out.0.lora_B.": ".processor.to_out_lora.up."}
    old_names.update({f".{name}.lora_{ab}.": f".processor.{name}_lora.{updown}." for name in ("to_q", "to_k", "to_v")
                      for ab, updown in (("A", "down"), ("B", "up"))})
    attention_processors = {functools.reduce(lambda key, names: key.replace(*names), old_names.items(), key): value
                            for key, value in unet_state.items()}
    torch.save(attention_processors, tmp_path / "pytorch_lora_weights.bin")

    for layout, path in [*layouts.items(), ("diffusers", tmp_path / "pytorch_lora_weights.bin")]:
        concept = read_concept(path)
        assert (concept.kind, concept.layout) == ("lora", layout)
        expected = diffusers_layout if path.suffix == ".safetensors" else \
            {key: value for key, value in diffusers_layout.items() if key.startswith("unet.")}
        assert len(concept.lora) == len(expected), path.name  # every layer found, none dropped
        for key, value in expected.items():
            assert torch.equal(concept.lora[key], value), (path.name, key)
        check_fits(concept, base)
        assert f"made for {files._family(base.unet.config.cross_attention_dim)}" in describe(path)
        expected_alpha = float(RANK) if layout == "diffusers" else ALPHA  # no alpha stored: diffusers assumes rank
        assert set(concept.network_alphas.values()) == {expected_alpha}


@pytest.mark.parametrize("arch", ["SD 1.5", "SD 2.1"])
def test_kohya_lora_with_convolutions_reads_for_full_size_architectures(tmp_path, arch):
    """SD 1.x's proj_in / proj_out are 1x1 convolutions, SD 2.x's Linear; conv_dim adds the ResNets' 3x3 ones."""
    base = meta_base(arch)
    unet_state = lora_state(base.unet, KOHYA_UNET_TARGETS)
    kernels = {tuple(value.shape[2:]) for key, value in unet_state.items() if key.endswith("lora_A.weight")}
    assert kernels == ({(), (1, 1), (3, 3)} if arch == "SD 1.5" else {(), (3, 3)})
    text_state = lora_state(base.text_encoder, KOHYA_TEXT_TARGETS, seed=1)
    concept = read_concept(kohya_file(tmp_path / "locon.safetensors", unet_state, {"text_encoder": text_state}))
    assert concept.layout == "kohya"
    expected = {**{f"unet.{key}": value for key, value in unet_state.items()},
                **{f"text_encoder.{key}": value for key, value in text_state.items()}}
    assert concept.lora.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(concept.lora[key], value), key
    assert set(concept.network_alphas.values()) == {ALPHA}  # every layer's own alpha, not the rank diffusers assumes
    check_fits(concept, base)


def test_kohya_lora_with_convolutions_draws_what_its_merged_weights_draw(tmp_path):
    """A kohya file over the embedded model's attention, feed-forward and ResNet convolution layers and its text
    encoder's attention and MLP, loaded as a concept, makes the picture of a model whose weights were merged by hand:
    W + (alpha/r) B A, for a convolution the 1x1 up weight over the down weight's kernel (alpha 8 at rank 4, so a layer
    read at diffusers' default alpha = rank would be half as strong)."""
    loaded, merged = Engine(device="cpu"), Engine(device="cpu")
    states = {"unet": lora_state(loaded.model.unet, KOHYA_UNET_TARGETS, scale=0.02),
              "text_encoder": lora_state(loaded.model.text_encoder, KOHYA_TEXT_TARGETS, seed=1, scale=0.02)}
    assert any(value.dim() == 4 for value in states["unet"].values())
    path = kohya_file(tmp_path / "locon.safetensors", states["unet"], {"text_encoder": states["text_encoder"]})
    assert loaded.concepts.load(path, name="locon").layout == "kohya"
    with torch.no_grad():
        for part, state in states.items():
            layers = dict(getattr(merged.model, part).named_modules())
            for key, down in state.items():
                if key.endswith("lora_A.weight"):
                    name = key.removesuffix(".lora_A.weight")
                    up = state[f"{name}.lora_B.weight"]
                    layers[name].weight += ALPHA / RANK * torch.einsum("or,ri...->oi...", up.flatten(1), down)

    def picture(engine: Engine, concepts: tuple[ConceptUse, ...] = ()) -> np.ndarray:
        spec = GenerateSpec("a red circle on a blue background", seed=2, steps=3, concepts=concepts)
        return next(event for event in engine.generate(spec) if isinstance(event, Result)).pixels

    by_hand, with_concept, without = picture(merged), picture(loaded, (ConceptUse("locon"),)), picture(loaded)
    assert np.abs(by_hand - without).max() > 0.05  # the LoRA changes the picture
    np.testing.assert_allclose(with_concept, by_hand, atol=2e-3)


@pytest.mark.parametrize(("lora_for", "loaded", "message"), [
    ("SD 1.5", "SDXL", "this LoRA is for SD 1.x (768-wide cross-attention); the loaded model, SDXL, is SDXL (2048"),
    ("SD 2.1", "SD 1.5", "this LoRA is for SD 2.x (1024-wide cross-attention); the loaded model, SD 1.5, is SD 1.x"),
    ("SDXL", "SD 2.1", "this LoRA is for SDXL (2048-wide cross-attention); the loaded model, SD 2.1, is SD 2.x"),
])
def test_lora_for_another_architecture_names_both(tmp_path, lora_for, loaded, message):
    path = kohya_file(tmp_path / "other.safetensors", lora_state(meta_base(lora_for).unet, UNET_TARGETS), {})
    with pytest.raises(ModelLoadError, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_fits(read_concept(path), meta_base(loaded))


def test_users_embedding_layouts_for_full_size_architectures(tmp_path):
    sd15, sd21, sdxl = meta_base("SD 1.5"), meta_base("SD 2.1"), meta_base("SDXL")
    save_file({"<cat-toy>": torch.randn(1, 768)}, tmp_path / "learned_embeds.safetensors")
    torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": torch.randn(3, 1024)}, "name": "style",
                "step": 500, "sd_checkpoint_name": "v2-1_768"}, tmp_path / "style.pt")
    save_file({"emb_params": torch.randn(2, 768)}, tmp_path / "kohya-word.safetensors")
    save_file({"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}, tmp_path / "xl-word.safetensors")

    diffusers_file = read_concept(tmp_path / "learned_embeds.safetensors")
    assert diffusers_file.words == ("<cat-toy>",)
    check_fits(diffusers_file, sd15)
    a1111 = read_concept(tmp_path / "style.pt")
    assert a1111.layout == "a1111" and a1111.embeddings["style"].shape == (3, 1024)
    check_fits(a1111, sd21)
    kohya = read_concept(tmp_path / "kohya-word.safetensors")  # diffusers would call it "emb_params"
    assert (kohya.layout, kohya.words) == ("kohya-emb", ("kohya-word",)) and "kohya-word" in kohya.notes[0]
    assert read_concept(tmp_path / "kohya-word.safetensors", token="<kw>").words == ("<kw>",)
    check_fits(kohya, sd15)
    xl = read_concept(tmp_path / "xl-word.safetensors")
    assert xl.layout == "sdxl-emb" and xl.embeddings_2["xl-word"].shape == (2, 1280)
    check_fits(xl, sdxl)
    assert "768 + 1280 wide" in describe(tmp_path / "xl-word.safetensors")

    with pytest.raises(ModelLoadError, match=r"this embedding is for SD 2.x \(1024-wide cross-attention\); "
                                             r"the loaded model, SD 1.5, is SD 1.x"):
        check_fits(a1111, sd15)
    with pytest.raises(ModelLoadError, match=r"is for SD 1.x .* the loaded model, SDXL, is SDXL"):
        check_fits(kohya, sdxl)
    with pytest.raises(ModelLoadError, match=r"is for SDXL .* the loaded model, SD 1.5"):
        check_fits(xl, sd15)


def test_users_custom_diffusion_file_for_sd15(tmp_path):
    sd15 = meta_base("SD 1.5")
    kv = {f"{name}.weight": torch.randn(layer.out_features, layer.in_features) for name, layer in
          sd15.unet.named_modules() if name.endswith(("attn2.to_k", "attn2.to_v"))}
    write_custom_diffusion(tmp_path, kv, {"<new1>": torch.randn(768)})
    concept = read_concept(tmp_path)  # a diffusers folder: no concept.json
    assert (concept.kind, concept.layout, concept.words) == ("custom-diffusion", "diffusers", ("<new1>",))
    check_fits(concept, sd15)
    with pytest.raises(ModelLoadError, match=r"Custom Diffusion concept is for SD 1.x .* the loaded model, SD 2.1"):
        check_fits(concept, meta_base("SD 2.1"))

    # as diffusers' Custom Diffusion script saves two concepts: one file per modifier word, no learned_embeds
    (tmp_path / "learned_embeds.safetensors").unlink()
    torch.save({"<new1>": torch.randn(1, 768)}, tmp_path / "<new1>.bin")
    save_file({"<new2>": torch.randn(1, 768)}, tmp_path / "<new2>.safetensors")
    concept = read_concept(tmp_path)
    assert concept.words == ("<new1>", "<new2>") and set(concept.embeddings) == {"<new1>", "<new2>"}
    check_fits(concept, sd15)


# ----- what the studio cannot read: refused naming what it found ---------------------------------------------------

@pytest.mark.parametrize(("keys", "named"), [
    (["lora_unet_mid_block_attentions_0_proj_in.hada_w1_a", "lora_unet_mid_block_attentions_0_proj_in.hada_w1_b",
      "lora_unet_mid_block_attentions_0_proj_in.alpha"], "LyCORIS LoHA"),
    (["lora_unet_mid_block_attentions_0_proj_in.lokr_w1", "lora_unet_mid_block_attentions_0_proj_in.alpha"],
     "LyCORIS LoKr"),
    (["lora_unet_down_blocks_0_resnets_0_conv1.lora_down.weight", "lora_unet_down_blocks_0_resnets_0_conv1.lora_up.weight",
      "lora_unet_down_blocks_0_resnets_0_conv1.lora_mid.weight"], "lora_mid"),
    (["lora_unet_mid_block_attentions_0_proj_in.lora_down.weight",
      "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight",
      "lora_unet_mid_block_attentions_0_proj_in.dora_scale"], "DoRA"),
])
def test_lycoris_and_other_adapters_are_refused_naming_their_keys(tmp_path, keys, named):
    path = tmp_path / "lycoris.safetensors"
    save_file({key: torch.zeros(4, 4) for key in keys}, path)
    with pytest.raises(ModelLoadError, match=named) as refused:
        read_concept(path)
    assert any(key in str(refused.value) for key in keys) and "renamed" not in str(refused.value)


def test_unknown_keys_are_refused_naming_them(tmp_path):
    mixed = tmp_path / "mixed.safetensors"
    save_file({"lora_unet_mid_block_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 8),
               "lora_unet_mid_block_attentions_0_proj_in.lora_up.weight": torch.zeros(8, 4),
               "lora_unet_mid_block_attentions_0_proj_in.weird_scale": torch.zeros(1)}, mixed)
    with pytest.raises(ModelLoadError, match="weird_scale"):
        read_concept(mixed)
    model = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.out.2.weight": torch.zeros(4, 4)}, model)
    with pytest.raises(ModelLoadError, match=r"not a LoRA, embedding or Custom Diffusion file .*out\.2\.weight"):
        read_concept(model)


def test_truncated_and_missing_files_are_clear_messages(tmp_path):
    good = write_embeddings(tmp_path / "good", {"star": torch.randn(1, 32)})
    for path in good:
        cut = tmp_path / f"cut{path.suffix}"
        cut.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
        with pytest.raises(ModelLoadError, match="is not a readable .* truncated or corrupt"):
            read_concept(cut)
    with pytest.raises(ModelLoadError, match="does not exist"):
        read_concept(tmp_path / "nowhere.safetensors")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="holds no concept"):
        read_concept(tmp_path / "empty")
    (tmp_path / "good" / "concept.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="not readable JSON"):
        read_concept(tmp_path / "good")


def test_lora_on_a_model_already_carrying_an_adapter_still_checks(tmp_path):
    trained = tiny_with_lora()
    write_lora(tmp_path, "star", get_peft_model_state_dict(trained.unet), alpha=ALPHA)
    check_fits(read_concept(tmp_path / "pytorch_lora_weights.safetensors"), copy.deepcopy(trained))
