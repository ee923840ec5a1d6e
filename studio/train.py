"""Train a structure control for the embedded model: `studio train controlnet --control layout ...`.

    python -m studio.train controlnet --control layout|outline
    python -m studio.train t2i-adapter --control outline
    python -m studio.train ip-adapter

The same module is what `accelerate launch --num_processes N -m studio.train controlnet ...` runs: HF accelerate
spreads the batches over N processes (GPUs, or CPU processes with --cpu), with mixed precision, gradient
accumulation, checkpoints in --work (`--resume` continues from the latest) and a progress bar on the main process.
The recipes: scripts/train_structure_cpu.sh (this 2-core machine) and scripts/train_structure_gpu.sh.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from studio.models import EMBEDDED_MODEL_DIR
from studio.structure.maps import CONTROL_KINDS
from studio.structure.training import METHODS, ChannelDropout, TrainConfig, train

DEFAULTS = ChannelDropout()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="studio train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("--control", choices=CONTROL_KINDS, default="layout", help="the map the control reads")
    parser.add_argument("--steps", type=int, default=600, help="optimiser steps")
    parser.add_argument("--batch", type=int, default=32, help="per process, per accumulation step")
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate")
    parser.add_argument("--warmup", type=int, default=50, help="linear warm-up steps, then cosine to 10%% of the peak")
    parser.add_argument("--grad-accum", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--mixed-precision", choices=("no", "fp16", "bf16"), default="no")
    parser.add_argument("--work", type=Path, default=Path("runs/structure"), help="data cache and checkpoints")
    parser.add_argument("--out", type=Path, help="where the weights and card go (default: --work/<method>-<control>/model)")
    parser.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --work")
    parser.add_argument("--checkpoint-every", type=int, default=100, help="optimiser steps between checkpoints")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--base", type=Path, default=EMBEDDED_MODEL_DIR, help="the frozen base model's diffusers folder")
    parser.add_argument("--data", type=int, default=4096, help="training scenes rendered and cached")
    parser.add_argument("--eval", type=int, default=32, dest="eval_scenes",
                        help="held-out scenes the finished model is measured on (0: none)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads per process (0: torch's default)")
    parser.add_argument("--text-dropout", type=float, default=DEFAULTS.text)
    parser.add_argument("--control-dropout", type=float, default=DEFAULTS.control)
    parser.add_argument("--image-dropout", type=float, default=DEFAULTS.image)
    parser.add_argument("--high-noise-dropout", type=float, default=None, metavar="P",
                        help="control/image dropout at the last timestep, rising linearly in t (default: constant)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    control = "image" if args.method == "ip-adapter" else args.control
    config = TrainConfig(
        method=args.method, control=control, steps=args.steps, batch=args.batch, lr=args.lr, warmup=args.warmup,
        grad_accum=args.grad_accum, mixed_precision=args.mixed_precision, work=args.work,
        out=args.out, resume=args.resume, seed=args.seed,
        data=args.data, checkpoint_every=args.checkpoint_every, eval_scenes=args.eval_scenes,
        dropout=ChannelDropout(args.text_dropout, args.control_dropout, args.image_dropout, args.high_noise_dropout),
        base=args.base,
    )
    return train(config, recipe="python -m studio.train " + " ".join(argv))


if __name__ == "__main__":
    main()
