"""Frozen-feature probes of MAE encoders on labelled frames: k-NN and linear probe, split by video; with
``--label_format cholecseg8k`` (CholecSeg8k's masks) the linear segmentation probe (mIoU).

    accelerate launch --config_file accelerate_configs/cpu.yaml scripts/evaluate.py \
        --weights outputs/demo random --data data/sample/probe --label_format cholec80_phase --kind both

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
import json
import math
import re
import sys
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.tensorboard import SummaryWriter

from endovit.checkpoint import CHECKPOINT_PREFIX
from endovit.cli import OneLineParser, add_image_flags
from endovit.data.loader import build_val_loader
from endovit.errors import CheckpointError, DataError, RecipeError, did_you_mean, error_line
from endovit.hardware import resolve_mixed_precision
from endovit.io import atomic_write_json
from endovit.models.mae import MODEL_ARCHS, create_mae
from endovit.probes.features import features_from_loader, load_encoder
from endovit.probes.metrics import format_table
from endovit.probes.probe import ProbeSettings, flatten, load_probe_data, probe_metrics
from endovit.recipe import ENDOVIT_MEAN, ENDOVIT_STD, Recipe, load_recipe
from endovit.weights import is_url, redact_url

IMAGENET_MAE = "imagenet_mae"
RANDOM = re.compile(r"random(?::(\d+))?")


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


def weights_source(weights: str) -> tuple[Path | str | None, dict, int]:
    """The file or URL to load (None for random init), the ``endovit_config.json`` beside it (for a URL: the
    architecture when known), and its training step."""
    if RANDOM.fullmatch(weights):
        return None, {}, 0
    if weights == IMAGENET_MAE:
        seg = load_recipe("endovit_seg")
        return seg["init_from"], {"model": seg["model"], "mean": list(IMAGENET_DEFAULT_MEAN),
                                  "std": list(IMAGENET_DEFAULT_STD)}, 0
    if is_url(weights):
        return weights, {}, 0
    path = Path(weights)
    if not path.exists():
        raise CheckpointError(f"--weights {weights}: no such file or folder; give a weights file or its URL, a "
                              f"checkpoint or export folder, {IMAGENET_MAE}, random or random:SEED")
    if path.is_dir():
        found = [path / n for n in ("model.safetensors", "encoder.safetensors") if (path / n).is_file()]
        if not found:
            raise CheckpointError(f"--weights {path}: no model.safetensors or encoder.safetensors in this folder")
        path = found[0]
    config = path.parent / "endovit_config.json"
    info = json.loads(config.read_text()) if config.is_file() else {}
    folder = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.parent.name)
    return path, info, int(info.get("step") or (folder.group(1) if folder else 0))


def init_seed(weights: str, default: int) -> int:
    """The seed of ``random:N``; ``default`` for any other weights (plain ``random`` included)."""
    match = RANDOM.fullmatch(weights)
    return int(match.group(1)) if match and match.group(1) else default


def _finite(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


def evaluate(args: argparse.Namespace, accelerator: Accelerator) -> dict:
    """Probe every ``--weights`` on the same frames; returns what the JSON records."""
    settings = ProbeSettings(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ProbeSettings)}).validate()
    sources = {w: weights_source(w) for w in args.weights}
    config = next((info for _, info, _ in sources.values() if info), {})
    model = args.model or config.get("model", "")
    if model not in MODEL_ARCHS:
        raise RecipeError(f"--model {model!r}: choose one of {', '.join(MODEL_ARCHS)}{did_you_mean(model, MODEL_ARCHS)}"
                          " (no endovit_config.json beside the weights says which)")
    img_size = args.img_size or config.get("img_size") or [224]
    img_size = [img_size[0], img_size[-1]]
    patch = MODEL_ARCHS[model]["patch_size"]
    if any(side <= 0 or side % patch for side in img_size):
        raise RecipeError(f"--img_size {img_size[0]} {img_size[1]}: each side must be divisible by the patch size "
                          f"{patch} of {model}")
    default_mean, default_std = config.get("mean", ENDOVIT_MEAN), config.get("std", ENDOVIT_STD)

    data = load_probe_data(settings)
    loader = accelerator.prepare(build_val_loader(data.frames, img_size, settings.batch_size, args.num_workers))
    accelerator.print(f"probe: {data.summary()}; {model} at {img_size[0]}x{img_size[1]}, "
                      f"precision {accelerator.mixed_precision}")
    results = {}
    for name, (path, info, step) in sources.items():
        mean, std = args.mean or info.get("mean", default_mean), args.std or info.get("std", default_std)
        torch.manual_seed(init_seed(name, args.seed))
        mae = create_mae(model, img_size=tuple(img_size))
        if path is not None:
            with accelerator.local_main_process_first():  # a URL downloads once per machine
                load_encoder(mae, path)
        mae.to(accelerator.device).eval()
        features = features_from_loader(mae, loader, accelerator, mean, std, dense=data.labels.dense)
        results[redact_url(name)] = {"weights": redact_url(str(path or name)), "step": step, "mean": mean,
                                     "std": std, "metrics": probe_metrics(features, data, settings)}
    return {"model": model, "img_size": img_size, "classes": data.labels.names,
            "frames": {"train": data.num_train, "test": len(data.frames) - data.num_train}, "videos": data.videos,
            "settings": dataclasses.asdict(settings), "results": results}


def report(summary: dict, output: Path, logging_dir: Path) -> None:
    """Table on stdout, JSON file, TensorBoard scalars."""
    results = summary["results"]
    print(format_table({name: r["metrics"] for name, r in results.items()}))
    for name, r in results.items():
        with SummaryWriter(str(logging_dir / re.sub(r"[^\w.-]+", "_", name).strip("_"))) as writer:
            for tag, value in flatten(r["metrics"]).items():
                writer.add_scalar(tag, value, r["step"])
    for r in results.values():
        r["metrics"] = {p: {m: _finite(v) for m, v in ms.items()} for p, ms in r["metrics"].items()}
    atomic_write_json(output, summary)
    print(f"results: {output}\ntensorboard: tensorboard --logdir {logging_dir}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    output = Path(args.output)
    if output.is_dir():  # found before the features are computed, not after
        print(f"error: --output {output} is a folder; give the JSON file to write, e.g. {output / 'probe.json'}",
              file=sys.stderr)
        return 2
    process = PartialState(cpu=not torch.accelerator.is_available())
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(args.mixed_precision, process.device)[0])
    try:
        summary = evaluate(args, accelerator)
    except (RecipeError, DataError, CheckpointError) as err:  # a DataLoader worker's error carries its traceback
        print(f"error: {error_line(err)}", file=sys.stderr)
        return 2
    if accelerator.is_main_process:
        report(summary, output, Path(args.logging_dir or output.parent / "tensorboard"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
