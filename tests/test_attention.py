"""Protects: cross-attention maps per prompt word in [0, 1]; capture processors only for the job's
duration; capture off never touches the UNet's processors; capture does not change the image."""

from __future__ import annotations

import numpy as np
import torch

from studio.attention.maps import heat_map_overlay
from studio.attention.processors import AttentionStore
from studio.events import AttentionMaps, Result
from studio.specs import GenerateSpec

PROMPT = "A big red circle, on the left."


def run(engine, **changes):
    spec = GenerateSpec(**{"prompt": PROMPT, "seed": 3, "steps": 4, "attention_every": 2, **changes})
    return list(engine.generate(spec))


def test_maps_are_one_per_prompt_word_in_unit_range(tiny_engine):
    events = run(tiny_engine, capture_attention=True)
    maps = [e for e in events if isinstance(e, AttentionMaps)]
    assert [m.step for m in maps] == [2, 4]
    latent = tiny_engine.native_size // tiny_engine.size_multiple
    for event in maps:
        assert event.tokens == ["A", "big", "red", "circle", "on", "the", "left"]  # no start/end tokens
        assert event.maps.shape == (7, latent, latent)
        assert event.maps.dtype == np.float32
        assert 0.0 <= event.maps.min() and event.maps.max() <= 1.0
        assert np.allclose(event.maps.reshape(7, -1).max(axis=1), 1.0)
        # cross-attention in the down/up blocks at 16 and 8, and in the mid block at 4
        assert {size: m.shape for size, m in event.per_resolution.items()} == {
            size: (7, size, size) for size in (latent, latent // 2, latent // 4)
        }


def test_capture_processors_are_restored_after_the_job(tiny_engine):
    before = dict(tiny_engine.model.unet.attn_processors)
    run(tiny_engine, capture_attention=True)
    assert tiny_engine.model.unet.attn_processors == before


def test_capture_off_never_replaces_the_unet_processors(tiny_engine, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("processors replaced although capture is off")

    monkeypatch.setattr(tiny_engine.model.unet, "set_attn_processor", forbidden)
    assert isinstance(run(tiny_engine, capture_attention=False)[-1], Result)


def test_capture_does_not_change_the_image(tiny_engine):
    plain = run(tiny_engine, capture_attention=False)[-1]
    captured = run(tiny_engine, capture_attention=True)[-1]
    np.testing.assert_array_equal(plain.pixels, captured.pixels)


def test_store_keeps_a_running_mean_not_a_history():
    store = AttentionStore(latent_size=(4, 4), batch_index=0, capture_steps={1})
    store.begin_step(0, torch.tensor(999))
    assert not store.capturing
    store.begin_step(1, torch.tensor(500))
    for value in (1.0, 3.0):
        store.add(torch.full((16, 5), value))
    store.add(torch.full((4, 5), 2.0))  # a 2x2 layer
    means = store.means()
    assert set(means) == {(4, 4), (2, 2)}
    assert torch.equal(means[(4, 4)], torch.full((16, 5), 2.0))
    assert store.counts == {(4, 4): 2, (2, 2): 1}


def test_heat_map_overlay_keeps_the_image_size():
    from PIL import Image

    image = Image.new("RGB", (64, 48), "white")
    heat = np.linspace(0, 1, 16, dtype=np.float32).reshape(4, 4)
    overlay = heat_map_overlay(image, heat)
    assert overlay.size == image.size and overlay.mode == "RGB"
