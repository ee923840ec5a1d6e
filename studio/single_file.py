"""Reading single-file checkpoints in the original (LDM / CompVis) layout: what they are, without their weights.

What a checkpoint is comes from diffusers' `infer_diffusers_model_type` over its key names and shapes
(the weights are not loaded), and which parameterisation it was trained for from its config or
metadata, so `studio.models` can load it offline against a local config folder
(studio/architectures.py). Writing such files is studio/export_single_file.py.
"""

from __future__ import annotations

import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml
from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES, infer_diffusers_model_type
from safetensors import SafetensorError, safe_open

from studio.architectures import Architecture
from studio.errors import ModelLoadError

logger = logging.getLogger(__name__)

# Stability's ModelSpec metadata key (also written by kohya's sd-scripts): "epsilon" or "v"
PREDICTION_METADATA_KEY = "modelspec.prediction_type"
METADATA_TO_PREDICTION = {"epsilon": "epsilon", "v": "v_prediction"}


@dataclass(frozen=True)
class CheckpointHeader:
    """What a checkpoint file says about itself without its weights."""

    model_type: str  # diffusers' infer_diffusers_model_type name ("v1", "v2", "xl_base", "inpainting", ...)
    metadata: dict[str, str]  # safetensors header metadata; empty for .ckpt


def read_pickled_weights(path: Path) -> dict:
    """The (possibly nested) dict of weights of a pickled checkpoint (.ckpt, .pth, .bin, .pt), read with
    `weights_only=True`: PyTorch's restricted unpickler builds tensors, numbers, strings and containers only, so no
    code a file carries runs (a pickle that asks for anything else is refused, never executed). torch.save's zip
    archives are memory-mapped; the legacy format (a bare pickle) cannot be, and is read whole.
    Raises ModelLoadError for a file that is not one."""
    archive = zipfile.is_zipfile(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=archive)
    except pickle.UnpicklingError as error:
        if archive or _starts_as_pickle(path):  # the restricted unpickler met what it does not build: not opened
            raise ModelLoadError(
                f"{path} holds more than weights (a pickle that could run code when read), so it is not loaded: "
                "use the file's .safetensors version."
            ) from error
        raise ModelLoadError(f"{path} is not a readable PyTorch checkpoint; it may be truncated or corrupt.") from error
    except (RuntimeError, OSError, ValueError, EOFError) as error:
        raise ModelLoadError(f"{path} is not a readable PyTorch checkpoint ({error}); it may be truncated or corrupt.") from error
    while isinstance(loaded, dict) and "state_dict" in loaded:  # Lightning checkpoints nest the weights
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict):
        raise ModelLoadError(f"{path} holds a {type(loaded).__name__}, not a state dict of weights.")
    return loaded


def _starts_as_pickle(path: Path) -> bool:
    """Whether a file begins as a pickle of protocol 2 or later does (its PROTO opcode)."""
    with path.open("rb") as handle:
        return handle.read(1) == pickle.PROTO


def read_header(path: Path) -> CheckpointHeader:
    """The model type (from key names and shapes) and metadata of a .safetensors or .ckpt file.

    .safetensors: only the header is read (shapes become meta tensors, so diffusers' type
    heuristics run unchanged). .ckpt is a pickle: it is memory-mapped with `weights_only=True`,
    so it runs no code and reads only the pages the heuristics touch.
    """
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="pt") as handle:
                shapes = {key: torch.empty(handle.get_slice(key).get_shape(), device="meta") for key in handle.keys()}
                metadata = dict(handle.metadata() or {})
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelLoadError(f"{path} is not a readable .safetensors file ({error}); it may be truncated or corrupt.") from error
    else:
        loaded = read_pickled_weights(path)
        shapes, metadata = {key: value for key, value in loaded.items() if isinstance(value, torch.Tensor)}, {}
    if not shapes:
        raise ModelLoadError(f"{path} holds no tensors; it is not a model checkpoint.")
    try:
        model_type = infer_diffusers_model_type(shapes)
    except (KeyError, IndexError, AttributeError) as error:  # heuristics that index keys absent here
        raise ModelLoadError(f"{path} is not a Stable Diffusion checkpoint: its weights match no known layout.") from error
    # infer_diffusers_model_type answers "v1" for anything it does not recognise: insist on its marker
    if model_type == "v1" and CHECKPOINT_KEY_NAMES["v1"] not in shapes:
        raise ModelLoadError(
            f"{path} is not a Stable Diffusion checkpoint in the original layout: it lacks the UNet weights "
            f"(e.g. {CHECKPOINT_KEY_NAMES['v1']}). A diffusers folder loads as a folder."
        )
    return CheckpointHeader(model_type=model_type, metadata=metadata)


def resolve_prediction_type(path: Path, header: CheckpointHeader, arch: Architecture) -> str:
    """The parameterisation a checkpoint was trained for ("epsilon" or "v_prediction").

    Weights cannot tell: SD 2.x exists as v-prediction (2.0/2.1 at 768) and as epsilon (2.x-base at
    512) with identical shapes. In order of trust:
    1. the original config beside the file (`<name>.yaml`, the LDM / AUTOMATIC1111 convention):
       `model.params.parameterization: "v"` means v-prediction, its absence epsilon (LDM's default);
    2. the safetensors metadata `modelspec.prediction_type` ("epsilon" / "v"), which
       `studio.export_single_file.save_single_file` writes;
    3. the architecture's published default (SD 1.x epsilon; SD 2.x v-prediction, diffusers' own
       choice for "v2") -- logged as a warning for SD 2.x, where it may be wrong.
    """
    sidecar = path.with_suffix(".yaml")
    if sidecar.is_file():
        try:
            params = (yaml.safe_load(sidecar.read_text()) or {}).get("model", {}).get("params", {})
            return "v_prediction" if params.get("parameterization") == "v" else "epsilon"
        except (yaml.YAMLError, AttributeError, OSError) as error:  # AttributeError: not a mapping
            raise ModelLoadError(f"Could not read the model config {sidecar}: {error}") from error
    declared = header.metadata.get(PREDICTION_METADATA_KEY)
    if declared is not None:
        if declared not in METADATA_TO_PREDICTION:
            raise ModelLoadError(
                f"{path} declares {PREDICTION_METADATA_KEY}={declared!r}; expected one of {sorted(METADATA_TO_PREDICTION)}."
            )
        return METADATA_TO_PREDICTION[declared]
    default = arch.scheduler.get("prediction_type", "epsilon")
    if header.model_type == "v2":
        logger.warning(
            "%s does not say its prediction type; assuming %s (SD 2.0/2.1 at 768). For an epsilon model "
            "(SD 2.x-base, 512) put its original config beside it as %s (or just `model: {params: "
            "{parameterization: eps}}`).",
            path, default, sidecar.name,
        )
    return default
