"""The app's API, through gradio_client against the launched app (tiny random SD-format model).

Protects: /generate returns images and the settings that made them (the seed used included) and
they reproduce; bad input reaches the caller as the gr.Error text and the app keeps working;
/read_settings restores every field from a downloaded PNG (condition table and guidance controls
included); every tab's Load settings endpoint names its parameter and outputs; a cancelled job leaves the
engine usable.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import pytest
from app_harness import PROMPT, launched_app
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import Status
from PIL import Image

from studio import specs
from studio.editing.diffedit import DiffEditSpec
from studio.editing.p2p import P2PSpec
from studio.editing.sdedit import SDEditSpec
from studio.inversion import InversionSpec
from studio import png_settings

FAST = dict(steps=3)
HEADERS = ["prompt", "weight", "schedule", "exponent", "start", "stop"]  # enough to run every phase; the engine tests cover sampling quality


@pytest.fixture(scope="module")
def engine(tiny_engine):
    return tiny_engine  # tests/conftest.py: the tiny random SD-format model on the CPU, shared per session


@pytest.fixture(scope="module")
def client(engine, tmp_path_factory):
    with launched_app(engine, tmp_path_factory.mktemp("gradio")) as url:
        yield Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def generate(client: Client, **fields):
    gallery, preview, progress, settings, files = client.predict(api_name="/generate", **{"prompt": PROMPT, **FAST, **fields})
    return gallery, settings, files


def pixels(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_generate_returns_images_and_the_settings_with_the_seed_used(client, engine):
    gallery, settings, files = generate(client, random_seed=True, batch_size=2)

    assert len(gallery) == 2 and len(files) == 2
    seed = settings["seed"]
    assert isinstance(seed, int) and specs.SEED.low <= seed <= specs.SEED.high
    assert settings["prompt"] == PROMPT and settings["steps"] == FAST["steps"]
    assert (settings["width"], settings["height"]) == (engine.native_size, engine.native_size)
    assert pixels(gallery[0]["image"]).shape == (engine.native_size, engine.native_size, 3)
    # Both the gallery's PNGs and the downloads carry the settings.
    assert png_settings.read_png_settings(gallery[1]["image"])["seed"] == seed
    assert png_settings.read_png_settings(files[0])["seed"] == seed

    # The reported seed reproduces the images.
    again, _, _ = generate(client, random_seed=False, seed=seed, batch_size=2)
    for first, second in zip(gallery, again):
        np.testing.assert_array_equal(pixels(first["image"]), pixels(second["image"]))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": "   "}, "prompt is empty"),
        ({"prompt": "a red dragon"}, "dragon"),
        ({"width": 100}, "multiple of"),
        ({"random_seed": False, "seed": None}, "Enter a seed"),
        ({"conditions": {"headers": HEADERS, "data": [["a blue dragon", 2, "constant", 0.5, 0, 1]]}}, "Condition 1: .*dragon"),
    ],
    ids=["empty-prompt", "unknown-word", "size-not-multiple", "no-seed", "unknown-word-in-a-condition"],
)
def test_bad_input_gives_the_error_message_and_the_app_keeps_working(client, fields, message):
    with pytest.raises(AppError, match=message):
        generate(client, **fields)
    gallery, settings, _ = generate(client, steps=1)
    assert len(gallery) == 1 and settings["steps"] == 1


def test_read_settings_restores_every_field_from_a_downloaded_png(client, engine):
    size = engine.native_size
    fields = dict(
        negative_prompt="blue square",
        seed=1234,
        random_seed=False,
        steps=2,
        guidance_scale=3.5,
        scheduler="euler",
        width=size,
        height=size + engine.size_multiple,
        batch_size=2,
    )
    rows = [["a blue background", 3.0, "snr", 0.5, 0.0, 1.0], ["a yellow background", -2.0, "constant", 0.5, 0.2, 1.0]]
    guidance = dict(guidance_rescale=0.5)
    _, settings, files = generate(client, capture_attention=True, conditions={"headers": HEADERS, "data": rows}, **guidance, **fields)
    assert settings["nfe_per_step"] == 2 + len(rows)  # unconditional, prompt and each row in one batched call
    restored = client.predict(handle_file(files[1]), api_name="/read_settings")

    default = specs.ClassifierGuidanceSpec("none")
    classifier_panel = ("none", default.strength, default.schedule, default.exponent, default.start, default.stop)  # off: the panel's defaults
    assert tuple(restored[:10]) == (PROMPT, *fields.values())
    assert restored[10]["data"] == rows
    assert tuple(restored[11:18]) == (guidance["guidance_rescale"], *classifier_panel)
    assert restored[18] == "none"  # the structure rows follow (no control in this PNG)
    assert restored[-1] is default.normalise  # the classifier panel's last field comes last (API positions kept)


def test_read_settings_of_an_image_without_settings_says_so(client, tmp_path):
    Image.new("RGB", (8, 8)).save(tmp_path / "plain.png")
    with pytest.raises(AppError, match="no generation settings"):
        client.predict(handle_file(str(tmp_path / "plain.png")), api_name="/read_settings")


def test_a_cancelled_job_stops_early_and_leaves_the_engine_usable(client):
    job = client.submit(api_name="/generate", prompt=PROMPT, steps=specs.STEPS.high, random_seed=True)
    deadline = time.monotonic() + 120
    while len(job.outputs()) < 3 and not job.done():  # started and a couple of steps done
        assert time.monotonic() < deadline, "the job produced no progress"
        time.sleep(0.05)
    job.cancel()

    started = time.monotonic()
    gallery, settings, _ = generate(client, steps=1)  # waits for the cancelled job to release the engine
    assert len(gallery) == 1
    assert time.monotonic() - started < 60
    assert job.status().code == Status.CANCELLED
    # No result came out of the cancelled job (settings are only set by the final message).
    assert not any(isinstance(out[3], dict) and "seed" in out[3] for out in job.outputs())


SPEC_OF_ENDPOINT = {
    "/generate": specs.GenerateSpec(prompt="a", capture_attention=True),  # the tab shows attention maps by default
    "/invert": InversionSpec(),
    "/sdedit": SDEditSpec(),
    "/diffedit_mask": DiffEditSpec(source_prompt="a", target_prompt="b"),
    "/diffedit": DiffEditSpec(source_prompt="a", target_prompt="b"),
    "/p2p": P2PSpec(source_prompt="a"),
}


@pytest.mark.parametrize("endpoint", sorted(SPEC_OF_ENDPOINT))
def test_endpoint_parameters_are_named_after_the_spec_and_default_to_its_defaults(client, endpoint):
    """README: each endpoint's parameters are named after its spec's fields and default to the spec's defaults."""
    spec = SPEC_OF_ENDPOINT[endpoint]
    parameters = {
        p["parameter_name"]: p.get("parameter_default")
        for p in client.view_api(return_format="dict", print_info=False)["named_endpoints"][endpoint]["parameters"]
    }
    offered = [f for f in dataclasses.fields(spec) if f.name in parameters]
    assert len(offered) >= 6, f"{endpoint} names too few parameters after {type(spec).__name__}: {sorted(parameters)}"
    for field in offered:
        # the spec's value where the field has a default (a tab may start a view option otherwise: Generate shows
        # attention maps); required fields (the prompts) have none; None means "the engine decides"
        default = field.default if field.default is dataclasses.MISSING else getattr(spec, field.name)
        if isinstance(default, (bool, int, float, str)):
            assert parameters[field.name] == default, f"{endpoint} {field.name}: {parameters[field.name]!r} != {default!r}"


def test_generate_outputs_are_named(client):
    """The API page names every output of /generate after its component's label (not value_NNN)."""
    outputs = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/generate"]["returns"]
    labels = [output["label"] for output in outputs]
    assert labels == ["Results", "Live preview", "Progress", "Settings of this result", "PNG with settings"]


READ_SETTINGS_ENDPOINTS = ["/read_settings", "/sdedit_read_settings", "/diffedit_read_settings",
                           "/inversion_read_settings", "/p2p_read_settings"]


@pytest.mark.parametrize("endpoint", READ_SETTINGS_ENDPOINTS)
def test_every_tabs_load_settings_names_its_parameter_and_the_fields_it_restores(client, endpoint):
    """Each tab's Load settings endpoint names its PNG parameter and each field it restores (no param_N/value_N)."""
    api = client.view_api(return_format="dict", print_info=False)["named_endpoints"][endpoint]
    names = [p["parameter_name"] for p in api["parameters"]] + [r["label"] for r in api["returns"]]
    assert len(api["returns"]) >= 3 and all(names), (endpoint, names)
    assert not [name for name in names if name.startswith(("param_", "value_"))], (endpoint, names)


def test_each_batch_item_is_remade_alone_from_its_caption_seed(client):
    """Seeds per batch item (A1111): item i of a batch with seed s is the image of batch size 1 with seed s + i."""
    gallery, settings, _ = generate(client, random_seed=False, seed=41, batch_size=3)
    captions = [item["caption"] for item in gallery]
    assert [caption.split(" · ")[0] for caption in captions] == ["seed 41", "seed 42", "seed 43"]
    assert settings["seeds"] == [41, 42, 43]
    alone, _, _ = generate(client, random_seed=False, seed=int(captions[2].split()[1]), batch_size=1)
    # the same image: the same noise, and float sums batched over 3 or 1 items round to 8 bits within one level
    difference = np.abs(pixels(alone[0]["image"]).astype(int) - pixels(gallery[2]["image"]).astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.01
