"""Bad inputs for every endpoint of the running app, sent the way any client can send them, and what came back.

Used by tests/test_reliability.py (a bounded sample) and bench/reliability.py (every probe, load, faults, memory).

Endpoints are read from the running app's /config (every event with a server function, private ones included:
Gradio's queue runs any fn_index it is given) and /gradio_api/info (their API names and parameters). A probe replaces
one argument of a fast, valid call with a bad value of one class and is sent through Gradio's own protocol
(POST /gradio_api/queue/join, then the /gradio_api/queue/data event stream), not gradio_client: a client library
would refuse or rewrite some of these values (NaN, server paths as files) before they reach the server.

An outcome is one of: "message" (an error whose text the user sees, or an HTTP refusal with a reason), "empty" (an
error without a message: Gradio's {"error": null}, what a non-gr.Error exception gives with show_error off),
"success", or "hang" (no answer within the timeout). "empty" and "hang" fail.
"""

from __future__ import annotations

import io
import json
import math
import os
import pickle
import re
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, PngImagePlugin

PROMPT = "a big red circle on the left"  # every word is in the shapes vocabulary (tests/app_harness.py)
TARGET_PROMPT = "a big blue circle on the left"
FAST_SIZE = 64  # px: the embedded model's smallest quick size (a multiple of 8)

OUTCOMES = ("message", "empty", "success", "hang")
FAILING = ("empty", "hang")

# Arguments that make a valid call quick (by parameter name); each is clamped to its component's range.
FAST_VALUES: dict[str, Any] = {
    "prompt": PROMPT, "source_prompt": PROMPT, "target_prompt": TARGET_PROMPT, "steps": 2, "width": FAST_SIZE,
    "height": FAST_SIZE, "batch_size": 1, "random_seed": False, "seed": 1, "inner_steps": 1, "methods": ["ddim"],
    "repeats": 1, "probes": 1, "noise_samples": 1, "count": 1, "class_images": 1, "strengths": "0.5",
    "capture_attention": False, "keep_size": False, "use_inversion": False, "prior_preservation": False,
    "concept": "<sks>", "class_word": "circle",
}

# A path-like word in a message shows the server's layout to whoever sent the request.
SERVER_PATH = re.compile(r"(?<![\w.])/(?:tmp|root|home|work|usr|var|etc|proc)/\S+")


# ---------------------------------------------------------------------------------------------------- endpoints

@dataclass(frozen=True)
class Param:
    name: str  # the API's parameter name (private events: the component's label)
    kind: str  # the component's type: textbox, number, slider, image, imageeditor, file, gallery, ...
    props: dict = field(hash=False, compare=False)


@dataclass(frozen=True)
class Endpoint:
    api_name: str
    fn_index: int
    trigger_id: int | None
    visibility: str  # public | undocumented | private
    params: tuple[Param, ...]
    model_job: bool  # queued on the one model (concurrency_id "model")

    @property
    def sendable(self) -> list[int]:
        """Indexes of the arguments a client sends (a State lives on the server; the client sends null)."""
        return [i for i, param in enumerate(self.params) if param.kind != "state"]


def discover(url: str, timeout: float = 30) -> list[Endpoint]:
    """Every event of the app at `url` that runs a server function, in the app's order."""
    config = httpx.get(url + "config", timeout=timeout).json()
    info = httpx.get(url + "gradio_api/info", params={"all_endpoints": "true"}, timeout=timeout).json()
    components = {component["id"]: component for component in config["components"]}
    endpoints = []
    for dependency in config["dependencies"]:
        if not dependency.get("backend_fn"):
            continue
        api_name = dependency.get("api_name") or f"fn_{dependency['id']}"
        named = info["named_endpoints"].get(f"/{api_name}", {}).get("parameters", [])
        names = iter(p["parameter_name"] for p in named)
        params = []
        for input_id in dependency["inputs"]:
            component = components[input_id]
            kind, props = component["type"], component.get("props", {})
            name = next(names, None) if kind != "state" and named else None
            params.append(Param(name or str(props.get("label") or kind).lower().replace(" ", "_"), kind, props))
        targets = dependency.get("targets") or [[None]]
        endpoints.append(Endpoint(api_name, dependency["id"], targets[0][0], dependency.get("api_visibility", "public"),
                                  tuple(params), dependency.get("concurrency_id") == "model"))
    return endpoints


# ---------------------------------------------------------------------------------------------------- the wire

@dataclass
class Outcome:
    kind: str  # one of OUTCOMES
    text: str = ""  # the message shown, or what came back
    seconds: float = 0.0
    output: Any = None  # the data of a success

    @property
    def leaks_path(self) -> bool:
        return bool(SERVER_PATH.search(self.text))


class Wire:
    """Gradio's queue protocol over httpx: upload files, run an event by its fn_index in a session of its own."""

    def __init__(self, url: str, timeout: float = 60, session: str | None = None) -> None:
        # One browser session per Wire, as a page has: a new session costs the server a copy of the app's state
        # (about half a second for this app), and probes are sent one after another.
        self.url, self.timeout, self.session = url, timeout, session or uuid.uuid4().hex
        self.http = httpx.Client(base_url=url + "gradio_api/", timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def upload(self, data: bytes, name: str) -> dict:
        """A file as the server's upload route stores it, in the FileData form events take."""
        response = self.http.post("upload", files=[("files", (name, data))])
        if response.status_code != 200:
            raise UploadRefused(response.status_code, response.text)
        path, = response.json()
        return file_data(path, name)

    def join(self, endpoint: Endpoint, data: list, session: str | None = None) -> tuple[str, str]:
        """Queue the event; (session, event_id). Raises Refused when the queue turns it away (HTTP error)."""
        session = session or self.session
        body = {"data": data, "fn_index": endpoint.fn_index, "trigger_id": endpoint.trigger_id,
                "session_hash": session, "event_data": None}
        response = self.http.post("queue/join", content=json.dumps(body, allow_nan=True),
                                  headers={"content-type": "application/json"})
        if response.status_code != 200:
            raise Refused(response.status_code, _detail(response))
        return session, response.json()["event_id"]

    def call(self, endpoint: Endpoint, data: list, timeout: float | None = None) -> Outcome:
        """Run the event and wait for its end: the outcome, as the list above defines it."""
        started = time.monotonic()
        try:
            session, event_id = self.join(endpoint, data)
        except Refused as refusal:
            kind = "message" if refusal.detail.strip() else "empty"
            return Outcome(kind, f"HTTP {refusal.status}: {refusal.detail}", time.monotonic() - started)
        except httpx.TimeoutException:
            return Outcome("hang", "queue/join did not answer", time.monotonic() - started)
        return self.follow(session, event_id, started, timeout or self.timeout)

    def follow(self, session: str, event_id: str, started: float, timeout: float) -> Outcome:
        """Read the session's event stream until `event_id` completes (or `timeout` passes)."""
        deadline = started + timeout
        try:
            with self.http.stream("GET", "queue/data", params={"session_hash": session},
                                  timeout=httpx.Timeout(timeout, read=min(timeout, 15.0))) as stream:
                for message in sse_messages(stream.iter_lines(), deadline):
                    if message.get("msg") == "unexpected_error":
                        return Outcome(_message_kind(message.get("message")), str(message.get("message") or ""),
                                       time.monotonic() - started)
                    if message.get("msg") != "process_completed" or message.get("event_id") != event_id:
                        continue
                    output = message.get("output") or {}
                    seconds = time.monotonic() - started
                    if message.get("success"):
                        return Outcome("success", "", seconds, output.get("data"))
                    error = output.get("error")
                    return Outcome(_message_kind(error), str(error or ""), seconds)
        except (httpx.TimeoutException, TimeoutError):
            pass
        return Outcome("hang", f"no answer in {timeout:.0f} s", time.monotonic() - started)


class Refused(Exception):
    def __init__(self, status: int, detail: str) -> None:
        super().__init__(f"HTTP {status}: {detail}")
        self.status, self.detail = status, detail


class UploadRefused(Refused):
    """The upload route itself refused the file (too large, too many): answered, with a reason."""


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    return str(body.get("detail", body)) if isinstance(body, dict) else str(body)


def _message_kind(error: Any) -> str:
    return "message" if isinstance(error, str) and error.strip() else "empty"


def sse_messages(lines: Iterator[str], deadline: float) -> Iterator[dict]:
    for line in lines:
        if time.monotonic() > deadline:
            raise TimeoutError
        if line.startswith("data:"):
            yield json.loads(line[5:])


def file_data(path: str, name: str | None = None) -> dict:
    return {"path": path, "orig_name": name, "meta": {"_type": "gradio.FileData"}}


# ---------------------------------------------------------------------------------------------------- files

def png_bytes(image: Image.Image, text: dict[str, str] | None = None) -> bytes:
    info = PngImagePlugin.PngInfo()
    for key, value in (text or {}).items():
        info.add_itxt(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def small_picture(size: int = FAST_SIZE) -> Image.Image:
    """A red disc on a white ground: a picture every image input accepts."""
    picture = Image.new("RGB", (size, size), "white")
    from PIL import ImageDraw

    ImageDraw.Draw(picture).ellipse((size // 8, size // 4, size // 2, 3 * size // 4), fill="red")
    return picture


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def blank_png(width: int, height: int, bit_depth: int = 8, colour_type: int = 2) -> bytes:
    """A PNG of zeros streamed row by row, so a 12000x12000 file (about 420 KB) costs this process no memory.
    colour_type 2 is RGB, 0 greyscale (bit_depth 1: one bit a pixel)."""
    channels = {0: 1, 2: 3}[colour_type]
    row = b"\x00" + bytes((width * channels * bit_depth + 7) // 8)  # filter byte + the row
    compressor, parts = zlib.compressobj(9), []
    for _ in range(height):
        if piece := compressor.compress(row):
            parts.append(piece)
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


HUGE_SIDE = 12000  # the 441 KB PNG of issue #19: 144 MP, inside PIL's default warning-only range (89-179 MP)
BOMB_SIDE = 40000  # 1.6 GP of one bit each in about 200 KB: over PIL's default hard limit (179 MP)


class Marker:
    """A pickle that, if unpickled, creates `path`: proof that a reader ran code from a user's file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def pickle_bytes(marker: Path) -> bytes:
    """A torch-style checkpoint ({"state_dict": ...}) whose value runs code when unpickled."""
    return pickle.dumps({"state_dict": Marker(marker), "string_to_param": {"*": Marker(marker)}}, protocol=2)


class Files:
    """The probe files, made once (the huge ones are built lazily), uploaded once per Wire."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.marker = work / "pickle-ran"  # created only if a pickle from a "user" was unpickled
        self._bytes: dict[str, tuple[bytes, str]] = {}
        self._uploaded: dict[tuple[int, str], dict] = {}

    def content(self, key: str) -> tuple[bytes, str]:
        if key not in self._bytes:
            self._bytes[key] = self._make(key)
        return self._bytes[key]

    def _make(self, key: str) -> tuple[bytes, str]:
        picture = small_picture()
        valid = png_bytes(picture)
        makers: dict[str, Callable[[], tuple[bytes, str]]] = {
            "valid": lambda: (valid, "picture.png"),
            "huge": lambda: (blank_png(HUGE_SIDE, HUGE_SIDE), "huge.png"),
            "bomb": lambda: (blank_png(BOMB_SIDE, BOMB_SIDE, bit_depth=1, colour_type=0), "bomb.png"),
            "tiny": lambda: (png_bytes(Image.new("RGB", (1, 1), "red")), "tiny.png"),
            "wide": lambda: (png_bytes(Image.new("RGB", (4096, 8), "red")), "wide.png"),
            "corrupt": lambda: (os.urandom(2048), "corrupt.png"),
            "truncated": lambda: (valid[: len(valid) // 2], "truncated.png"),
            "not_an_image": lambda: (b"#!/bin/sh\necho hello\n", "script.png"),
            "cmyk": lambda: (_jpeg(picture.convert("CMYK")), "cmyk.jpg"),
            "16bit": lambda: (png_bytes(picture.convert("L").convert("I;16")), "sixteen.png"),
            "palette": lambda: (png_bytes(picture.convert("P")), "palette.png"),
            "1bit": lambda: (png_bytes(picture.convert("1")), "onebit.png"),
            "alpha0": lambda: (png_bytes(Image.new("RGBA", picture.size, (255, 0, 0, 0))), "transparent.png"),
            "mask_small": lambda: (png_bytes(Image.new("RGBA", (24, 40), (255, 255, 255, 255))), "mask.png"),
            "mask_huge": lambda: (png_bytes(Image.new("RGBA", (2048, 2048), (255, 255, 255, 255))), "mask_big.png"),
            "pickle": lambda: (pickle_bytes(self.marker), "concept.bin"),
            "pickle_pt": lambda: (pickle_bytes(self.marker), "inversion.pt"),
            "pickle_safetensors": lambda: (pickle_bytes(self.marker), "concept.safetensors"),
        }
        for name, text in HOSTILE_CHUNKS.items():
            makers[f"chunk_{name}"] = lambda text=text, name=name: (png_bytes(picture, text), f"{name}.png")
        return makers[key]()

    def upload(self, wire: Wire, key: str) -> dict | str:
        """The uploaded file's FileData; the refusal's text when the upload route refuses it."""
        cache_key = (id(wire), key)
        if cache_key not in self._uploaded:
            data, name = self.content(key)
            try:
                self._uploaded[cache_key] = wire.upload(data, name)
            except UploadRefused as refusal:
                return f"upload refused: HTTP {refusal.status}: {refusal.detail}"
        return self._uploaded[cache_key]


def _jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG")
    return buffer.getvalue()


_STUDIO_CHUNK = "diffusion-control-studio"  # studio.png_settings.STUDIO_CHUNK (no studio import: the bench's client
_FORMAT = "diffusion-control-studio/settings"  # side runs without torch)


def _record(settings: Any) -> str:
    return json.dumps({"format": _FORMAT, "version": 1, "settings": settings}, allow_nan=True)


HOSTILE_CHUNKS: dict[str, dict[str, str]] = {
    "deep_json": {_STUDIO_CHUNK: "[" * 100_000 + "]" * 100_000},
    "nan_settings": {_STUDIO_CHUNK: _record({"job": "generate", "prompt": PROMPT, "seed": math.nan,
                                             "steps": math.inf, "guidance_scale": -math.inf})},
    "wrong_types": {_STUDIO_CHUNK: _record({"job": "generate", "prompt": ["a", "list"], "steps": "many",
                                            "width": {"x": 1}, "conditions": "none", "structure": 5})},
    "unknown_job": {_STUDIO_CHUNK: _record({"job": "format-disk", "prompt": PROMPT})},
    "not_a_dict": {_STUDIO_CHUNK: _record([1, 2, 3])},
    "huge_prompt": {_STUDIO_CHUNK: _record({"job": "generate", "prompt": "red " * 250_000})},
    "a1111_garbage": {"parameters": "red\nSteps: nan, Sampler: ;;, CFG scale: inf, Seed: -1e999, Size: 99999999x-4"},
    "a1111_huge_size": {"parameters": f"{PROMPT}\nSteps: 2, Sampler: DDIM, CFG scale: 5, Seed: 1, Size: 100000x100000"},
}


# ---------------------------------------------------------------------------------------------------- probes

@dataclass(frozen=True)
class Probe:
    probe_class: str
    variant: str
    param: int  # index into the endpoint's params; WHOLE_CALL: the argument list itself
    value: Any  # the bad value, or a file key ("file:<key>") / a builder (see materialise)


WHOLE_CALL = -1
NUMBER_KINDS = ("number", "slider")
TEXT_KINDS = ("textbox",)
CHOICE_KINDS = ("dropdown", "radio", "checkboxgroup")
IMAGE_KINDS = ("image", "imageeditor", "gallery", "file")

HUGE_TEXT = "red " * 250_000  # 1 M characters
IMAGE_VARIANTS = {
    "huge": ["huge", "wide"],
    "tiny": ["tiny"],
    "corrupt": ["corrupt", "not_an_image"],
    "truncated": ["truncated"],
    "bomb": ["bomb"],
    "odd_mode": ["cmyk", "16bit", "palette", "1bit", "alpha0"],
    "hostile_png": [f"chunk_{name}" for name in HOSTILE_CHUNKS],
}
PATHS = {
    "etc_passwd": "/etc/passwd",
    "dotdot": "../../../../../../etc/passwd",
    "source": str(Path(__file__).resolve()),
    "proc_environ": "/proc/self/environ",
    "raw_string": "RAW:/etc/passwd",  # a bare string where a FileData belongs
    "url": "http://127.0.0.1:9/x.png",  # a closed loopback port: fetching it must not be tried
}
CLASSES = ("types", "nan_inf", "strings", "unicode", "huge", "tiny", "corrupt", "truncated", "bomb", "odd_mode",
           "wrong_size_mask", "path", "hostile_png", "pickle")


def probes_for(endpoint: Endpoint) -> list[Probe]:
    """Every probe that applies to `endpoint`: each argument x each class of bad value that fits its kind."""
    found = [Probe("types", "one_argument_too_many", WHOLE_CALL, "too_many")]
    if endpoint.params:
        found.append(Probe("types", "one_argument_too_few", WHOLE_CALL, "too_few"))
    for index, param in enumerate(endpoint.params):
        def add(probe_class: str, variant: str, value: Any) -> None:
            found.append(Probe(probe_class, variant, index, value))

        kind = param.kind
        if kind in NUMBER_KINDS:
            add("types", "string", "abc")
            add("types", "list", [1, 2])
            for name, value in (("nan", math.nan), ("inf", math.inf), ("-inf", -math.inf), ("1e308", 1e308)):
                add("nan_inf", name, value)
        elif kind in TEXT_KINDS:
            add("types", "number", 12345)
            add("types", "dict", {"a": 1})
            add("strings", "huge", HUGE_TEXT)
            add("strings", "empty", "")
            add("strings", "spaces", " \t\n ")
            for name, value in (("emoji", "🔴🟦✨"), ("rtl", "دائرة حمراء كبيرة"), ("nul", "a big\x00red circle"),
                                ("zalgo", "re" + "\u0301" * 500 + "d"), ("surrogate", "red \ud800 circle")):
                add("unicode", name, value)
            if param.name in ("prompt", "source_prompt", "target_prompt"):
                for name, value in (("weight_nan", "a big (red:nan) circle"), ("weight_inf", "a big (red:inf) circle"),
                                    ("weight_huge", "a big (red:1e9) circle")):
                    add("nan_inf", name, value)
        elif kind in CHOICE_KINDS:
            add("types", "number", 7)
            add("types", "unknown_choice", "not-a-choice")
            add("strings", "huge", HUGE_TEXT[:100_000])
            add("unicode", "emoji", "🔥")
        elif kind == "checkbox":
            add("types", "string", "yes")
            add("types", "number", 2)
        elif kind == "dataframe":
            headers = list(param.props.get("headers") or [])
            add("types", "string", "abc")
            add("types", "no_headers", {"data": [[1, 2]]})
            width = max(len(headers), 1)
            add("nan_inf", "nan_cells", {"headers": headers, "data": [[PROMPT, *([math.nan] * (width - 1))]]})
            add("strings", "huge_cell", {"headers": headers, "data": [[HUGE_TEXT, *([1] * (width - 1))]]})
            add("unicode", "emoji_cell", {"headers": headers, "data": [["🔴", *([1] * (width - 1))]]})
        elif kind in IMAGE_KINDS:
            add("types", "number", 5)
            add("types", "no_path", {"meta": {"_type": "gradio.FileData"}})
            for probe_class, keys in IMAGE_VARIANTS.items():
                for key in keys:
                    add(probe_class, key, f"file:{key}")
            for name, path in PATHS.items():
                add("path", name, f"path:{path}")
            if kind == "file":
                for key in ("pickle", "pickle_pt", "pickle_safetensors"):
                    add("pickle", key, f"file:{key}")
            if kind == "imageeditor":
                add("wrong_size_mask", "small_layer", "layer:mask_small")
                add("wrong_size_mask", "huge_layer", "layer:mask_huge")
                add("wrong_size_mask", "odd_mode_layer", "layer:1bit")
        elif kind == "dataset":  # an example's index
            add("types", "index_out_of_range", 10**9)
            add("types", "negative_index", -1)
            add("types", "string", "abc")
        elif kind == "json":
            add("types", "string", "abc")
            add("nan_inf", "nan", {"seed": math.nan})
    return found


def sample(endpoint: Endpoint, rotation: int = 0) -> list[Probe]:
    """One probe of each class that applies to `endpoint`, the argument and variant taken in turn (`rotation` shifts
    the pick so runs on several endpoints touch different arguments)."""
    by_class: dict[str, list[Probe]] = {}
    for probe in probes_for(endpoint):
        by_class.setdefault(probe.probe_class, []).append(probe)
    return [probes[(rotation + i) % len(probes)] for i, (_, probes) in enumerate(sorted(by_class.items()))]


# ---------------------------------------------------------------------------------------------------- calls

def fast_value(param: Param, files: Files, wire: Wire) -> Any:
    """A valid, quick value for `param`: FAST_VALUES by name, else the component's own default."""
    props, kind = param.props, param.kind
    if kind == "state":
        return None
    if kind in ("image", "file"):
        return files.upload(wire, "valid") if kind == "image" or "png" in str(props.get("file_types")) else None
    if kind == "imageeditor":
        picture = files.upload(wire, "valid")
        return {"background": picture, "layers": [], "composite": picture}
    if kind == "gallery":
        return [{"image": files.upload(wire, "valid"), "caption": None}]
    value = FAST_VALUES.get(param.name, props.get("value"))
    if kind in NUMBER_KINDS and isinstance(value, (int, float)):
        low, high = props.get("minimum"), props.get("maximum")
        value = max(value, low) if isinstance(low, (int, float)) else value
        value = min(value, high) if isinstance(high, (int, float)) else value
    return value


def valid_call(endpoint: Endpoint, files: Files, wire: Wire) -> list:
    return [fast_value(param, files, wire) for param in endpoint.params]


def materialise(probe: Probe, endpoint: Endpoint, files: Files, wire: Wire) -> tuple[list, str | None]:
    """The full argument list for `probe`, or (_, text) when the upload route already refused its file."""
    data = valid_call(endpoint, files, wire)
    if probe.param == WHOLE_CALL:
        return (data + [None] if probe.value == "too_many" else data[:-1]), None
    value, kind = probe.value, endpoint.params[probe.param].kind
    if isinstance(value, str) and value.startswith(("file:", "path:", "layer:")):
        how, key = value.split(":", 1)
        if how == "path":
            uploaded = key[4:] if key.startswith("RAW:") else file_data(key, Path(key).name)
        else:
            uploaded = files.upload(wire, key)
            if isinstance(uploaded, str):
                return data, uploaded
        if how == "layer":
            data[probe.param] = {**data[probe.param], "layers": [uploaded]}
            return data, None
        if kind == "imageeditor":
            uploaded = {"background": uploaded, "layers": [], "composite": uploaded}
        elif kind == "gallery":
            uploaded = [{"image": uploaded, "caption": None}]
        value = uploaded
    data[probe.param] = value
    return data, None


@dataclass
class Tried:
    endpoint: str
    visibility: str
    param: str
    probe: Probe
    outcome: Outcome

    def row(self) -> dict:
        return {"endpoint": self.endpoint, "visibility": self.visibility, "class": self.probe.probe_class,
                "variant": self.probe.variant, "param": self.param, "outcome": self.outcome.kind,
                "seconds": round(self.outcome.seconds, 2), "text": self.outcome.text[:300],
                "leaks_path": self.outcome.leaks_path}


def run_probe(probe: Probe, endpoint: Endpoint, files: Files, wire: Wire, timeout: float) -> Tried:
    started = time.monotonic()
    data, refused = materialise(probe, endpoint, files, wire)
    if refused is not None:
        outcome = Outcome("message", refused, time.monotonic() - started)
    else:
        outcome = wire.call(endpoint, data, timeout)
    param = "(all)" if probe.param == WHOLE_CALL else endpoint.params[probe.param].name
    return Tried(endpoint.api_name, endpoint.visibility, param, probe, outcome)


def by_name(endpoints: list[Endpoint], api_name: str) -> Endpoint:
    return next(endpoint for endpoint in endpoints if endpoint.api_name == api_name)


def tiny_generate(endpoints: list[Endpoint], files: Files, wire: Wire, timeout: float = 120, **fields: Any) -> Outcome:
    """A 64-px, 2-step /generate: the 'app alive' check after each group of probes."""
    endpoint = by_name(endpoints, "generate")
    data = valid_call(endpoint, files, wire)
    for name, value in fields.items():
        data[next(i for i, p in enumerate(endpoint.params) if p.name == name)] = value
    return wire.call(endpoint, data, timeout)


def settings_of(output: list | None) -> dict:
    """The settings JSON among a /generate success's outputs (gallery, preview, progress, settings, files)."""
    for value in output or []:
        if isinstance(value, dict) and "seed" in value and "prompt" in value:
            return value
    return {}


def tally(tried: list[Tried]) -> dict[str, dict[str, int]]:
    """{class: {"tried": n, "message": n, "empty": n, "success": n, "hang": n, "leaks_path": n}}"""
    table: dict[str, dict[str, int]] = {}
    for item in tried:
        row = table.setdefault(item.probe.probe_class, {"tried": 0, **{kind: 0 for kind in OUTCOMES}, "leaks_path": 0})
        row["tried"] += 1
        row[item.outcome.kind] += 1
        row["leaks_path"] += item.outcome.leaks_path
    return dict(sorted(table.items(), key=lambda entry: CLASSES.index(entry[0])))

