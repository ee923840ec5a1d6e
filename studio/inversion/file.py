"""Inversions on disk: one `.inversion.safetensors` file that runs no code when read.

    save_inversion(result.inversion, "runs/inv/null_text.inversion.safetensors")
    inversion = load_inversion("runs/inv/null_text.inversion.safetensors")   # an Inversion, ready to edit

The tensors (trajectory, null-text embeddings, EDICT's coupled states, edit-friendly DDPM inversion's corrections,
the prepared image as uint8 pixels, the control maps and reference image of the structure it was made under) are safetensors entries; every other field of `Inversion` is JSON in the same file's header metadata.
One file rather than tensors plus a JSON sidecar: the user shares and passes one path, and the two halves
cannot be separated or mismatched. Pickles (`torch.save`, the old `.inversion.pt`) are refused: reading one
can run any code it carries. A field added since a file was written (`corrections`) takes its default when read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from studio.errors import InvalidInputError
from studio.generation import PreparedStructure
from studio.inversion.result import METHODS, Inversion
from studio.structure.spec import StructureSpec

INVERSION_SUFFIX = ".inversion.safetensors"
FORMAT_KEY = "studio.inversion"  # header metadata: the JSON record of the non-tensor fields
FORMAT_VERSION = 1
# How a pickle begins: torch.save's zip archive, or a bare pickle's PROTO opcode (protocol 2 and later)
PICKLE_MAGIC = (b"PK\x03\x04", b"\x80")


def save_inversion(inversion: Inversion, path: str | Path) -> Path:
    """Write `inversion` as one safetensors file (tensors as entries, the rest as JSON metadata); returns the path."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    record: dict[str, Any] = {}
    for field in fields(Inversion):
        value = getattr(inversion, field.name)
        if isinstance(value, torch.Tensor):
            tensors[field.name] = value
            record[field.name] = {"tensor": field.name}
        elif isinstance(value, list) and value and all(isinstance(item, torch.Tensor) for item in value):
            names = [f"{field.name}.{index}" for index in range(len(value))]
            tensors.update(zip(names, value))
            record[field.name] = {"tensors": names}
        elif isinstance(value, Image.Image):
            tensors[field.name] = torch.from_numpy(np.asarray(value.convert("RGB")).copy())  # (H, W, 3) uint8
            record[field.name] = {"image": field.name}
        elif isinstance(value, torch.dtype):
            record[field.name] = {"dtype": str(value).removeprefix("torch.")}
        elif isinstance(value, PreparedStructure):
            images = {f"{field.name}.map.{index}": image for index, image in enumerate(value.maps)}  # (H, W, 3) uint8
            if value.reference is not None:
                images[f"{field.name}.reference"] = value.reference
            tensors.update((name, torch.from_numpy(np.array(image, dtype=np.uint8))) for name, image in images.items())
            record[field.name] = {"structure": {
                "spec": asdict(value.spec), "maps": [name for name in images if ".map." in name],
                "reference": f"{field.name}.reference" if value.reference is not None else None,
            }}
        else:
            record[field.name] = {"value": value}
    # safetensors refuses tensors that share storage (x_0 is both `latents` and the trajectory's last state)
    tensors = {name: tensor.detach().cpu().contiguous().clone() for name, tensor in tensors.items()}
    header = {"version": FORMAT_VERSION, "fields": record}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata={FORMAT_KEY: json.dumps(header, default=_plain_number)})
    return path


def load_inversion(path: str | Path, device: str | torch.device = "cpu") -> Inversion:
    """The Inversion in a file written by `save_inversion`, its tensors on `device`; raises InvalidInputError
    for a pickle (refused unread), an unreadable file or one that is not an inversion."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            header = json.loads((handle.metadata() or {})[FORMAT_KEY])
            record = header["fields"]
            values = {name: _decode(handle, spec) for name, spec in record.items()}
    except (SafetensorError, OSError) as error:
        _refuse_pickle(path)  # say why an old inversion fails to open (it was never unpickled)
        raise InvalidInputError(f"Could not read the inversion {path}: {error}") from error
    except (KeyError, TypeError, ValueError) as error:  # no or malformed record: another safetensors file
        raise InvalidInputError(
            f"{path} is not an inversion written by `studio invert` (its header lacks a valid {FORMAT_KEY!r} record)."
        ) from error
    if header.get("version") != FORMAT_VERSION:
        raise InvalidInputError(
            f"{path} is an inversion file of format version {header.get('version')}; this studio reads version "
            f"{FORMAT_VERSION}. Invert the image again with `studio invert`."
        )
    known = {field.name for field in fields(Inversion)}
    try:
        inversion = Inversion(**{name: value for name, value in values.items() if name in known})
    except TypeError as error:  # a required field is missing
        raise InvalidInputError(f"{path} is an incomplete inversion ({error}); invert the image again.") from error
    if inversion.method not in METHODS:
        raise InvalidInputError(f"{path} holds an inversion by an unknown method {inversion.method!r}.")
    return inversion


def _refuse_pickle(path: Path) -> None:
    """Raise the refusal for a file that safetensors could not open and that begins as a pickle does.
    Asked only after safetensors failed: a valid file's first byte (its header length) may be 0x80 too."""
    try:
        with path.open("rb") as handle:
            start = handle.read(4)
    except OSError:
        return  # unreadable: the caller reports the read error
    if start.startswith(PICKLE_MAGIC):
        raise InvalidInputError(
            f"Could not read the inversion {path}: it is a pickle (such as an `.inversion.pt` of an older "
            "`studio invert`), and reading a pickle can run any code it carries, so it is not opened. "
            f"Invert the image again with `studio invert`: it writes `<method>{INVERSION_SUFFIX}`."
        )


def _decode(handle: safe_open, spec: dict[str, Any]) -> Any:
    """One field of the JSON record, {kind: what}: stored tensor(s), the image's pixels, a dtype, or a JSON value."""
    (kind, what), = spec.items()
    if kind == "tensor":
        return handle.get_tensor(what)
    if kind == "tensors":
        return [handle.get_tensor(name) for name in what]
    if kind == "image":
        return Image.fromarray(handle.get_tensor(what).cpu().numpy())  # (H, W, 3) uint8 -> RGB
    if kind == "dtype":
        dtype = getattr(torch, what, None)
        if not isinstance(dtype, torch.dtype):
            raise ValueError(f"unknown dtype {what!r}")
        return dtype
    if kind == "structure":  # checked against the loaded controls when an edit uses it (inversion.edit_structure)
        maps = [handle.get_tensor(name).cpu().numpy() for name in what["maps"]]
        reference = None if what["reference"] is None else handle.get_tensor(what["reference"]).cpu().numpy()
        return PreparedStructure(StructureSpec(**what["spec"]), maps, reference)
    if kind == "value":
        return what
    raise ValueError(f"unknown field kind {kind!r}")


def _plain_number(value: Any) -> Any:
    """numpy scalars in metrics (e.g. a PSNR as np.float32) as Python numbers; anything else is a bug here."""
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable in an inversion record")
