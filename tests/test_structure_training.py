"""Training the structure controls: per-channel dropout, the cached data, the accelerate loop (two CPU processes,
resume) and what a run writes. Every run here is on the tiny random model (studio.models.tiny_random_pipeline)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from diffusers import ControlNetModel, StableDiffusionPipeline, T2IAdapter

from studio.models import tiny_random_pipeline
from studio.shapes.render import HELD_OUT, is_held_out, render
from studio.structure.maps import control_map
from studio.structure.training import ChannelDropout, build_data, data_path, held_out_scenes, load_data
from studio.train import main as train_main


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-base")
    tiny_random_pipeline().save_pretrained(folder, safe_serialization=True)
    return folder


def run_train(*argv):
    return train_main([str(a) for a in argv])


def test_each_channel_drops_independently_at_its_rate():
    torch.manual_seed(0)
    t = torch.randint(0, 1000, (40_000,))
    dropped = ChannelDropout(text=0.3, control=0.15, image=0.05).draw(t, 1000)
    for channel, rate in (("text", 0.3), ("control", 0.15), ("image", 0.05)):
        assert dropped[channel].float().mean().item() == pytest.approx(rate, abs=0.01)
    both = (dropped["text"] & dropped["control"]).float().mean().item()
    assert both == pytest.approx(0.3 * 0.15, abs=0.005)  # independent: the all-dropped share is the product
    assert sum(ChannelDropout().fractions().values()) == pytest.approx(1.0)


def test_high_noise_dropout_rises_with_t():
    torch.manual_seed(0)
    dropout = ChannelDropout(control=0.1, high_noise=0.6)
    low, high = torch.zeros(20_000, dtype=torch.long), torch.full((20_000,), 999)
    assert dropout.draw(low, 1000)["control"].float().mean().item() == pytest.approx(0.1, abs=0.01)
    assert dropout.draw(high, 1000)["control"].float().mean().item() == pytest.approx(0.6, abs=0.015)
    assert dropout.draw(high, 1000)["text"].float().mean().item() == pytest.approx(0.3, abs=0.015)  # text unchanged


def test_data_cache_holds_maps_latents_and_the_text_null(tmp_path):
    pipe = tiny_random_pipeline()
    path = data_path(tmp_path, 6, seed=1)
    build_data(pipe, path, 6, seed=1)
    data = load_data(path)
    assert len(data) == 6 and data.latents.shape == (6, 4, 16, 16)
    assert data.captions.shape[:2] == (6, 2) and data.null_text.shape == data.captions.shape[2:]
    with torch.no_grad():
        empty = pipe.text_encoder(pipe.tokenizer([""], padding="max_length", max_length=data.null_text.shape[0],
                                                 return_tensors="pt").input_ids).last_hidden_state[0]
    torch.testing.assert_close(data.null_text, empty)
    for kind in ("outline", "layout"):
        maps = data.maps[kind].permute(0, 2, 3, 1).numpy()
        assert maps.dtype == np.uint8 and set(np.unique(maps)) <= {0, 255}
        assert all(m.any() for m in maps)
    # the layout map is where the picture differs from its background
    picture = data.images[0].permute(1, 2, 0).numpy().astype(int)
    background = picture[0, 0]
    layout = data.maps["layout"][0, 0].numpy() > 0
    assert np.abs(picture[~layout] - background).sum(-1).mean() < np.abs(picture[layout] - background).sum(-1).mean()


def test_held_out_scenes_are_never_trained_on():
    scenes = held_out_scenes(32)
    assert len(scenes) == 32
    assert sum(is_held_out(s) for s in scenes) >= 16  # half are held-out triples
    triples = {(s.objects[0].colour, s.objects[0].shape, s.background) for s in scenes[:16]}
    assert triples == set(HELD_OUT)
    assert all(control_map(render(s), "layout").any() for s in scenes)


def test_controlnet_trains_resumes_and_writes_its_card(tiny_base, tmp_path):
    common = ("controlnet", "--control", "layout", "--base", tiny_base, "--work", tmp_path, "--data", 16, "--batch", 2,
              "--checkpoint-every", 2, "--warmup", 1)
    first = run_train(*common, "--steps", 2, "--eval", 0)
    assert first["steps"] == 2
    resumed = run_train(*common, "--steps", 4, "--eval", 2, "--resume")
    assert resumed["steps"] == 4
    run = tmp_path / "controlnet-layout"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["checkpoint_0", "checkpoint_1"]
    logged = [json.loads(line)["step"] for line in (run / "loss.jsonl").read_text().splitlines()]
    assert logged == [1, 2, 4]  # the resumed run went on from step 2: its first step was 3, not 1
    model = run / "model"
    ControlNetModel.from_pretrained(model)  # diffusers reads the folder
    assert json.loads((model / "studio.json").read_text()) == {"control": "layout"}
    card = (model / "README.md").read_text()
    assert card.startswith("---\ncontrol: layout\nkind: controlnet\n")
    for fact in ("steps: 4 at batch 2", "text 0.3 (-> empty caption)", "control 0.15 (-> black map)",
                 "both dropped 4.5%", "| with this control |", "--resume"):
        assert fact in card
    summary = json.loads((model / "training.json").read_text())
    assert 0 <= summary["fidelity"]["iou_mean"] <= 1 and summary["fidelity"]["scenes"] == 2


def test_t2i_adapter_and_ip_adapter_write_files_diffusers_loads(tiny_base, tmp_path):
    common = ("--base", tiny_base, "--work", tmp_path, "--data", 8, "--batch", 2, "--steps", 1, "--warmup", 1, "--eval", 0)
    run_train("t2i-adapter", "--control", "outline", *common)
    adapter = T2IAdapter.from_pretrained(tmp_path / "t2i-adapter-outline" / "model")
    assert adapter.config.channels == list(tiny_random_pipeline().unet.config.block_out_channels)
    run_train("ip-adapter", *common, "--image-dropout", 0.5)
    folder = tmp_path / "ip-adapter" / "model"
    assert json.loads((folder / "studio.json").read_text()) == {"control": "image"}
    assert "image 0.5 (-> zero image embedding)" in (folder / "README.md").read_text()
    pipe = StableDiffusionPipeline.from_pretrained(tiny_base, safety_checker=None, requires_safety_checker=False)
    pipe.load_ip_adapter(str(folder), subfolder="", weight_name="ip-adapter.safetensors", image_encoder_folder="image_encoder")
    assert pipe.image_encoder is not None


@pytest.mark.slow  # run by .ci/run after the default suite (scripts/test.sh -m slow ...)
def test_two_cpu_processes_share_one_run(tiny_base, tmp_path):
    """The path `accelerate launch --num_processes N` takes on N GPUs, here with two CPU processes (accelerate's
    debug_launcher: `accelerate launch --cpu` starts one process unless MPI is installed), in a fresh interpreter so
    that the fork happens before any torch thread pool exists."""
    argv = ["controlnet", "--control", "outline", "--base", str(tiny_base), "--work", str(tmp_path), "--data", "16",
            "--batch", "2", "--steps", "2", "--warmup", "1", "--eval", "0", "--threads", "1"]
    script = ("import sys; from accelerate import debug_launcher; from studio.train import main; "
              "debug_launcher(main, args=(sys.argv[1:],), num_processes=2)")
    finished = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr[-3000:]
    model = tmp_path / "controlnet-outline" / "model"
    ControlNetModel.from_pretrained(model)
    summary = json.loads((model / "training.json").read_text())
    assert summary["processes"] == 2 and summary["steps"] == 2


def test_studio_train_is_the_same_entry(capsys):
    from studio.cli import main as studio_main

    with pytest.raises(SystemExit) as exit_info:
        studio_main(["train", "--help"])
    assert exit_info.value.code == 0
    usage = capsys.readouterr().out
    assert usage.startswith("usage: studio train") and "--high-noise-dropout" in usage and "--resume" in usage
    with pytest.raises(SystemExit):
        studio_main(["--help"])
    assert "train a structure control" in capsys.readouterr().out
