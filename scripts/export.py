"""Write an export folder (ours + timm's and transformers' Hub layouts) from any weights we can read.

    python scripts/export.py outputs/demo/checkpoints/step_00000210 --output_dir exports/step210
    python scripts/export.py mae_pretrain_vit_base_full.pth --output_dir exports/imagenet-mae \\
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225
    python scripts/export.py endovit_seg.pth --output_dir exports/endovit --img_size 224

SOURCE: a checkpoint folder ``step_N`` (accelerate's ``save_state``), an export folder or any
``model.safetensors``/``encoder.safetensors`` of ours, an official MAE ``.pth`` (full or encoder-only, e.g. the
released EndoViT weights), a transformers ViT-MAE folder, or an http(s) URL. Model, image size, mean/std,
norm_pix_loss and mask ratio come from the run's ``endovit_config.json`` or ``config.yaml`` beside or up to three
folders above SOURCE; flags override them; what is still unknown is inferred from the weights (architecture,
square image size) or must be given (mean/std).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from pathlib import Path

import yaml

from endovit.cli import OneLineParser, add_image_flags
from endovit.errors import EndovitError, did_you_mean, error_line
from endovit.models.mae import MODEL_ARCHS, TIMM_ENCODERS, create_mae
from endovit.weights import (
    DECODER_PREFIXES,
    export_model,
    export_state_dict,
    fit_state_dict,
    read_weights,
    redact_url,
)

RUN_FILES = ("endovit_config.json", "config.yaml")
ENDOVIT_STATS = "EndoViT's --mean 0.3464,0.2280,0.2228 --std 0.2520,0.2128,0.2093"
IMAGENET_STATS = "ImageNet's --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225"


class ExportError(EndovitError):
    """SOURCE or a flag that cannot give an export."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("source", help="checkpoint folder, export folder, .safetensors/.pth file, or URL")
    parser.add_argument("--output_dir", required=True, help="folder to write (replaces the files it writes); not a "
                                                            "training run's own folder")
    parser.add_argument("--model", help=f"architecture ({', '.join(MODEL_ARCHS)}); default: the run's, else inferred")
    add_image_flags(parser, "one size or height width; default: the run's, else inferred",
                    "what the weights were trained with; default: the run's")
    parser.add_argument("--norm_pix_loss", choices=("true", "false"), help="default: the run's / checkpoint's")
    parser.add_argument("--mask_ratio", type=float, help="written into the transformers config; default 0.75")
    parser.add_argument("--sha256", help="pin SOURCE's sha256 (checked before anything is read)")
    parser.add_argument("--no_hub_folders", action="store_true", help="write only our three files")
    return parser.parse_args(argv)


def find_run_settings(source: str) -> tuple[dict, Path | None]:
    """The run's settings from the nearest ``endovit_config.json`` (else ``config.yaml``) beside or up to three
    folders above ``source``: ``{model, img_size, mean, std, norm_pix_loss, mask_ratio, step, val_loss, recipe}``."""
    if re.match(r"^[a-z]+://", source, re.IGNORECASE):
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


def infer_model(state: dict) -> str:
    """The MAE variant whose encoder (and decoder, when present) shapes these weights have."""
    proj = state.get("patch_embed.proj.weight")
    if proj is None:
        raise ExportError("the weights have no patch_embed.proj.weight: not a ViT / MAE checkpoint")
    embed_dim, patch = proj.shape[0], proj.shape[-1]
    depth = len({k.split(".")[1] for k in state if k.startswith("blocks.")})
    decoder_depth = len({k.split(".")[1] for k in state if k.startswith("decoder_blocks.")})
    decoder_dim = state["decoder_embed.weight"].shape[0] if "decoder_embed.weight" in state else None
    for name, arch in MODEL_ARCHS.items():
        if (arch["patch_size"], arch["embed_dim"], arch["depth"]) != (patch, embed_dim, depth):
            continue
        if decoder_dim is not None and (arch["decoder_embed_dim"], arch["decoder_depth"]) != (decoder_dim,
                                                                                             decoder_depth):
            continue
        return name
    raise ExportError(f"no known architecture has patch {patch}, width {embed_dim}, depth {depth}"
                      f"{'' if decoder_dim is None else f', decoder {decoder_dim}x{decoder_depth}'}; "
                      f"pass --model ({', '.join(MODEL_ARCHS)})")


def infer_img_size(state: dict, args: dict, patch: int) -> list[int] | None:
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
    if (out / "checkpoints").is_dir() or (out / ".endovit.lock").exists():
        raise ExportError(f"--output_dir {out} holds a training run (checkpoints/), whose own exports these files "
                          "would replace; choose another folder")


def export(argv: list[str] | None = None) -> Path:
    opts = parse_args(argv)
    state, extras = read_weights(opts.source, sha256=opts.sha256)
    ckpt_args = extras.get("args", {})
    run, run_file = find_run_settings(opts.source)
    if run_file is not None:
        print(f"run settings from {run_file}")

    model = opts.model or run.get("model") or infer_model(state)
    if model not in MODEL_ARCHS:
        raise ExportError(f"--model {model}: unknown{did_you_mean(model, MODEL_ARCHS)}; choose one of "
                          f"{', '.join(MODEL_ARCHS)}")
    patch = MODEL_ARCHS[model]["patch_size"]
    img_size = opts.img_size or run.get("img_size") or infer_img_size(state, ckpt_args, patch)
    if not img_size:
        raise ExportError("give --img_size: no run settings beside or above SOURCE and the position embedding "
                          "does not tell a square size")
    img_size = [int(s) for s in (img_size * 2 if len(img_size) == 1 else img_size)]
    if len(img_size) != 2 or any(s <= 0 or s % patch for s in img_size):
        raise ExportError(f"--img_size {img_size}: give one size or height width, each divisible by {patch}")
    mean, std = opts.mean or run.get("mean"), opts.std or run.get("std")
    if mean is None or std is None:
        raise ExportError(f"give --mean and --std (the normalisation the weights were trained with): no "
                          f"endovit_config.json or config.yaml beside or above {redact_url(opts.source)}; "
                          f"{ENDOVIT_STATS}, {IMAGENET_STATS}")
    if opts.norm_pix_loss is not None:
        norm_pix_loss = opts.norm_pix_loss == "true"
    else:
        norm_pix_loss = bool(run.get("norm_pix_loss", ckpt_args.get("norm_pix_loss", False)))
    mask_ratio = next((r for r in (opts.mask_ratio, run.get("mask_ratio"), ckpt_args.get("mask_ratio"))
                       if r is not None), 0.75)
    if not 0 < mask_ratio < 1:
        raise ExportError(f"--mask_ratio {mask_ratio}: must be strictly between 0 and 1")

    mae = create_mae(model, img_size=tuple(img_size), norm_pix_loss=norm_pix_loss)
    note = fit_state_dict(mae, state, redact_url(opts.source), log=print)
    step = run.get("step")
    match = re.search(r"(?:^|/)step_0*(\d+)(?:/model\.safetensors)?$", str(opts.source).rstrip("/"))
    if match:
        step = int(match.group(1))
    recipe = dict(run.get("recipe") or {})
    recipe.update(mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss)
    info = {
        "model": model,
        "timm_model": TIMM_ENCODERS[model],
        "architecture": mae.config,
        "img_size": img_size,
        "patch_size": patch,
        "mean": [float(m) for m in mean],
        "std": [float(s) for s in std],
        "step": step,
        "val_loss": run.get("val_loss"),
        "recipe": {k: redact_url(v) if isinstance(v, str) else v for k, v in recipe.items()},
        "source": redact_url(str(opts.source)),
    }
    out = Path(opts.output_dir)
    check_output_dir(out)
    hub_folders = not opts.no_hub_folders
    if note is None:
        export_model(mae, out, info, hub_folders=hub_folders)
    else:
        encoder = {k: v for k, v in mae.state_dict().items() if not k.startswith(DECODER_PREFIXES)}
        export_state_dict(encoder, out, info, hub_folders=hub_folders)
    print(f"wrote {out}: {'full MAE' if note is None else 'encoder only'}, {model}, {img_size[0]}x{img_size[1]}, "
          f"mean {info['mean']}, std {info['std']}")
    if hub_folders:
        print(f"  timm:         timm.create_model('local-dir:{out / 'timm'}', pretrained=True, num_classes=...)")
        print(f"  transformers: ViTModel.from_pretrained('{out / 'transformers'}')" +
              ("" if note is not None else "; ViTMAEForPreTraining for the full MAE"))
        if note is not None:
            print("  note: transformers' ViTMAEForPreTraining would start with a fresh decoder (no decoder here)")
        elif img_size[0] != img_size[1]:
            print(f"  note: transformers' ViTMAEForPreTraining assumes square images and cannot build a "
                  f"{img_size[0]}x{img_size[1]} MAE; ViTMAEModel and ViTModel load these weights")
    return out


def main(argv: list[str] | None = None) -> int:
    try:
        export(argv)
    except (EndovitError, ValueError, OSError) as err:
        print(f"error: {redact_url(error_line(err))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
