"""Every bad input answered (issue #19): what an attacker or a careless caller sends gets a message, never
`{"error": null}`, never a server path, and never runs code.

Protects, over the API of the launched app (embedded model) and at the readers themselves:
- images Gradio cannot read (corrupt, truncated, a text file named .png, a decompression bomb, a path or a number
  where a file goes) are refused naming the field (studio.ui.inputs.StudioBlocks); odd images (1x1, 16-bit, CMYK)
  are read and reach the handler; a 12000x12000 PNG is refused from its header (studio.images.limit_decoding);
- NaN, inf and strings in numeric fields, prompt weights beyond +-10 or not finite, a megabyte of prompt, an
  emoji-only or punctuation-only prompt: each a message;
- hostile settings chunks (huge, deeply nested, wrong types, not UTF-8, an A1111 line of absurd values);
- a malicious pickle in every format a user can hand over is refused with a message and its code never runs;
- server paths never reach a message (public_message).
"""

from __future__ import annotations

import errno
import json
import math
import os
import pickle
import subprocess
import sys
import time
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from app_harness import PROMPT, launched_app
from gradio import processing_utils
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from PIL import Image, PngImagePlugin

from studio import png_settings, specs
from studio.errors import InvalidInputError, ModelLoadError
from studio.images import MAX_INPUT_PIXELS, header_size, limit_decoding, open_image
from studio.prompt_weights import parse_weighted_prompt
from studio.ui.inputs import public_message

BOMB_SIDE = 12000  # the PNG: 140 KB on disk, 144 MP (432 MB as RGB) once decoded


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    good = folder / "good.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(good)
    data = good.read_bytes()
    (folder / "corrupt.png").write_bytes(data[:16] + bytes(range(256)) * 4)  # a PNG signature, then noise
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    (folder / "text.png").write_text("hello, I am not an image")
    Image.new("L", (BOMB_SIDE, BOMB_SIDE)).save(folder / "bomb.png")
    Image.new("RGB", (1, 1)).save(folder / "tiny.png")
    Image.fromarray(np.full((64, 64), 40000, np.uint16)).save(folder / "deep.png")  # mode I;16
    Image.new("CMYK", (64, 64), (0, 100, 100, 0)).save(folder / "cmyk.jpg")
    return folder


@pytest.fixture(scope="module")
def url(engine, tmp_path_factory):
    with launched_app(engine, tmp_path_factory.mktemp("gradio")) as address:
        yield address


@pytest.fixture(scope="module")
def client(url, tmp_path_factory):
    return Client(url, verbose=False, download_files=str(tmp_path_factory.mktemp("downloads")))


def refusal(client: Client, api_name: str, **values) -> str:
    """The message of a call that must be refused."""
    with pytest.raises(AppError) as refused:
        client.predict(api_name=api_name, **values)
    message = str(refused.value)
    assert message and message != "None"
    assert "/tmp" not in message and str(Path.home()) not in message, message
    return message


def raw_call(client: Client, url: str, api_name: str, **values) -> str:
    """POST /gradio_api/call/<api_name> with JSON gradio_client would not send (NaN, inf, a server path as a file);
    the error event's message (None when the app answered with an empty error)."""
    endpoint = client.view_api(return_format="dict", print_info=False)["named_endpoints"][f"/{api_name}"]
    data = [values.get(p["parameter_name"], p.get("parameter_default")) for p in endpoint["parameters"]]
    posted = httpx.post(f"{url}gradio_api/call/{api_name}", content=json.dumps({"data": data}),  # NaN as NaN
                        headers={"content-type": "application/json"}, timeout=30)
    posted.raise_for_status()
    stream = httpx.get(f"{url}gradio_api/call/{api_name}/{posted.json()['event_id']}", timeout=120).text
    event, _, payload = stream.partition("event: error\ndata: ")
    assert payload, f"no error event: {stream[:300]}"
    return json.loads(payload.splitlines()[0])["error"]  # {"error": null} is the empty answer the issue counted


# --------------------------------------------------------------------------------------------
# Images Gradio decodes before any handler


@pytest.mark.parametrize(("name", "words"), [
    ("corrupt.png", "not an image this app can read"),
    ("truncated.png", "damaged or truncated"),
    ("text.png", "not an image this app can read"),
    ("bomb.png", f"{BOMB_SIDE}x{BOMB_SIDE} (144.0 MP); the limit is 16.8 MP (4096x4096)"),
])
def test_an_image_gradio_cannot_read_is_refused_naming_the_field(client, files, name, words):
    message = refusal(client, "/diffedit_mask", image=handle_file(str(files / name)), source_prompt=PROMPT,
                      target_prompt="a big blue circle on the left")
    assert message.startswith("Image to edit: ") and words in message, message


@pytest.mark.parametrize("name", ["tiny.png", "deep.png", "cmyk.jpg"])
def test_odd_images_are_read_and_reach_the_handler(client, files, name):
    # the source prompt left empty: the handler's own refusal shows the image was read
    message = refusal(client, "/diffedit_mask", image=handle_file(str(files / name)), source_prompt="")
    assert not message.startswith("Image to edit: "), message


def test_a_settings_file_that_is_a_bomb_or_not_an_image_is_refused(client, files):
    assert "12000x12000" in refusal(client, "/read_settings", file=handle_file(str(files / "bomb.png")))
    assert "not an image" in refusal(client, "/read_settings", file=handle_file(str(files / "corrupt.png")))


@pytest.mark.parametrize("sent", [
    {"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}, "orig_name": "passwd.png"},
    "/etc/passwd",
    12,
])
def test_a_server_path_or_a_number_given_as_a_file_is_refused(client, url, sent):
    message = raw_call(client, url, "diffedit_mask", image=sent, source_prompt=PROMPT)
    assert message is not None and message.startswith("Image to edit: "), message
    assert "/etc" not in message


@pytest.mark.slow  # a fresh interpreter (torch's import, ~10 s); tests/test_reliability.py measures the app's RSS too
def test_the_bomb_is_refused_from_its_header_without_decoding(files):
    code = f"""
import resource, sys
from studio.images import limit_decoding, open_image
from studio.errors import InvalidInputError
limit_decoding()
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    open_image({str(files / "bomb.png")!r})
except InvalidInputError as error:
    print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024, error)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parent.parent, env={**os.environ, "PYTHONPATH": "."}).stdout.split()
    growth_mb = int(out[0])
    assert growth_mb < 100 and "12000x12000" in " ".join(out)  # decoding would take 144 MB (L) to 432 MB (RGB)


def test_the_guard_refuses_above_the_limit_and_nothing_below(tmp_path):
    limit_decoding()
    side = int(MAX_INPUT_PIXELS ** 0.5)
    for size, refused in (((side + 1, side), True), ((side, side // 2), False)):
        path = tmp_path / f"{size[0]}x{size[1]}.png"
        Image.new("1", size).save(path)
        assert header_size(path) == size
        if refused:
            with pytest.raises(InvalidInputError, match=f"{size[0]}x{size[1]}"):
                open_image(path)
        else:
            assert open_image(path).size == size


# --------------------------------------------------------------------------------------------
# Numbers and text


@pytest.mark.parametrize("seed", [math.nan, math.inf, "seven"])
def test_a_seed_that_is_not_a_finite_number_is_answered(client, url, seed):
    message = raw_call(client, url, "generate", prompt=PROMPT, seed=seed, random_seed=False, steps=1)
    assert message is not None and message.startswith("Seed: "), message
    assert "a finite number is needed here" in message or "inf is greater than maximum" in message  # Gradio's own


@pytest.mark.parametrize("field", ["steps", "classifier_strength", "row1_scale"])  # the last two unused by this job
def test_nan_in_any_number_field_is_refused_naming_it(client, url, field):
    message = raw_call(client, url, "generate", **{"prompt": PROMPT, "steps": 1, field: math.nan})
    assert message is not None and message.endswith(": a finite number is needed here, not nan."), message


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, "7", True, None, 1.5])
def test_range_check_refuses_what_is_not_a_finite_number_in_range(value):
    with pytest.raises(InvalidInputError, match="Steps must be"):
        specs.STEPS.check("steps", value)


@pytest.mark.parametrize("weight", ["nan", "inf", "-inf", "1e9", "10.5"])
def test_a_prompt_weight_beyond_ten_or_not_finite_is_refused(weight):
    with pytest.raises(InvalidInputError, match=r"Target prompt: the weight in '\(red:"):
        parse_weighted_prompt(f"a (red:{weight}) circle", "Target prompt")
    assert parse_weighted_prompt("a (red:-10) circle").word_weights == (1.0, -10.0, 1.0)


def test_a_nan_weight_is_refused_before_any_model_work(client):
    message = refusal(client, "/p2p", source_prompt=PROMPT, target_prompt="a big (red:nan) circle on the left",
                      steps=2)
    assert "finite number" in message


def test_a_megabyte_of_prompt_is_refused_by_its_length_at_once(client):
    started = time.monotonic()
    message = refusal(client, "/generate", prompt="red " * 250_000, steps=1)
    assert "1000000 characters long; the limit is 2000" in message and len(message) < 700
    assert time.monotonic() - started < 10


@pytest.mark.parametrize(("prompt", "words"), [("😀 🐱", "does not know the word(s) '😀'"),
                                               ("!!! ...", "only punctuation"),
                                               ("a big 😀 circle", "'😀'")])
def test_a_prompt_without_a_word_the_model_reads_is_refused(client, prompt, words):
    assert words in refusal(client, "/generate", prompt=prompt, steps=1)


# --------------------------------------------------------------------------------------------
# Settings chunks


def settings_png(path: Path, chunks: dict[str, str | bytes]) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in chunks.items():
        if isinstance(value, bytes):  # raw iTXt bytes (not UTF-8): PIL's add_itxt takes only text
            info.add(b"iTXt", key.encode() + b"\0\0\0\0\0" + value)
        else:
            info.add_itxt(key, value, zip=True)
    Image.new("RGB", (64, 64)).save(path, pnginfo=info)
    return path


def record(settings) -> str:
    return json.dumps({"format": png_settings.FORMAT_ID, "version": 1, "settings": settings})


@pytest.mark.parametrize(("chunks", "words"), [
    ({png_settings.STUDIO_CHUNK: record({"prompt": "x" * 400_000})}, "characters long"),
    ({png_settings.STUDIO_CHUNK: "[" * 50_000 + "]" * 50_000}, "damaged"),
    ({png_settings.STUDIO_CHUNK: record({"a": json.loads("[" * 20 + "]" * 20)})}, "nest deeper"),
    ({png_settings.STUDIO_CHUNK: record({"prompt": "a", "concepts": "lora"})}, "concepts"),
    ({png_settings.STUDIO_CHUNK: b"\xff\xfe not utf-8 \xc3\x28"}, "no generation settings"),  # PIL drops it
    ({png_settings.A1111_CHUNK: "a " * 40_000 + "\nSteps: 1, Seed: 2, Size: 64x64"}, "characters long"),
])
def test_a_hostile_settings_chunk_is_refused_with_a_message(client, tmp_path, chunks, words):
    path = settings_png(tmp_path / "hostile.png", chunks)
    assert words in refusal(client, "/read_settings", file=handle_file(str(path)))


def test_settings_of_the_wrong_types_or_absurd_values_leave_those_fields_as_they_are(client, tmp_path):
    wrong = settings_png(tmp_path / "wrong.png", {png_settings.STUDIO_CHUNK: record({
        "job": "generate", "prompt": ["not", "text"], "steps": "many", "guidance_scale": {"a": 1}, "seed": 1e300,
        "scheduler": 7, "batch_size": -3, "conditions": "none", "negative_prompt": "blurry"})})
    absurd = settings_png(tmp_path / "absurd.png", {png_settings.A1111_CHUNK:
                          "a red circle\nSteps: 1e12, Sampler: Evil, CFG scale: nan, Seed: inf, Size: 99999x99999"})
    for path in (wrong, absurd):
        restored = client.predict(file=handle_file(str(path)), api_name="/read_settings")  # answered, not failed
        shown = json.dumps(restored, default=str)
        for hostile in ("many", "1e+300", "Evil", "99999", "1000000000000"):
            assert hostile not in shown, (hostile, shown[:400])


def test_a_hostile_a1111_line_parses_in_linear_time():
    started = time.monotonic()
    png_settings.parse_parameters("word " * 12_000 + "\nSteps: 1, Seed: 2, Size: 64x64")
    assert time.monotonic() - started < 1  # the unbounded key of A1111's regex took seconds at this size


# --------------------------------------------------------------------------------------------
# No pickles from users


class _Marker:
    """A pickle that, when unpickled, creates the file `path`: the code an attacker would run."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def malicious(path: Path, marker: Path, zip_archive: bool) -> Path:
    payload = {"string_to_param": {"*": _Marker(marker)}, "lora_unet_down.lora_up.weight": _Marker(marker)}
    if zip_archive:
        torch.save(payload, path)  # torch.save's zip layout: what a .pt / .ckpt / .pth usually is
    else:
        path.write_bytes(pickle.dumps(payload, protocol=4))  # a bare pickle: an old .bin
    return path


@pytest.mark.parametrize(("name", "zip_archive"), [("embedding.pt", True), ("lora.bin", False), ("lora.bin", True)])
def test_a_malicious_concept_file_is_refused_and_runs_nothing(client, tmp_path, name, zip_archive):
    marker = tmp_path / "ran"
    message = refusal(client, "/concepts_load", file=handle_file(str(malicious(tmp_path / name, marker, zip_archive))))
    assert "could run code" in message and not marker.exists()


def test_a_malicious_inversion_file_is_refused_and_runs_nothing(client, tmp_path):
    marker = tmp_path / "ran"
    path = malicious(tmp_path / "evil.inversion.safetensors", marker, zip_archive=True)
    assert "pickle" in refusal(client, "/load_inversion", path=handle_file(str(path)))
    assert not marker.exists()


def test_a_settings_png_carrying_a_pickle_is_refused_and_runs_nothing(client, tmp_path):
    marker = tmp_path / "ran"
    chunk = zlib.compress(pickle.dumps(_Marker(marker))).hex()  # what a "serialized settings" trick would carry
    path = settings_png(tmp_path / "pickled.png", {png_settings.STUDIO_CHUNK: chunk})
    assert "damaged" in refusal(client, "/read_settings", file=handle_file(str(path)))
    assert not marker.exists()


@pytest.mark.parametrize("suffix", [".ckpt", ".pth"])
def test_a_malicious_checkpoint_or_adapter_is_refused_and_runs_nothing(tmp_path, suffix):
    from studio.single_file import read_header
    from studio.structure.adapters import read_weights

    marker = tmp_path / "ran"
    for zip_archive in (True, False):
        path = malicious(tmp_path / f"evil{suffix}", marker, zip_archive)
        for read in (read_header, read_weights):
            with pytest.raises(ModelLoadError, match="could run code"):
                read(path)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------
# Messages


def test_public_message_keeps_file_names_and_drops_server_folders():
    assert public_message("cannot identify image file '/tmp/gradio/ab12/photo.png'") == \
        "cannot identify image file 'photo.png'"
    assert public_message("/root/work/runs/x.inversion.safetensors holds a pickle") == "x.inversion.safetensors holds a pickle"
    assert public_message("see ~/models/sd.ckpt") == "see sd.ckpt"
    kept = "https://huggingface.co/docs stays; so do 1/2, and/or and runs/inv/x.png"
    assert public_message(kept) == kept
    assert len(public_message("x" * 10_000)) < 700


@pytest.mark.parametrize(("api_name", "data"), [
    ("reuse_last_seed", [{"seed": "seven"}]),  # a string where the settings hold a seed
    ("reuse_last_seed", ["not a settings record"]),
])
def test_a_ui_helper_given_what_the_browser_never_sends_answers_with_a_message(url, api_name, data):
    from reliability_probes import Wire, by_name, discover  # Gradio's queue protocol: private events included

    wire = Wire(url, timeout=30)
    try:
        outcome = wire.call(by_name(discover(url), api_name), data)
    finally:
        wire.close()
    assert outcome.kind == "message" and "could not use the values sent" in outcome.text, outcome


def test_a_full_disk_when_saving_the_result_is_a_message_and_the_next_job_runs(client, monkeypatch):
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patched:
        patched.setattr(processing_utils, "save_pil_to_cache", full_disk)  # where Gradio writes every result image
        message = refusal(client, "/generate", prompt=PROMPT, steps=2, random_seed=True)
    assert "disk is full" in message and "try again later" in message
    assert client.predict(api_name="/generate", prompt=PROMPT, steps=2, random_seed=True) is not None


def test_an_upload_the_cache_has_deleted_is_called_expired_not_damaged():
    from studio.ui.inputs import input_problem

    problem = input_problem(FileNotFoundError(2, "No such file or directory"), None)
    assert "expired" in problem and "upload it again" in problem and "damaged" not in problem
