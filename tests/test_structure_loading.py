"""Control models and the IP-Adapter: the files each layout writes load back, into our loaders and diffusers' own,
and a file that does not fit the base model is refused naming both (tiny random models, CPU)."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import UNet2DConditionModel

from studio.errors import ModelLoadError
from studio.models import load_model, tiny_random_pipeline
from studio.shapes.architecture import TINY, make_unet
from studio.structure.adapters import (
    IMAGE_ENCODER_FOLDER,
    IP_ADAPTER_FILE,
    ip_adapter_state_dict,
    load_control,
    load_ip_adapter,
    new_control,
    new_ip_adapter,
    save_ip_adapter,
)


@pytest.fixture(scope="module")
def tiny_pipeline():
    return tiny_random_pipeline(seed=0)


@pytest.fixture(scope="module")
def tiny_base(tiny_model_dir):
    """The tiny random model as the engine holds it (LoadedModel)."""
    return load_model(str(tiny_model_dir), device="cpu")


def other_unet(**changes) -> UNet2DConditionModel:
    """The tiny UNet with some of its configuration changed: a base model the tiny files were not made for."""
    torch.manual_seed(0)
    return UNet2DConditionModel.from_config({**make_unet(TINY).config, **changes})


def save_control(control, folder, reads: str | None = None):
    control.module.save_pretrained(folder)
    if reads is not None:
        (folder / "studio.json").write_text(json.dumps({"control": reads}))
    return folder


def randomised(adapter):
    """Every weight of `adapter` random, so a round trip that swaps or drops one shows."""
    generator = torch.Generator().manual_seed(1)
    for module in adapter.modules():
        for parameter in module.parameters():
            parameter.data = torch.randn(parameter.shape, generator=generator)
    return adapter


def test_new_ip_adapter_starts_from_each_cross_attention_layers_text_projections(tiny_pipeline):
    unet = tiny_pipeline.unet
    adapter = new_ip_adapter(unet, image_embed_dim=32)
    cross_attention = [key for key in unet.attn_processors if key.endswith("attn2.processor")]
    assert list(adapter.key_value) == cross_attention
    for key, (to_k_ip, to_v_ip) in adapter.key_value.items():
        attention = unet.get_submodule(key.removesuffix(".processor"))
        assert torch.equal(to_k_ip.weight, attention.to_k.weight) and torch.equal(to_v_ip.weight, attention.to_v.weight)
        assert to_k_ip.weight.data_ptr() != attention.to_k.weight.data_ptr()  # a copy: training leaves the UNet alone
    assert adapter.image_proj.image_embeds.out_features == 4 * unet.config.cross_attention_dim
    assert adapter.image_encoder.config.projection_dim == 32


def test_saved_ip_adapter_is_what_diffusers_load_ip_adapter_reads(tiny_pipeline, tmp_path):
    adapter = randomised(new_ip_adapter(tiny_pipeline.unet, image_embed_dim=32))
    save_ip_adapter(adapter, tmp_path)
    assert (tmp_path / IP_ADAPTER_FILE).is_file() and (tmp_path / IMAGE_ENCODER_FOLDER / "config.json").is_file()

    pipeline = tiny_random_pipeline(seed=0)
    pipeline.load_ip_adapter(str(tmp_path), subfolder="", weight_name=IP_ADAPTER_FILE,
                             image_encoder_folder=IMAGE_ENCODER_FOLDER)
    projection = pipeline.unet.encoder_hid_proj.image_projection_layers[0]
    assert torch.equal(projection.image_embeds.weight, adapter.image_proj.image_embeds.weight)
    assert torch.equal(projection.norm.weight, adapter.image_proj.norm.weight)
    processors = pipeline.unet.attn_processors
    for key, (to_k_ip, to_v_ip) in adapter.key_value.items():
        assert torch.equal(processors[key].to_k_ip[0].weight, to_k_ip.weight), key
        assert torch.equal(processors[key].to_v_ip[0].weight, to_v_ip.weight), key
    encoder_weights = dict(adapter.image_encoder.named_parameters())
    for name, parameter in pipeline.image_encoder.named_parameters():
        assert torch.equal(parameter, encoder_weights[name]), name


@pytest.mark.parametrize("kind", ["controlnet", "t2i_adapter"])
def test_a_control_folder_loads_with_its_kind_weights_and_the_map_it_reads(tiny_base, tmp_path, kind):
    control = new_control(tiny_base.unet, kind, "made", "layout")
    folder = save_control(control, tmp_path / "my-control", reads="layout")
    loaded = load_control(folder, tiny_base)
    assert (loaded.name, loaded.kind, loaded.trained_for) == ("my-control", kind, "layout")
    expected = control.module.state_dict()
    for key, tensor in loaded.module.state_dict().items():
        assert torch.equal(tensor, expected[key]), key
    parameter = next(loaded.module.parameters())
    assert parameter.device == tiny_base.device and parameter.dtype == tiny_base.dtype and not parameter.requires_grad
    assert not loaded.module.training
    assert load_control(folder, tiny_base, name="shapes").name == "shapes"


def test_a_card_front_matter_says_what_map_a_control_reads_when_there_is_no_studio_json(tiny_base, tmp_path):
    folder = save_control(new_control(tiny_base.unet, "t2i_adapter", "made", ""), tmp_path / "adapter")
    assert load_control(folder, tiny_base).trained_for == ""
    (folder / "README.md").write_text("---\ncontrol: outline\nkind: t2i_adapter\n---\n# A T2I-Adapter\n")
    assert load_control(folder, tiny_base).trained_for == "outline"


def test_a_controlnet_of_another_base_model_is_refused_naming_both_and_what_differs(tiny_base, tmp_path):
    wide = new_control(other_unet(cross_attention_dim=64), "controlnet", "wide", "")
    folder = save_control(wide, tmp_path / "controlnet-wide")
    with pytest.raises(ModelLoadError) as refused:
        load_control(folder, tiny_base)
    message = str(refused.value)
    assert "controlnet-wide" in message and tiny_base.name in message
    assert "cross-attention 64 wide (the base has 32 wide)" in message
    assert "Load a ControlNet trained for" in message

    deeper = new_control(other_unet(block_out_channels=(16, 32, 64), attention_head_dim=(2, 4, 8)), "controlnet", "d", "")
    with pytest.raises(ModelLoadError, match=r"block widths \[16, 32, 64\] \(the base has \[16, 32, 32\]\)"):
        load_control(save_control(deeper, tmp_path / "deeper"), tiny_base)


def test_a_t2i_adapter_of_another_base_model_is_refused_naming_its_stage_widths(tiny_base, tmp_path):
    adapter = new_control(other_unet(block_out_channels=(16, 32, 64), attention_head_dim=(2, 4, 8)), "t2i_adapter", "a", "")
    with pytest.raises(ModelLoadError, match=r"T2I-Adapter t2i-wide .*stage widths \[16, 32, 64\] \(the base has \[16, 32, 32\]\)"):
        load_control(save_control(adapter, tmp_path / "t2i-wide"), tiny_base)


def test_files_and_folders_of_unknown_layouts_are_refused_naming_their_first_keys(tiny_base, tmp_path):
    from safetensors.torch import save_file

    save_file({"body.0.weight": torch.zeros(2), "conv_in.weight": torch.zeros(2)}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(ModelLoadError, match=r"odd.safetensors is in a layout .*first keys: body.0.weight, conv_in.weight.*It reads"):
        load_control(tmp_path / "odd.safetensors", tiny_base)
    with pytest.raises(ModelLoadError, match=r"odd.safetensors is in a layout .*first keys: body.0.weight"):
        load_ip_adapter(tmp_path / "odd.safetensors", tiny_base)
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL"}))
    with pytest.raises(ModelLoadError, match="holds a AutoencoderKL model; the controls this studio loads are ControlNetModel and T2IAdapter"):
        load_control(tmp_path / "vae", tiny_base)
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_control(tmp_path / "missing", tiny_base)


def test_an_ip_adapter_loads_from_safetensors_and_from_a_nested_bin_with_the_encoder_beside_it(tiny_base, tmp_path):
    adapter = randomised(new_ip_adapter(tiny_base.unet, image_embed_dim=32))
    weights = save_ip_adapter(adapter, tmp_path)
    flat = ip_adapter_state_dict(adapter)
    nested = {part: {key.removeprefix(part + "."): tensor for key, tensor in flat.items() if key.startswith(part + ".")}
              for part in ("image_proj", "ip_adapter")}
    torch.save(nested, tmp_path / "ip-adapter.bin")
    for path in (weights, tmp_path / "ip-adapter.bin"):
        loaded = load_ip_adapter(path, tiny_base)
        assert loaded.num_tokens == 4 and list(loaded.key_value) == list(adapter.key_value)
        assert torch.equal(loaded.image_proj.image_embeds.weight, adapter.image_proj.image_embeds.weight)
        for key, (to_k_ip, to_v_ip) in loaded.key_value.items():
            assert torch.equal(to_k_ip.weight, adapter.key_value[key][0].weight)
            assert torch.equal(to_v_ip.weight, adapter.key_value[key][1].weight)
        assert loaded.image_processor.crop_size["height"] == adapter.image_encoder.config.image_size
        assert not any(p.requires_grad for module in loaded.modules() for p in module.parameters())


def test_an_ip_adapter_without_its_image_encoder_or_for_another_model_says_what_to_give(tiny_base, tmp_path):
    adapter = new_ip_adapter(tiny_base.unet, image_embed_dim=32)
    save_file_only = tmp_path / "alone"
    save_file_only.mkdir()
    from safetensors.torch import save_file

    save_file(ip_adapter_state_dict(adapter), str(save_file_only / IP_ADAPTER_FILE))
    with pytest.raises(ModelLoadError, match=r"needs its CLIP image encoder.*--image-encoder DIR"):
        load_ip_adapter(save_file_only / IP_ADAPTER_FILE, tiny_base)
    saved = tmp_path / "with-encoder"
    save_ip_adapter(adapter, saved)
    assert load_ip_adapter(save_file_only / IP_ADAPTER_FILE, tiny_base, image_encoder=saved / IMAGE_ENCODER_FOLDER).num_tokens == 4

    wide = new_ip_adapter(other_unet(cross_attention_dim=64), image_embed_dim=32)
    save_ip_adapter(wide, tmp_path / "wide")
    with pytest.raises(ModelLoadError, match=r"IP-Adapter ip-adapter was made for a different base model than .*"
                                             r"image tokens for cross-attention 64 wide \(the base has 32 wide\)"):
        load_ip_adapter(tmp_path / "wide" / IP_ADAPTER_FILE, tiny_base)
    other_encoder = new_ip_adapter(tiny_base.unet, image_embed_dim=16)
    save_ip_adapter(other_encoder, tmp_path / "narrow")
    with pytest.raises(ModelLoadError, match="reads 32-wide image embeddings, its image encoder gives 16"):
        load_ip_adapter(saved / IP_ADAPTER_FILE, tiny_base, image_encoder=tmp_path / "narrow" / IMAGE_ENCODER_FOLDER)


def test_load_model_attaches_given_controls_and_refuses_two_of_one_name(tiny_model_dir, tmp_path):
    base = load_model(str(tiny_model_dir), device="cpu")
    assert base.controls == {} and base.image_prompt is None  # a user's model has no shipped controls
    outline = save_control(new_control(base.unet, "controlnet", "o", "outline"), tmp_path / "outline", reads="outline")
    adapter = save_control(new_control(base.unet, "t2i_adapter", "t", "outline"), tmp_path / "t2i-outline")
    ip_weights = save_ip_adapter(new_ip_adapter(base.unet, image_embed_dim=32), tmp_path / "ip")
    model = load_model(str(tiny_model_dir), device="cpu", controls=[outline, adapter], ip_adapter=ip_weights)
    assert {name: control.kind for name, control in model.controls.items()} == {"outline": "controlnet", "t2i-outline": "t2i_adapter"}
    assert model.image_prompt is not None and len(model.image_prompt.key_value) == 7
    with pytest.raises(ModelLoadError, match="Two controls are named 'outline'"):
        load_model(str(tiny_model_dir), device="cpu", controls=[outline, outline])


def test_the_embedded_models_shipped_controls_load_by_the_map_they_read(tiny_base, tmp_path, monkeypatch):
    from studio.models import attach_structure
    from studio.structure import adapters

    monkeypatch.setattr(adapters, "EMBEDDED_CONTROLS_DIR", tmp_path / "none-yet")
    assert adapters.embedded_controls(tiny_base) == ({}, None)  # before room B ships them: nothing, no error
    shipped = tmp_path / "shapes-sd-controls"
    save_control(new_control(tiny_base.unet, "controlnet", "c", "layout"), shipped / "controlnet-layout", reads="layout")
    save_control(new_control(tiny_base.unet, "t2i_adapter", "t", "outline"), shipped / "t2i-adapter-outline", reads="outline")
    save_ip_adapter(new_ip_adapter(tiny_base.unet, image_embed_dim=32), shipped / "ip-adapter")
    monkeypatch.setattr(adapters, "EMBEDDED_CONTROLS_DIR", shipped)
    controls, image_prompt = adapters.embedded_controls(tiny_base)
    assert {name: (c.kind, c.trained_for) for name, c in controls.items()} == {
        "layout": ("controlnet", "layout"), "t2i-outline": ("t2i_adapter", "outline")}
    assert image_prompt is not None
    (shipped / "t2i-adapter-outline" / "diffusion_pytorch_model.safetensors").write_bytes(b"truncated")
    with pytest.raises(ModelLoadError, match=r"control t2i-adapter-outline is damaged: .*Restore it with `git checkout"):
        adapters.embedded_controls(tiny_base)
    save_control(new_control(tiny_base.unet, "t2i_adapter", "t", "outline"), shipped / "t2i-adapter-outline", reads="outline")

    retrained = new_control(tiny_base.unet, "controlnet", "r", "layout")
    torch.nn.init.ones_(retrained.module.controlnet_mid_block.weight)  # zero at init: ones tell the two apart
    attach_structure(tiny_base, embedded=True, controls=[save_control(retrained, tmp_path / "layout", reads="layout")])
    try:
        assert set(tiny_base.controls) == {"layout", "t2i-outline"}  # the given "layout" replaced the shipped one
        assert torch.all(tiny_base.controls["layout"].module.controlnet_mid_block.weight == 1)
    finally:
        tiny_base.controls, tiny_base.image_prompt = {}, None  # the module's other tests see the plain model


def test_the_command_line_and_the_app_pass_structure_files_to_the_engine(monkeypatch):
    import studio.engine
    from studio.cli import parser
    from studio.model_options import open_engine

    opened = {}
    monkeypatch.setattr(studio.engine, "Engine", lambda source, **options: opened.update(source=source, **options))
    args = parser().parse_args(["--model", "sd15", "--controlnet", "canny", "--controlnet", "depth.safetensors",
                                "--t2i-adapter", "t2i-sketch", "--ip-adapter", "ip.bin", "--image-encoder", "enc",
                                "generate", "a cat"])
    open_engine(args)
    assert opened["source"] == "sd15"
    assert opened["controls"] == ["canny", "depth.safetensors", "t2i-sketch"]
    assert (opened["ip_adapter"], opened["image_encoder"]) == ("ip.bin", "enc")


def test_studio_generate_steers_with_given_controls_and_an_image_prompt(tiny_model_dir, tiny_base, tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from studio.cli import main
    from studio.png_settings import read_png_settings

    controlnet = save_control(new_control(tiny_base.unet, "controlnet", "c", "layout"), tmp_path / "my-layout")
    adapter = save_control(new_control(tiny_base.unet, "t2i_adapter", "t", "outline"), tmp_path / "my-outline")
    ip_weights = save_ip_adapter(new_ip_adapter(tiny_base.unet, image_embed_dim=32), tmp_path / "ip")
    layout = np.zeros((64, 64, 3), np.uint8)
    layout[16:48, 16:48] = 255
    Image.fromarray(layout).save(tmp_path / "layout.png")  # half the model's size: resized, with a note
    Image.fromarray(np.full((128, 128, 4), 200, np.uint8)).save(tmp_path / "reference.png")
    model = ["--model", str(tiny_model_dir), "--device", "cpu", "--controlnet", str(controlnet),
             "--t2i-adapter", str(adapter), "--ip-adapter", str(ip_weights)]
    rows = ["--control", "my-layout", str(tmp_path / "layout.png"), "--control", "my-outline", str(tmp_path / "layout.png")]
    out = tmp_path / "out"
    assert main([*model, "generate", "a red circle", "--steps", "2", *rows, "--control-scale", "1", "0.5",
                 "--image-prompt", str(tmp_path / "reference.png"), "--image-prompt-scale", "0.6", "--out", str(out)]) == 0
    assert "resized to 128x128" in capsys.readouterr().err
    settings = read_png_settings(out / "0000-seed0.png")
    assert [(row["control"], row["scale"]) for row in settings["structure"]["controls"]] == [("my-layout", 1.0), ("my-outline", 0.5)]
    assert settings["structure"]["image_prompt"]["scale"] == 0.6
    assert main([*model, "edit", "sdedit", str(tmp_path / "reference.png"), "--prompt", "a red circle", "--t0", "0.5",
                 "--repeats", "1", "--steps", "2", *rows[:3], "--out", str(tmp_path / "sdedit")]) == 0
    edited = read_png_settings(next((tmp_path / "sdedit").glob("*.png")))
    assert [row["control"] for row in edited["structure"]["controls"]] == ["my-layout"]

    assert main([*model, "generate", "a red circle", "--steps", "2", *rows, "--control-scale", "1", "--out", str(out)]) == 2
    assert "--control-scale gives 1 scale(s) for 2 --control row(s)" in capsys.readouterr().err
    assert main([*model[:4], "generate", "a red circle", "--steps", "2", *rows[:3], "--out", str(out)]) == 2
    assert "no control named 'my-layout' is loaded" in capsys.readouterr().err
    assert main([*model[:4], "--controlnet", str(adapter), "generate", "a red circle", "--out", str(out)]) == 2
    assert f"--controlnet {adapter} is a t2i-adapter: pass it with --t2i-adapter." in capsys.readouterr().err


def test_the_embedded_engine_carries_every_shipped_control_with_the_map_it_reads(engine):
    from studio.structure.adapters import EMBEDDED_CONTROLS_DIR, control_kind

    shipped = sorted(folder for folder in EMBEDDED_CONTROLS_DIR.glob("*") if (folder / "config.json").is_file())
    assert sorted(c.kind for c in engine.model.controls.values()) == sorted(control_kind(folder) for folder in shipped)
    for name, control in engine.model.controls.items():
        assert control.trained_for, f"{name}: its studio.json should say which map it reads"
        assert name == (control.trained_for if control.kind == "controlnet" else f"t2i-{control.trained_for}")
    assert (engine.model.image_prompt is not None) == (EMBEDDED_CONTROLS_DIR / "ip-adapter" / IP_ADAPTER_FILE).is_file()
