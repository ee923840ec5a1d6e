"""The model options the app and the `studio` command share (--model, --device, --offload, --compile, --max-job-cost
and the structure controls --controlnet, --t2i-adapter, --ip-adapter, --image-encoder)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from studio.engine import Engine


def add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="diffusers folder, .safetensors file or hub id (default: embedded model)")
    parser.add_argument("--device", default=None, choices=["cuda", "cpu"], help="default: CUDA when available, else CPU")
    parser.add_argument("--offload", action="store_true",
                        help="keep the text encoders and the UNet in CPU memory, each on the GPU only while it runs "
                             "(GPUs too small for the whole model; slower)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the UNet (the first job at each size compiles, then runs faster)")
    parser.add_argument("--max-job-cost", type=float, default=None, metavar="UNITS",
                        help="refuse a job costing more than this many standard images (one 512x512 image in 50 "
                             "steps with guidance is 1; studio.costs); default: no cap")
    structure = parser.add_argument_group("structure control (the embedded model loads its own controls)")
    structure.add_argument("--controlnet", action="append", default=[], metavar="PATH",
                           help="a ControlNet folder (diffusers) or single file (original layout); repeatable")
    structure.add_argument("--t2i-adapter", action="append", default=[], metavar="PATH",
                           help="a T2I-Adapter folder (diffusers); repeatable")
    structure.add_argument("--ip-adapter", default=None, metavar="FILE",
                           help="an IP-Adapter .safetensors or .bin file (image_proj.* and ip_adapter.* weights)")
    structure.add_argument("--image-encoder", default=None, metavar="DIR",
                           help="the IP-Adapter's CLIP image encoder folder (default: image_encoder/ beside the file)")


def open_engine(args: argparse.Namespace) -> Engine:
    """The Engine these options describe; raises ModelLoadError. Imports torch, so only when called."""
    from studio.engine import Engine
    from studio.errors import ModelLoadError
    from studio.structure.adapters import control_kind

    flags = {"controlnet": "--controlnet", "t2i_adapter": "--t2i-adapter"}
    for kind, paths in (("controlnet", args.controlnet), ("t2i_adapter", args.t2i_adapter)):
        for path in paths:  # a missing path is load_control's to report
            found = control_kind(path) if Path(path).expanduser().exists() else kind
            if found != kind:
                raise ModelLoadError(f"{flags[kind]} {path} is a {found.replace('_', '-')}: pass it with {flags[found]}.")
    return Engine(args.model, device=args.device, offload=args.offload, compile_unet=args.compile,
                  controls=[*args.controlnet, *args.t2i_adapter], ip_adapter=args.ip_adapter,
                  image_encoder=args.image_encoder, max_job_cost=args.max_job_cost)
