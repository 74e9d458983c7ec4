"""Any weights (a checkpoint, an export, an official ``.pth``, a URL) -> an export folder for timm and transformers.

The model, size and normalisation come from the flags given, else from the run the weights came from (the nearest
``endovit_config.json`` or ``config.yaml`` beside or up to three folders above them), else from the weights
themselves (architecture by shape, a square size from the position embedding); ``scripts/export.py`` is the door.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from endovit.errors import EndovitError, did_you_mean
from endovit.io import is_url, redact_url
from endovit.models.archs import MODEL_ARCHS, is_decoder_key
from endovit.models.mae import create_mae
from endovit.weights import architecture_of, export_info, export_model, export_state_dict, fit_state_dict, read_weights

__all__ = ["ExportError", "Exported", "export_weights", "find_run_settings", "RUN_FILES"]

RUN_FILES = ("endovit_config.json", "config.yaml")
ENDOVIT_STATS = "EndoViT's --mean 0.3464,0.2280,0.2228 --std 0.2520,0.2128,0.2093"
IMAGENET_STATS = "ImageNet's --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225"
RUN_LOCK = ".endovit.lock"  # what a training run's output folder holds while (and after) it trains


class ExportError(EndovitError):
    """A source or flag that cannot give an export."""


@dataclass(frozen=True)
class Exported:
    """What ``export_weights`` wrote: the folder, whether the decoder is in it, and the settings it recorded."""

    folder: Path
    full: bool  # False: encoder only (the weights had no decoder)
    info: dict
    run_file: Path | None  # the run settings used, if any were found
    note: str | None  # the encoder-only note, if any


def find_run_settings(source: str) -> tuple[dict, Path | None]:
    """The run's settings from the nearest ``endovit_config.json`` (else ``config.yaml``) beside or up to three
    folders above ``source``: ``{model, img_size, mean, std, norm_pix_loss, mask_ratio, step, val_loss, recipe}``."""
    if is_url(source) or re.match(r"^[a-z0-9+.-]+://", source, re.IGNORECASE):
        return {}, None
    path = Path(source).resolve()
    start = path if path.is_dir() else path.parent
    for folder in [start, *list(start.parents)[:3]]:
        for name in RUN_FILES:
            candidate = folder / name
            if not candidate.is_file():
                continue
            try:
                text = candidate.read_text()
                data = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
            except (OSError, ValueError, yaml.YAMLError):
                continue
            if not isinstance(data, dict) or data.get("model") not in MODEL_ARCHS:
                continue  # not one of our runs' files
            recipe = data.get("recipe", data) if name.endswith(".json") else data
            arch = data.get("architecture") or {}
            settings = {
                "model": data["model"],
                "img_size": data.get("img_size"),
                "mean": data.get("mean"),
                "std": data.get("std"),
                "norm_pix_loss": arch.get("norm_pix_loss", recipe.get("norm_pix_loss")),
                "mask_ratio": recipe.get("mask_ratio"),
                "step": data.get("step"),
                "val_loss": data.get("val_loss"),
                "recipe": recipe,
            }
            return {k: v for k, v in settings.items() if v is not None}, candidate
    return {}, None


def _model_of(state: dict) -> str:
    if "patch_embed.proj.weight" not in state:
        raise ExportError("the weights have no patch_embed.proj.weight: not a ViT / MAE checkpoint")
    name = architecture_of(state)
    if name is None:
        proj = state["patch_embed.proj.weight"]
        depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
        raise ExportError(f"no known architecture has patch {proj.shape[-1]}, width {proj.shape[0]}, depth {depth} "
                          f"(decoder included); pass --model ({', '.join(MODEL_ARCHS)})")
    return name


def _square_size(state: dict, args: dict, patch: int) -> list[int] | None:
    """The size an official checkpoint's ``args`` name, else the square that the position embedding's grid gives."""
    if isinstance(args.get("input_size"), int):
        return [args["input_size"]] * 2
    pos = state.get("pos_embed")
    if pos is not None:
        side = math.isqrt(pos.shape[1] - 1)
        if side * side == pos.shape[1] - 1:
            return [side * patch] * 2
    return None


def check_output_dir(out: Path) -> None:
    """Refuse a file, and a training run's own folder: its exports and config would be replaced by these."""
    if out.exists() and not out.is_dir():
        raise ExportError(f"--output_dir {out} is a file; give a folder")
    if (out / "checkpoints").is_dir() or (out / RUN_LOCK).exists():
        raise ExportError(f"--output_dir {out} holds a training run (checkpoints/), whose own exports these files "
                          "would replace; choose another folder")


def export_weights(source: str, *, output_dir: str | Path, model: str | None = None,
                   img_size: list[int] | None = None, mean: list[float] | None = None, std: list[float] | None = None,
                   norm_pix_loss: bool | None = None, mask_ratio: float | None = None, sha256: str | None = None,
                   hub_folders: bool = True, log=print) -> Exported:
    """Export the weights at ``source`` into ``output_dir``; every ``None`` comes from the run, else the weights."""
    weights = read_weights(source, sha256=sha256)
    state, ckpt_args = weights.state, weights.args
    run, run_file = find_run_settings(source)
    model = model or run.get("model") or _model_of(state)
    if model not in MODEL_ARCHS:
        raise ExportError(f"--model {model}: unknown{did_you_mean(model, MODEL_ARCHS)}; choose one of "
                          f"{', '.join(MODEL_ARCHS)}")
    patch = MODEL_ARCHS[model]["patch_size"]
    img_size = img_size or run.get("img_size") or _square_size(state, ckpt_args, patch)
    if not img_size:
        raise ExportError("give --img_size: no run settings beside or above SOURCE and the position embedding "
                          "does not tell a square size")
    img_size = [int(s) for s in (img_size * 2 if len(img_size) == 1 else img_size)]
    if len(img_size) != 2 or any(s <= 0 or s % patch for s in img_size):
        raise ExportError(f"--img_size {img_size}: give one size or height width, each divisible by {patch}")
    mean, std = mean or run.get("mean"), std or run.get("std")
    if mean is None or std is None:
        raise ExportError(f"give --mean and --std (the normalisation the weights were trained with): no "
                          f"endovit_config.json or config.yaml beside or above {redact_url(source)}; "
                          f"{ENDOVIT_STATS}, {IMAGENET_STATS}")
    if norm_pix_loss is None:
        norm_pix_loss = bool(run.get("norm_pix_loss", ckpt_args.get("norm_pix_loss", False)))
    mask_ratio = next((r for r in (mask_ratio, run.get("mask_ratio"), ckpt_args.get("mask_ratio")) if r is not None),
                      0.75)
    if not 0 < mask_ratio < 1:
        raise ExportError(f"--mask_ratio {mask_ratio}: must be strictly between 0 and 1")

    mae = create_mae(model, img_size=tuple(img_size), norm_pix_loss=norm_pix_loss)
    note = fit_state_dict(mae, state, redact_url(source), log=log)
    step = run.get("step")
    match = re.search(r"(?:^|/)step_0*(\d+)(?:/model\.safetensors)?$", str(source).rstrip("/"))
    if match:  # a training checkpoint's folder names its step
        step = int(match.group(1))
    settings = {**(run.get("recipe") or {}), "model": model, "img_size": img_size, "mean": [float(m) for m in mean],
                "std": [float(s) for s in std], "mask_ratio": mask_ratio, "norm_pix_loss": norm_pix_loss}
    info = export_info(settings, mae, step=step, val_loss=run.get("val_loss")) | {"source": redact_url(source)}
    out = Path(output_dir)
    check_output_dir(out)
    if note is None:
        export_model(mae, out, info, hub_folders=hub_folders)
    else:
        encoder = {k: v for k, v in mae.state_dict().items() if not is_decoder_key(k)}
        export_state_dict(encoder, out, info, hub_folders=hub_folders)
    return Exported(out, note is None, info, run_file, note)
