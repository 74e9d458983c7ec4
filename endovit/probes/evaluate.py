"""Probe several weights on the same labelled frames (``scripts/evaluate.py``): which weights, with which
architecture, size and normalisation; the results as a table, a JSON file and TensorBoard scalars.

``weights`` entries: an export folder (``model.safetensors`` or ``encoder.safetensors``, with
``endovit_config.json``), a training checkpoint folder ``step_N``, a ``.safetensors`` or official MAE ``.pth`` file
or its URL, ``imagenet_mae`` (the ImageNet MAE weights EndoViT starts from: ``--recipe endovit_seg``'s
``init_from``), or ``random`` / ``random:N`` (the architecture at random init with seed N, so several seeds show how
much the baseline itself varies).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from pathlib import Path

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch.utils.tensorboard import SummaryWriter

from endovit.checkpoint import CHECKPOINT_PREFIX
from endovit.data.loader import build_val_loader
from endovit.errors import CheckpointError, RecipeError, did_you_mean
from endovit.io import atomic_write_json, is_url, redact_url
from endovit.models.mae import MODEL_ARCHS, create_mae
from endovit.probes.features import features_from_loader, load_encoder
from endovit.probes.metrics import format_table
from endovit.probes.probe import ProbeSettings, flatten, load_probe_data, probe_metrics
from endovit.recipes import ENDOVIT_MEAN, ENDOVIT_STD, shipped_recipe

__all__ = ["IMAGENET_MAE", "weights_source", "init_seed", "evaluate_weights", "write_report"]

IMAGENET_MAE = "imagenet_mae"
RANDOM = re.compile(r"random(?::(\d+))?")


def weights_source(weights: str) -> tuple[Path | str | None, dict, int]:
    """The file or URL to load (None for random init), the ``endovit_config.json`` beside it (for a URL: the
    architecture when known), and its training step."""
    if RANDOM.fullmatch(weights):
        return None, {}, 0
    if weights == IMAGENET_MAE:
        seg = shipped_recipe("endovit_seg")
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


def evaluate_weights(weights: list[str], settings: ProbeSettings, accelerator, *, model: str = "",
                     img_size: list[int] | None = None, mean: list[float] | None = None,
                     std: list[float] | None = None, seed: int = 0, num_workers: int = 2) -> dict:
    """Probe every ``weights`` entry on the same frames; returns what the JSON records. Architecture and size
    default to the first ``endovit_config.json`` found beside the weights; each weights' frames are normalised
    with its own mean/std (ImageNet's for ``imagenet_mae``; else the first config's or EndoViT's) unless
    ``mean``/``std`` set one for all."""
    settings = settings.validate()
    sources = {w: weights_source(w) for w in weights}
    config = next((info for _, info, _ in sources.values() if info), {})
    model = model or config.get("model", "")
    if model not in MODEL_ARCHS:
        raise RecipeError(f"--model {model!r}: choose one of {', '.join(MODEL_ARCHS)}{did_you_mean(model, MODEL_ARCHS)}"
                          " (no endovit_config.json beside the weights says which)")
    img_size = img_size or config.get("img_size") or [224]
    img_size = [img_size[0], img_size[-1]]
    patch = MODEL_ARCHS[model]["patch_size"]
    if any(side <= 0 or side % patch for side in img_size):
        raise RecipeError(f"--img_size {img_size[0]} {img_size[1]}: each side must be divisible by the patch size "
                          f"{patch} of {model}")
    default_mean, default_std = config.get("mean", ENDOVIT_MEAN), config.get("std", ENDOVIT_STD)

    data = load_probe_data(settings)
    loader = accelerator.prepare(build_val_loader(data.frames, img_size, settings.batch_size, num_workers))
    accelerator.print(f"probe: {data.summary()}; {model} at {img_size[0]}x{img_size[1]}, "
                      f"precision {accelerator.mixed_precision}")
    results = {}
    for name, (path, info, step) in sources.items():
        frame_mean, frame_std = mean or info.get("mean", default_mean), std or info.get("std", default_std)
        torch.manual_seed(init_seed(name, seed))
        mae = create_mae(model, img_size=tuple(img_size))
        if path is not None:
            with accelerator.local_main_process_first():  # a URL downloads once per machine
                load_encoder(mae, path)
        mae.to(accelerator.device).eval()
        features = features_from_loader(mae, loader, accelerator, mean=frame_mean, std=frame_std,
                                        dense=data.labels.dense)
        results[redact_url(name)] = {"weights": redact_url(str(path or name)), "step": step, "mean": frame_mean,
                                     "std": frame_std, "metrics": probe_metrics(features, data, settings)}
    return {"model": model, "img_size": img_size, "classes": data.labels.names,
            "frames": {"train": data.num_train, "test": len(data.frames) - data.num_train}, "videos": data.videos,
            "settings": dataclasses.asdict(settings), "results": results}


def _finite(value):
    return value if not isinstance(value, float) or math.isfinite(value) else None


def write_report(summary: dict, output: Path, logging_dir: Path) -> str:
    """Write the JSON file (non-finite metrics as null) and the TensorBoard scalars (one run per weights);
    returns the table."""
    results = summary["results"]
    table = format_table({name: r["metrics"] for name, r in results.items()})
    for name, r in results.items():
        with SummaryWriter(str(logging_dir / re.sub(r"[^\w.-]+", "_", name).strip("_"))) as writer:
            for tag, value in flatten(r["metrics"]).items():
                writer.add_scalar(tag, value, r["step"])
    for r in results.values():
        r["metrics"] = {p: {m: _finite(v) for m, v in ms.items()} for p, ms in r["metrics"].items()}
    atomic_write_json(output, summary)
    return table
