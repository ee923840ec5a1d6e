"""The only place that loads weights.

A model source is one of: None (the embedded shapes model), a local diffusers folder, a single `.safetensors`/`.ckpt` checkpoint, or a hub id (only
where the network allows). Whatever the source, the result is a `LoadedModel`: the SD-format
components resident on one device, plus the facts the engine needs (native size, size multiple,
prediction type). Device policy: CUDA with fp16 where present, else CPU fp32.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, StableDiffusionPipeline, StableDiffusionXLPipeline, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextModel, PreTrainedTokenizerBase

from studio import single_file
from studio.architectures import BY_CHECKPOINT_TYPE, config_folder
from studio.classifier import NoisyClassifier
from studio.errors import ModelLoadError
from studio.shapes.architecture import TINY, make_pipeline

if TYPE_CHECKING:
    from studio.structure.adapters import ControlModel, ImagePromptAdapter

REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_MODEL_DIR = REPO_ROOT / "assets" / "models" / "shapes-sd"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, nothing path-like
# Errors a loader raises for a source that is wrong rather than for a bug of ours.
LOAD_FAILURES = (OSError, ValueError, KeyError, TypeError, RuntimeError, ImportError)
# model_index.json class names whose components are SD 1.x/2.x or SDXL text-to-image (4-channel UNet)
_SD_PIPELINES = {"StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline"}
_SDXL_PIPELINES = {"StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline"}
# We generate, we do not classify: SD folders may list a safety checker we neither load nor run.
_NO_SAFETY = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}


@dataclass
class LoadedModel:
    """SD-format components resident on `device`; the engine never reloads them."""

    name: str
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: PreTrainedTokenizerBase
    scheduler_config: dict[str, Any]  # every sampler is built fresh from this per job
    device: torch.device
    dtype: torch.dtype
    # Noisy-latent classifier of a model folder's `classifier/` subfolder with its targets, used for
    # classifier guidance; None when the model has none. Kept in float32: it is small and needs grads.
    classifier: NoisyClassifier | None = None
    # SDXL's second text encoder (CLIPTextModelWithProjection) and its tokenizer; None for SD 1.x/2.x
    text_encoder_2: nn.Module | None = None
    tokenizer_2: PreTrainedTokenizerBase | None = None
    zeros_for_empty_negative: bool = False  # SDXL: an empty negative prompt is an all-zero embedding
    # Structure control (studio.structure.adapters): ControlNets and T2I-Adapters by name, and the IP-Adapter;
    # checked against this model and resident with it (device, dtype, eval, no grad)
    controls: dict[str, ControlModel] = field(default_factory=dict)
    image_prompt: ImagePromptAdapter | None = None

    @property
    def uses_added_conditions(self) -> bool:
        """SDXL's UNet also takes the pooled text embedding and size/crop ids ("text_time")."""
        return self.unet.config.get("addition_embed_type") == "text_time"

    @property
    def size_multiple(self) -> int:
        """Pixels per latent cell: width and height must be multiples of it."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def native_size(self) -> int:
        return self.unet.config.sample_size * self.size_multiple

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")


def decode_latents(vae: AutoencoderKL, latents: torch.Tensor) -> np.ndarray:
    """Scaled latents (B, 4, h, w) -> (B, H, W, 3) float32 pixels in [0, 1], exactly as
    StableDiffusionPipeline decodes and post-processes them."""
    latents = latents.to(vae.dtype)  # SDXL's VAE stays in fp32 beside an fp16 UNet (see load_model)
    image = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    image = (image / 2 + 0.5).clamp(0, 1)
    return image.cpu().permute(0, 2, 3, 1).float().numpy()


def choose_device(device: str | None, dtype: torch.dtype | None) -> tuple[torch.device, torch.dtype]:
    """CUDA with fp16 where present, else CPU fp32; an explicit device or dtype wins."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("A CUDA device was requested but none is available; use --device cpu.")
    if dtype is None:
        dtype = torch.float16 if resolved.type == "cuda" else torch.float32
    return resolved, dtype


def tiny_random_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """A randomly initialised pipeline with the embedded model's structure at a fraction of its
    width (studio.shapes.architecture.TINY): native size 128, cross-attention at 16x16 and 8x8,
    the shapes tokenizer, v-prediction with zero terminal SNR. Small enough for CPU tests."""
    torch.manual_seed(seed)
    return make_pipeline(TINY)


def load_model(source: str | None = None, device: str | None = None, dtype: torch.dtype | None = None,
                  offload: bool = False, compile_unet: bool = False, controls: Sequence[str | Path] = (),
                  ip_adapter: str | Path | None = None, image_encoder: str | Path | None = None) -> LoadedModel:
    """Load `source` once and move its components to the device; raises ModelLoadError.

    controls: ControlNet / T2I-Adapter folders or ControlNet files, and ip_adapter (with image_encoder, else the
    `image_encoder/` beside it): structure control for this model (studio.structure.adapters), see attach_structure.

    offload: keep the text encoders and the UNet in CPU memory, each on the GPU only while it runs
    (for GPUs too small for the whole model; see offload_to_cpu). compile_unet: torch.compile the UNet's
    forward (the first job at each size compiles; attention controllers swap processors, which recompiles).

    Weights load in their stored precision and are cast afterwards (only when the dtype differs), so
    one code path serves every source and diffusers' `dtype`/`torch_dtype` rename does not matter.
    """
    resolved_device, resolved_dtype = choose_device(device, dtype)
    if offload and resolved_device.type != "cuda":
        raise ModelLoadError("CPU offload moves components to a GPU as they run: it needs a CUDA device.")
    pipeline, name = _open_source(source)
    classifier = _open_classifier(source, resolved_device)
    text_encoder_2 = getattr(pipeline, "text_encoder_2", None)
    offloaded = [pipeline.text_encoder, text_encoder_2, pipeline.unet] if offload else []
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder, text_encoder_2):
        if module is None:
            continue
        if not any(module is m for m in offloaded):  # offloaded modules wait in CPU memory until they run
            module.to(device=resolved_device)
        # SDXL's VAE overflows in fp16: StableDiffusionXLPipeline decodes it in fp32 (force_upcast), and so do we.
        # StableDiffusionPipeline never reads force_upcast (true by default, so SD 1.x/2.x VAEs carry it too) and
        # decodes in the model's dtype: doing the same keeps our pictures and costs those of the pipeline.
        keep_float32 = module is pipeline.vae and text_encoder_2 is not None and module.config.get("force_upcast", False)
        if module.dtype != resolved_dtype and not keep_float32:
            module.to(dtype=resolved_dtype)
        module.eval().requires_grad_(False)
    if offload:
        offload_to_cpu(offloaded, resolved_device)
    if compile_unet:
        pipeline.unet.compile()
    model = LoadedModel(
        name=name,
        unet=pipeline.unet,
        vae=pipeline.vae,
        text_encoder=pipeline.text_encoder,
        tokenizer=pipeline.tokenizer,
        scheduler_config=dict(pipeline.scheduler.config),
        device=resolved_device,
        dtype=resolved_dtype,
        classifier=classifier,
        text_encoder_2=text_encoder_2,
        tokenizer_2=getattr(pipeline, "tokenizer_2", None),
        zeros_for_empty_negative=bool(pipeline.config.get("force_zeros_for_empty_prompt", False)),
    )
    attach_structure(model, embedded=source is None, controls=controls, ip_adapter=ip_adapter, image_encoder=image_encoder)
    return model


def attach_structure(model: LoadedModel, embedded: bool, controls: Sequence[str | Path] = (),
                     ip_adapter: str | Path | None = None, image_encoder: str | Path | None = None) -> None:
    """Load the control models and the IP-Adapter onto `model`, each checked against it (ModelLoadError naming both
    when one does not fit). The embedded model starts with its shipped ones; a given control of the same name, or
    a given IP-Adapter, replaces the shipped one. Two given controls of one name are refused: each needs its own."""
    from studio.structure.adapters import embedded_controls, load_control, load_ip_adapter

    if embedded:
        model.controls, model.image_prompt = embedded_controls(model)
    given: set[str] = set()
    for path in controls:
        control = load_control(path, model)
        if control.name in given:
            raise ModelLoadError(
                f"Two controls are named {control.name!r} ({path} and one before it): rename one folder or file.")
        given.add(control.name)
        model.controls[control.name] = control
    if ip_adapter is not None:
        model.image_prompt = load_ip_adapter(ip_adapter, model, image_encoder)
    elif image_encoder is not None:
        raise ModelLoadError("An image encoder was given without an IP-Adapter: give the IP-Adapter file too (--ip-adapter FILE).")


def offload_to_cpu(modules: list[nn.Module | None], device: torch.device) -> None:
    """Model-level CPU offload through accelerate's hooks (those of diffusers' enable_model_cpu_offload): each
    module moves to `device` when its forward runs and evicts the one before it, in a ring, so the text encoders
    and the UNet never share the GPU. Unlike diffusers' chain the VAE is not in the ring and stays resident: it is
    small, and streamed previews decode between UNet steps, which would otherwise move the UNet out and back."""
    from accelerate import cpu_offload_with_hook

    hooks = []
    for module in (m for m in modules if m is not None):
        hooks.append(cpu_offload_with_hook(module, device, prev_module_hook=hooks[-1] if hooks else None)[1])
    hooks[0].hook.prev_module_hook = hooks[-1]  # close the ring: a new job's prompt encoding evicts the UNet


def _open_classifier(source: str | None, device: torch.device) -> NoisyClassifier | None:
    """The `classifier/` beside a diffusers folder's components (config.json + model.safetensors), if any, on
    `device`. The shapes world's is the only kind there is: its loader reads every such folder."""
    folder = EMBEDDED_MODEL_DIR if source is None else Path(source).expanduser()
    folder = folder / "classifier"
    if not (folder / "config.json").is_file():
        return None
    from studio.shapes import classifier as latent_classifier

    try:
        network = latent_classifier.load(folder)
    except LOAD_FAILURES as error:
        raise ModelLoadError(
            f"Could not load the classifier in {folder}: {error}. Remove the folder to use the model without "
            "classifier guidance."
        ) from error
    network.to(device=device).eval().requires_grad_(False)
    return latent_classifier.noisy_classifier(network)


def _open_source(source: str | None) -> tuple[StableDiffusionPipeline, str]:
    if source is None:
        return _open_embedded(), EMBEDDED_MODEL_DIR.name
    path = Path(source).expanduser()
    if path.is_dir():
        return open_folder(path), path.name
    if path.is_file():
        if path.suffix not in SINGLE_FILE_SUFFIXES:
            raise ModelLoadError(
                f"{source} is a file but not a checkpoint: give a .safetensors or .ckpt file, or a diffusers folder."
            )
        return _from_single_file(path), path.stem
    if HUB_ID.match(source):
        return _from_hub(source), source
    raise ModelLoadError(
        f"Model path {source} does not exist. Give an existing diffusers folder, a .safetensors/.ckpt file, "
        "or a hub id like 'owner/name'; leave it empty for the embedded model."
    )


def _open_embedded() -> StableDiffusionPipeline:
    """The embedded shapes model; a missing or broken copy is an error, never a silent stand-in (random
    weights would draw noise as if nothing were wrong)."""
    restore = (
        "Restore it with `git checkout -- assets/models/shapes-sd` in the repository, retrain it "
        "with `bash scripts/train_shapes_gpu.sh runs/shapes-gpu assets/models/shapes-sd` (one CUDA GPU, minutes), "
        "or pass another model (--model, a diffusers folder, .safetensors file or hub id)."
    )
    if not (EMBEDDED_MODEL_DIR / "model_index.json").is_file():
        raise ModelLoadError(f"The embedded model is missing: {EMBEDDED_MODEL_DIR} has no model_index.json. {restore}")
    try:
        return open_folder(EMBEDDED_MODEL_DIR)
    except ModelLoadError as error:
        raise ModelLoadError(f"The embedded model is damaged: {error} {restore}") from error


def open_folder(path: Path) -> StableDiffusionPipeline:
    """A diffusers SD 1.x/2.x or SDXL folder, offline, without a safety checker."""
    if not (path / "model_index.json").is_file():
        raise ModelLoadError(
            f"{path} is not a diffusers model folder (it has no model_index.json). "
            "Point at the folder that contains model_index.json, unet/, vae/, text_encoder/ and tokenizer/."
        )
    pipeline_class = _pipeline_class(path)
    try:
        return pipeline_class.from_pretrained(path, local_files_only=True, **_NO_SAFETY)
    except LOAD_FAILURES as error:
        raise ModelLoadError(f"Could not load the diffusers folder {path}: {error}") from error


def _pipeline_class(folder: Path) -> type[DiffusionPipeline]:
    """SD 1.x/2.x or SDXL, as the folder's model_index.json names it; other pipelines are refused."""
    try:
        name = json.loads((folder / "model_index.json").read_text()).get("_class_name", "")
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"Could not read {folder / 'model_index.json'}: {error}") from error
    if name in _SD_PIPELINES:
        return StableDiffusionPipeline
    if name in _SDXL_PIPELINES:
        return StableDiffusionXLPipeline
    raise ModelLoadError(
        f"{folder} holds a {name or 'unnamed'} model; this studio runs Stable Diffusion 1.x, 2.x and XL text-to-image models."
    )


def _from_single_file(path: Path) -> DiffusionPipeline:
    """An original-layout checkpoint, offline: its type comes from its key names and shapes, its
    configs from the matching published architecture written to a local folder (diffusers would
    fetch them from the hub), its prediction type from `single_file.resolve_prediction_type`."""
    header = single_file.read_header(path)
    arch = BY_CHECKPOINT_TYPE.get(header.model_type)
    if arch is None:
        supported = ", ".join(f"{name} ({known.name})" for name, known in BY_CHECKPOINT_TYPE.items())
        raise ModelLoadError(
            f"{path.name} is a {header.model_type!r} checkpoint; single files of these types load: {supported}. "
            "Other models (inpainting, SD 3, refiners, ...) are not supported."
        )
    prediction_type = single_file.resolve_prediction_type(path, header, arch)
    scheduler = arch.scheduler_class.from_config({**arch.scheduler, "prediction_type": prediction_type})
    extra = _NO_SAFETY if arch.pipeline_class is StableDiffusionPipeline else {}
    try:
        pipeline = arch.pipeline_class.from_single_file(
            str(path), config=str(config_folder(arch)), local_files_only=True, scheduler=scheduler, **extra)
    except LOAD_FAILURES as error:
        raise ModelLoadError(f"Could not load the {arch.name} checkpoint {path}: {error}") from error
    if header.model_type == "v2" and prediction_type == "epsilon":
        # the epsilon SD 2.x models are the "-base" ones, trained at 512 pixels (64 latents), not 768
        pipeline.unet.register_to_config(sample_size=64)
    return pipeline


def _from_hub(model_id: str) -> StableDiffusionPipeline:
    try:
        return StableDiffusionPipeline.from_pretrained(model_id, **_NO_SAFETY)
    except LOAD_FAILURES as error:
        raise ModelLoadError(
            f"Could not load {model_id!r} from the hub: {error}. Without network access, download the model "
            "elsewhere and pass its local folder instead."
        ) from error

