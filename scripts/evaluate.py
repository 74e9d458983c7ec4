"""Frozen-feature probes of MAE encoders on labelled frames: k-NN and linear probe, split by video.

    accelerate launch --config_file accelerate_configs/cpu.yaml scripts/evaluate.py \
        --weights outputs/demo random --data data/sample/prepared/probe --labels data/sample/probe \
        --label_format cholec80_phase --kind both

``--weights`` takes one or more of: an export folder (``model.safetensors`` or ``encoder.safetensors``, with
``endovit_config.json``), a training checkpoint folder ``step_N``, a ``.safetensors`` or official MAE ``.pth``
file or its https:// or file:// URL (downloaded once into the weights cache; ``#sha256=<hex>`` pins it),
``imagenet_mae`` (the ImageNet MAE weights EndoViT starts from: the ``init_from`` of ``--recipe endovit_seg``), or
``random`` (the architecture at random init, for comparison; ``random:N`` with seed N, so several seeds show how
much the baseline itself varies). Architecture, image size and mean/std default to the first
``endovit_config.json`` found beside the weights; each weights' frames are normalised with the mean/std it was
trained with (its own config; ImageNet's for ``imagenet_mae``; else the first config's or EndoViT's), unless
``--mean`` / ``--std`` set one for all. Prints a table (percent), writes
``--output`` (JSON) and TensorBoard scalars ``probe/<method>_<features>_<metric>`` (one run per weights).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState

from endovit.cli import OneLineParser, add_image_flags, exit_script
from endovit.errors import CheckpointError, DataError, RecipeError, error_line
from endovit.hardware import resolve_mixed_precision
from endovit.models.archs import MODEL_ARCHS
from endovit.probes.evaluate import evaluate_weights, write_report
from endovit.probes.probe import ProbeSettings
from endovit.recipe import Recipe


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                           allow_abbrev=False)
    parser.add_argument("--weights", nargs="+", required=True, help="weights to probe, or 'random' / 'random:SEED'")
    parser.add_argument("--model", default="", help=f"architecture: {', '.join(MODEL_ARCHS)}")
    add_image_flags(parser, "H [W]; default: the weights' config, else 224",
                    "for every weights; default: each one's own config, else the first config's or EndoViT's")
    parser.add_argument("--mixed_precision", default="auto", choices=["auto", "no", "fp16", "bf16"],
                        help="auto: what pretrain.py picks on this machine")
    parser.add_argument("--num_workers", type=int, default=2, help="DataLoader workers per process decoding frames")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random init of 'random'")
    parser.add_argument("--output", default="probe.json", help="JSON file of the results")
    parser.add_argument("--logging_dir", default="", help="TensorBoard folder; default <output folder>/tensorboard")
    docs = {f.name: f.metadata.get("doc") for f in dataclasses.fields(Recipe)}  # pretrain.py's --probe_<name>
    for f in dataclasses.fields(ProbeSettings):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        doc = docs[f"probe_{f.name}"]
        if isinstance(default, list):
            parser.add_argument(f"--{f.name}", nargs="+", default=default, metavar="VIDEO", help=doc)
        else:
            shown = f" (default: {default!r})" if default != "" else ""
            parser.add_argument(f"--{f.name}", type=type(default), default=default, help=doc + shown)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    if output.is_dir():  # found before the features are computed, not after
        print(f"error: --output {output} is a folder; give the JSON file to write, e.g. {output / 'probe.json'}",
              file=sys.stderr)
        return 2
    process = PartialState(cpu=not torch.accelerator.is_available())
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(args.mixed_precision, process.device)[0])
    settings = ProbeSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ProbeSettings)})
    try:
        summary = evaluate_weights(args.weights, settings, accelerator, model=args.model, img_size=args.img_size,
                                   mean=args.mean, std=args.std, seed=args.seed, num_workers=args.num_workers)
    except (RecipeError, DataError, CheckpointError) as err:  # a DataLoader worker's error carries its traceback
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    if accelerator.is_main_process:
        logging_dir = Path(args.logging_dir or output.parent / "tensorboard")
        print(write_report(summary, output, logging_dir))
        print(f"results: {output}\ntensorboard: tensorboard --logdir {logging_dir}")
    return 0


if __name__ == "__main__":
    exit_script(main())
