"""The model options the app and the `studio` command share (--model, --device, --offload, --compile)."""

from __future__ import annotations

import argparse
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


def open_engine(args: argparse.Namespace) -> Engine:
    """The Engine these options describe; raises ModelLoadError. Imports torch, so only when called."""
    from studio.engine import Engine

    return Engine(args.model, device=args.device, offload=args.offload, compile_unet=args.compile)
