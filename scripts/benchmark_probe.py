"""Time the linear segmentation probe (scripts/evaluate.py --label_format cholecseg8k, and pretrain.py's probe):
the frozen encoder on N frames, the L-BFGS fit on half of them, the prediction at the masks' size, the scores.

    python scripts/benchmark_probe.py --model mae_vit_base_patch16 --img_size 224 --frames 64

Prints the machine (CPU model and bf16/AMX flags, or the GPU), one line of seconds per stage, and writes JSON.
"""
from __future__ import annotations

import argparse
import json

import torch

from endovit.benchmark import run_segmentation_probe_benchmark
from endovit.cli import OneLineParser, exit_script
from endovit.hardware import cpu_name
from endovit.models.mae import MODEL_ARCHS


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
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    result = run_segmentation_probe_benchmark(args.model, args.img_size, args.frames, device,
                                              mask_size=args.mask_size, classes=args.classes,
                                              batch_size=args.batch_size)
    seconds = {k: v for k, v in result.items() if k.endswith("_s")}
    print(f"machine: {machine}; torch threads {torch.get_num_threads()}; precision {result['precision']}")
    print(f"{args.model} at {args.img_size}, {args.frames} frames, masks {args.mask_size[0]}x{args.mask_size[1]}: "
          + ", ".join(f"{k.removesuffix('_s')} {v:.2f}s" for k, v in seconds.items()))
    with open(args.output, "w") as f:
        json.dump({"machine": machine, "threads": torch.get_num_threads(), **vars(args), **result}, f, indent=1)
    return 0


if __name__ == "__main__":
    exit_script(main())
