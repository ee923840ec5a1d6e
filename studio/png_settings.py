"""Settings embedded in PNG text chunks, so an image carries what is needed to make it again.

Any job's record (Result.settings, studio.jobs.reproduction_record; its "job" key says which) is stored.
Two chunks are written:
- ``parameters``: the AUTOMATIC1111 text format, which other tools (A1111, Forge, SD.Next, civitai,
  image viewers) read; only for images a prompt made (generation, and edits under a target prompt)::

      <prompt> <lora:name:scale>
      Negative prompt: <negative prompt>
      Steps: 25, Sampler: DDIM, CFG scale: 5, Seed: 1, Size: 64x64, Model: shapes-sd, ...

  A LoRA the image was made with is written as A1111 writes it, a `<lora:name:scale>` tag after the prompt with
  its hash under "Lora hashes"; embeddings' hashes go under "TI hashes"; every concept (name, kind, hash, scale)
  under "Concepts" as JSON, so reading the line back restores them (another tool's tags become LoRA concepts).

  Values containing ``,`` ``:`` or a newline are JSON-quoted (as A1111 does); the last line needs
  at least three ``key: value`` pairs to be recognised as the parameter line.
- ``STUDIO_CHUNK``: our own JSON, lossless (types kept), preferred when reading; always written, also for
  masks, attention maps and previews of a job.

Everything here is a pure function of its inputs; the UI only calls them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, UnidentifiedImageError

from studio.errors import InvalidInputError
from studio.images import too_large_message
from studio.jobs import JOB_LABELS, JOBS
from studio.specs import GenerateSpec

STUDIO_CHUNK = "diffusion-control-studio"
A1111_CHUNK = "parameters"
FORMAT_ID = "diffusion-control-studio/settings"
FORMAT_VERSION = 1

# Our scheduler names <-> the sampler names A1111 writes. Unlisted names pass through unchanged.
A1111_SAMPLERS = {
    "ddim": "DDIM",
    "euler": "Euler",
    "euler_ancestral": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
}
_SCHEDULER_FROM_SAMPLER = {v.lower(): k for k, v in A1111_SAMPLERS.items()}
# A1111 >= 1.9 splits "DPM++ 2M Karras" into Sampler + "Schedule type"; older files put it in one name.
_SCHEDULER_FROM_SAMPLER.update({"dpm++ 2m karras": "dpmpp_2m", "euler ancestral": "euler_ancestral"})

# A1111 parameter-line keys we write/read, in the order we write them, and our setting names.
_LINE_KEYS = (
    ("Steps", "steps"),
    ("Sampler", "scheduler"),
    ("CFG scale", "guidance_scale"),
    ("Seed", "seed"),
    ("Size", "size"),
    ("Model", "model"),
    ("Batch size", "batch_size"),
    ("Batch pos", "batch_index"),
)

# The parameter-line grammar, as in A1111's modules/infotext_utils.py (key: value or key: "quoted"), with keys of at
# most 64 characters: A1111's unbounded key makes findall quadratic (16 KB of words without a colon took 1.6 s).
_PARAM = re.compile(r'\s*(\w[\w \-/+]{0,63}):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
# What a settings chunk may hold: far above any record this app writes (a few KB), and small enough that a hostile
# chunk costs milliseconds to parse.
MAX_SETTINGS_CHARS = 256 * 1024  # our JSON chunk
MAX_PARAMETERS_CHARS = 64 * 1024  # the A1111 text, parsed by the regex above (about 80 ms at this size)
MAX_SETTINGS_DEPTH = 16  # nesting of our JSON (records nest 4 deep: settings > structure > controls > control)
# A1111's extra-network tag in a prompt: <lora:name:weight> (the weight optional, 1 by default)
_LORA_TAG = re.compile(r"\s*<lora:([^:>]+)(?::([-+]?[\d.]+))?>")
_SIZE = re.compile(r"^(\d+)x(\d+)$")

# Records written before the "job" key: SDEdit and DiffEdit named themselves in "method"
_JOB_OF_METHOD = {"sdedit": "sdedit", "diffedit mask": "diffedit_mask", "diffedit": "diffedit"}
# Jobs whose images a prompt made: the ones the A1111 line describes (SDEdit only with a prompt)
_PROMPTED_JOBS = ("generate", "sdedit", "diffedit", "p2p")


def _quote(value: Any) -> str:
    text = str(value)
    if "," in text or ":" in text or "\n" in text or text.startswith('"'):
        return json.dumps(text, ensure_ascii=False)
    return text


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def _fmt_number(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def record_job(record: dict[str, Any]) -> str:
    """Which job (one of studio.jobs.JOBS) made a record: its "job" key; "generate" for an A1111 PNG's settings.
    JOB_LABELS[record_job(record)] names it for people ("DiffEdit")."""
    job = record.get("job")
    if job in JOBS:
        return job
    if record.get("method") in _JOB_OF_METHOD:
        return _JOB_OF_METHOD[record["method"]]
    if "target_prompt" in record and "edit" in record:  # an older Prompt-to-Prompt record
        return "p2p"
    if "inner_steps" in record:  # an older inversion record (InversionSpec's fields)
        return "invert"
    return "generate"


def job_label(record: dict[str, Any]) -> str:
    """The name people know the record's job by: "Generate", "DiffEdit", "Prompt-to-Prompt", ..."""
    return JOB_LABELS[record_job(record)]


def has_parameters_line(settings: dict[str, Any]) -> bool:
    """Whether an image of this record gets the A1111 line: generated images and edits under a target prompt
    (not inversions' reconstructions, DiffEdit's masks, or an SDEdit without a prompt)."""
    job = record_job(settings)
    return job in _PROMPTED_JOBS and (job != "sdedit" or bool(str(settings.get("prompt", "")).strip()))


def _prompt_of(settings: dict[str, Any], batch_index: int | None) -> str:
    """The prompt that made image `batch_index`: the edit's target prompt (P2P's image 0 is its source image;
    an empty P2P target is the source prompt re-weighted), else "prompt"."""
    job = record_job(settings)
    if job == "p2p":
        source = str(settings.get("source_prompt", ""))
        return source if batch_index == 0 else str(settings.get("target_prompt") or source)
    if job == "diffedit":
        return str(settings.get("target_prompt", ""))
    return str(settings.get("prompt", ""))


def _seed_of(settings: dict[str, Any], batch_index: int | None) -> Any:
    """Image `batch_index`'s own seed: "seeds" (one per image: a batch draws seed, seed + 1, ...), else "seed"."""
    seeds = settings.get("seeds")
    if batch_index is not None and isinstance(seeds, list) and 0 <= batch_index < len(seeds):
        return seeds[batch_index]
    return settings.get("seed")


def format_parameters(settings: dict[str, Any], batch_index: int | None = None) -> str:
    """The A1111 ``parameters`` text for image `batch_index` of a result made with `settings`."""
    concepts = settings.get("concepts") or []
    loras = [c for c in concepts if c.get("kind") == "lora"]
    lines = [" ".join([_prompt_of(settings, batch_index),
                       *(f"<lora:{c['name']}:{_fmt_number(c.get('scale', 1.0))}>" for c in loras)])]
    negative = settings.get("negative_prompt") or ""
    if negative:
        lines.append(f"Negative prompt: {negative}")

    values: dict[str, Any] = {
        "steps": settings.get("steps"),
        "scheduler": A1111_SAMPLERS.get(str(settings.get("scheduler")), settings.get("scheduler")),
        "guidance_scale": settings.get("guidance_scale"),
        "seed": _seed_of(settings, batch_index),
        "model": settings.get("model"),
        "batch_size": settings.get("batch_size"),
        "batch_index": batch_index,
    }
    source_image = settings.get("source_image") or {}
    width, height = settings.get("width", source_image.get("width")), settings.get("height", source_image.get("height"))
    if width is not None and height is not None:
        values["size"] = f"{width}x{height}"
    pairs = [f"{key}: {_quote(_fmt_number(values[name]))}" for key, name in _LINE_KEYS if values.get(name) is not None]
    # Our scheduler name too, so a round trip through the A1111 line alone is exact.
    if settings.get("scheduler") is not None:
        pairs.append(f"Scheduler: {_quote(settings['scheduler'])}")
    # Global guidance (issue #4), JSON-quoted so A1111-style parsers keep it as one value.
    if settings.get("conditions"):
        pairs.append(f"Conditions: {_quote(json.dumps(settings['conditions']))}")
    if settings.get("guidance_rescale"):
        pairs.append(f"Guidance rescale: {_fmt_number(settings['guidance_rescale'])}")
    if settings.get("classifier_guidance"):
        pairs.append(f"Classifier guidance: {_quote(json.dumps(settings['classifier_guidance']))}")
    embeddings = [c for c in concepts if c.get("kind") == "embedding"]  # A1111's name for them: TI
    for key, listed in (("Lora hashes", loras), ("TI hashes", embeddings)):
        if listed:
            hashes = ", ".join(f"{c['name']}: {c.get('hash')}" for c in listed)
            pairs.append(f"{key}: {_quote(hashes)}")
    if concepts:
        pairs.append(f"Concepts: {_quote(json.dumps(concepts))}")
    pairs.append("Version: diffusion-control-studio")
    lines.append(", ".join(pairs))
    return "\n".join(lines)


def _number(text: str, kind: type) -> int | float | None:
    """A finite number, or None (the key then stays under "extra"): "nan", "inf" and "1e999" are no setting."""
    try:
        value = float(text)
    except ValueError:
        return None
    if not math.isfinite(value) or (kind is int and not value.is_integer()):
        return None
    return kind(value)


def parse_parameters(text: str) -> dict[str, Any]:
    """Settings from an A1111 ``parameters`` text (ours or another tool's).

    Returns our setting names where known (prompt, negative_prompt, steps, scheduler, guidance_scale,
    seed, width, height, model, batch_size, and our conditions, guidance_rescale, classifier_guidance)
    and every other ``key: value`` of the line under ``extra``.
    """
    *lines, last = text.strip().split("\n")
    if len(_PARAM.findall(last)) < 3:  # no parameter line: everything is prompt text
        lines.append(last)
        last = ""

    prompt: list[str] = []
    negative: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)

    raw = {key.strip(): _unquote(value.strip()) for key, value in _PARAM.findall(last)}
    prompt_text = "\n".join(prompt)
    tags = [{"name": name, "kind": "lora", "scale": float(scale) if scale else 1.0}
            for name, scale in _LORA_TAG.findall(prompt_text)]
    settings: dict[str, Any] = {"prompt": _LORA_TAG.sub("", prompt_text).strip(), "negative_prompt": "\n".join(negative)}
    extra: dict[str, str] = {}
    known = dict(_LINE_KEYS)
    for key, value in raw.items():
        name = known.get(key)
        if name in ("steps", "seed", "batch_size", "batch_index"):
            number = _number(value, int)
            if number is not None:
                settings[name] = number
                continue
        elif name == "guidance_scale":
            number = _number(value, float)
            if number is not None:
                settings[name] = number
                continue
        elif name == "size":
            match = _SIZE.match(value)
            if match:
                settings["width"], settings["height"] = int(match.group(1)), int(match.group(2))
                continue
        elif name == "scheduler":
            settings["scheduler"] = _SCHEDULER_FROM_SAMPLER.get(value.lower(), value)
            continue
        elif name == "model":
            settings["model"] = value
            continue
        extra[key] = value
    if "Scheduler" in extra:  # ours, exact; A1111 >= 1.9 writes "Schedule type", not "Scheduler"
        settings["scheduler"] = extra.pop("Scheduler")
    for key, name in (("Conditions", "conditions"), ("Classifier guidance", "classifier_guidance"),
                      ("Concepts", "concepts")):
        if key in extra:
            try:
                settings[name] = json.loads(extra[key])
                del extra[key]
            except json.JSONDecodeError:
                pass  # not ours: stays under "extra"
    if "Guidance rescale" in extra and (rescale := _number(extra["Guidance rescale"], float)) is not None:
        settings["guidance_rescale"] = rescale
        del extra["Guidance rescale"]
    if tags and "concepts" not in settings:  # another tool's <lora:...> tags: names and weights, no hashes
        settings["concepts"] = tags
    if extra:
        settings["extra"] = extra
    return settings


def png_text_chunks(settings: dict[str, Any], batch_index: int | None = None) -> dict[str, str]:
    """The text chunks to store in a PNG made with `settings` (image `batch_index` of its result): our JSON
    always, the A1111 line where has_parameters_line says so."""
    ours = {"format": FORMAT_ID, "version": FORMAT_VERSION, "settings": settings}
    if batch_index is not None:
        ours["batch_index"] = batch_index
    chunks = {STUDIO_CHUNK: json.dumps(ours, ensure_ascii=False, default=str)}
    if has_parameters_line(settings):
        chunks[A1111_CHUNK] = format_parameters(settings, batch_index)
    return chunks


def with_settings(image: Image.Image, settings: dict[str, Any], batch_index: int | None = None) -> Image.Image:
    """A copy of `image` whose ``info`` holds the settings chunks.

    Gradio writes ``info``'s text entries as PNG text chunks when it saves with format="png"
    (gradio.processing_utils.get_pil_metadata), so gallery downloads keep the settings.
    """
    tagged = image.copy()
    tagged.info.update(png_text_chunks(settings, batch_index))
    return tagged


def save_png(image: Image.Image, settings: dict[str, Any], path: str | Path, batch_index: int | None = None) -> Path:
    info = PngImagePlugin.PngInfo()
    for key, value in png_text_chunks(settings, batch_index).items():
        # tEXt is latin-1 only; iTXt holds UTF-8 (our JSON, and prompts with other characters).
        if key == STUDIO_CHUNK or not value.isascii():
            info.add_itxt(key, value)
        else:
            info.add_text(key, value)
    path = Path(path)
    image.save(path, format="PNG", pnginfo=info)
    return path


def read_png_settings(source: str | Path | Image.Image) -> dict[str, Any]:
    """Settings stored in a PNG: the whole record of any job from our JSON chunk when present, else the
    A1111 ``parameters`` text's settings (a PNG of another tool; record_job gives "generate").

    Raises InvalidInputError when the file is not an image, carries no settings, or its settings chunk is damaged.
    """
    if isinstance(source, Image.Image):
        text = _text_chunks(source)
    else:
        name = Path(source).name
        try:
            with Image.open(source) as image:
                text = _text_chunks(image)
        except Image.DecompressionBombError as error:  # the header's size, refused before decoding (limit_decoding)
            raise InvalidInputError(f"{name}: {too_large_message(error, source)}") from error
        except (UnidentifiedImageError, OSError) as error:
            raise InvalidInputError(f"{name} is not an image we can read ({error}).") from error
        except (ValueError, UnicodeError) as error:  # PIL: a text chunk over MAX_TEXT_CHUNK, or not UTF-8
            raise InvalidInputError(f"{name}: its text chunks are too large or not valid text ({error}), so no "
                                    "settings can be read from it.") from error

    if STUDIO_CHUNK in text:
        return _studio_settings(text[STUDIO_CHUNK])
    if A1111_CHUNK in text:
        parameters = text[A1111_CHUNK]
        if len(parameters) > MAX_PARAMETERS_CHARS:
            raise InvalidInputError(f"This image's {A1111_CHUNK!r} text is {len(parameters)} characters long; settings "
                                    f"are at most {MAX_PARAMETERS_CHARS}, so it is not read.")
        return parse_parameters(parameters)
    raise InvalidInputError(
        "This image carries no generation settings. Load a PNG downloaded from this app "
        "(or one with A1111 'parameters'); image editors and most uploads strip them."
    )


def _studio_settings(chunk: str) -> dict[str, Any]:
    """The settings record of our JSON chunk; InvalidInputError for a chunk too large, too deep or not ours."""
    damaged = (f"This image's {STUDIO_CHUNK!r} settings are damaged (not the JSON this app writes), so they cannot be "
               "loaded: use the PNG as downloaded from the app, not one re-saved by another program.")
    if len(chunk) > MAX_SETTINGS_CHARS:
        raise InvalidInputError(f"This image's {STUDIO_CHUNK!r} settings are {len(chunk)} characters long; this app "
                                f"writes at most {MAX_SETTINGS_CHARS}, so they are not read.")
    try:
        stored = json.loads(chunk)
    except (json.JSONDecodeError, RecursionError):  # RecursionError: thousands of nested brackets
        raise InvalidInputError(damaged) from None
    if _depth(stored) > MAX_SETTINGS_DEPTH:
        raise InvalidInputError(f"This image's {STUDIO_CHUNK!r} settings nest deeper than {MAX_SETTINGS_DEPTH} levels; "
                                "this app writes none so deep, so they are not read.")
    if not (isinstance(stored, dict) and stored.get("format") == FORMAT_ID and isinstance(stored.get("settings"), dict)):
        raise InvalidInputError(damaged)
    settings = dict(stored["settings"])
    concepts = settings.get("concepts")
    if concepts is not None and not (isinstance(concepts, list) and all(isinstance(c, dict) for c in concepts)):
        raise InvalidInputError(f"This image's settings list its concepts as {type(concepts).__name__}, not as this "
                                "app writes them (a list of records), so they cannot be loaded.")
    return settings


def _depth(value: Any) -> int:
    """How deeply a JSON value nests (a number or a string: 0). Iterative: a hostile chunk may nest thousands deep."""
    deepest, pending = 0, [(value, 0)]
    while pending:
        item, depth = pending.pop()
        deepest = max(deepest, depth)
        if isinstance(item, dict):
            pending += [(child, depth + 1) for child in item.values()]
        elif isinstance(item, list):
            pending += [(child, depth + 1) for child in item]
    return deepest


def _text_chunks(image: Image.Image) -> dict[str, str]:
    chunks = dict(getattr(image, "text", {}) or {})  # PNG tEXt/iTXt/zTXt
    chunks.update({k: v for k, v in image.info.items() if isinstance(k, str) and isinstance(v, str)})
    return chunks


def spec_fields(settings: dict[str, Any], spec_class: type = GenerateSpec) -> dict[str, Any]:
    """The fields of `spec_class` (a spec dataclass: GenerateSpec, DiffEditSpec, ...) found in a settings dict;
    others such as model or timings are dropped. Values read back from JSON are lists where a spec holds tuples
    (SDEdit's strengths, P2P's word windows): the caller converts them."""
    names = {f.name for f in fields(spec_class)}
    return {name: value for name, value in settings.items() if name in names}
