"""Control models and the IP-Adapter: the files each layout writes load back, into our loaders and diffusers' own,
and a file that does not fit the base model is refused naming both (tiny random models, CPU)."""

from __future__ import annotations

import pytest
import torch

from studio.models import tiny_random_pipeline
from studio.structure.adapters import IMAGE_ENCODER_FOLDER, IP_ADAPTER_FILE, new_ip_adapter, save_ip_adapter


@pytest.fixture(scope="module")
def tiny_pipeline():
    return tiny_random_pipeline(seed=0)


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
