"""Time the linear segmentation probe (scripts/evaluate.py --label_format cholecseg8k, and pretrain.py's probe):
the frozen encoder on N frames, the L-BFGS fit on half of them, the prediction at the masks' size, the scores.

    python scripts/benchmark_probe.py --model mae_vit_base_patch16 --img_size 224 --frames 64

Prints the machine (CPU model and bf16/AMX flags, or the GPU), one line of seconds per stage, and writes JSON.
"""
from __future__ import annotations

import argparse
import json

import torch
from accelerate import Accelerator

from endovit.cli import OneLineParser, exit_script
from endovit.hardware import cpu_name
from endovit.models.mae import MODEL_ARCHS, create_mae
from endovit.probes.segmentation import time_segmentation_probe


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    parser.add_argument("--model", default="mae_vit_base_patch16", choices=list(MODEL_ARCHS))
    parser.add_argument("--img_size", type=int, default=224)
    parser.add_argument("--frames", type=int, default=64, help="probe frames: half fit the probe, half are scored")
    parser.add_argument("--mask_size", type=int, nargs=2, default=[480, 854], metavar=("H", "W"),
                        help="the masks' size (CholecSeg8k: 480 854)")
    parser.add_argument("--classes", type=int, default=8, choices=[8, 13])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--output", default="benchmark_probe.json")
    args = parser.parse_args(argv)
    if args.frames < 2:
        parser.error("--frames must be at least 2 (half fit, half are scored)")
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    device = accelerator.device
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    mae = create_mae(args.model, img_size=(args.img_size, args.img_size)).to(device)
    seconds = time_segmentation_probe(mae, accelerator, frames=args.frames, mask_size=args.mask_size,
                                      classes=args.classes, batch_size=args.batch_size)
    print(f"machine: {machine}; torch threads {torch.get_num_threads()}")
    print(f"{args.model} at {args.img_size}, {args.frames} frames, masks {args.mask_size[0]}x{args.mask_size[1]}: "
          + ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in seconds.items()))
    with open(args.output, "w") as f:
        json.dump({"machine": machine, "threads": torch.get_num_threads(), **vars(args), **seconds}, f, indent=1)
    return 0


if __name__ == "__main__":
    exit_script(main())
