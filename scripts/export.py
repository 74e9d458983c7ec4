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
import sys

from endovit.cli import OneLineParser, add_image_flags, exit_script
from endovit.errors import EndovitError, error_line
from endovit.export import export_weights
from endovit.io import redact_url
from endovit.models.archs import MODEL_ARCHS


def build_parser() -> argparse.ArgumentParser:
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
    return parser


def main(argv: list[str] | None = None) -> int:
    opts = build_parser().parse_args(argv)
    try:
        done = export_weights(
            opts.source, output_dir=opts.output_dir, model=opts.model, img_size=opts.img_size, mean=opts.mean,
            std=opts.std, norm_pix_loss=None if opts.norm_pix_loss is None else opts.norm_pix_loss == "true",
            mask_ratio=opts.mask_ratio, sha256=opts.sha256, hub_folders=not opts.no_hub_folders, log=print)
    except (EndovitError, ValueError, OSError) as err:
        print(f"error: {redact_url(error_line(err))}", file=sys.stderr)
        return 2
    out, info, (height, width) = done.folder, done.info, done.info["img_size"]
    if done.run_file is not None:
        print(f"run settings from {done.run_file}")
    print(f"wrote {out}: {'full MAE' if done.full else 'encoder only'}, {info['model']}, {height}x{width}, "
          f"mean {info['mean']}, std {info['std']}")
    if not opts.no_hub_folders:
        print(f"  timm:         timm.create_model('local-dir:{out / 'timm'}', pretrained=True, num_classes=...)")
        print(f"  transformers: ViTModel.from_pretrained('{out / 'transformers'}')" +
              ("; ViTMAEForPreTraining for the full MAE" if done.full else ""))
        if not done.full:
            print("  note: transformers' ViTMAEForPreTraining would start with a fresh decoder (no decoder here)")
        elif height != width:
            print(f"  note: transformers' ViTMAEForPreTraining assumes square images and cannot build a "
                  f"{height}x{width} MAE; ViTMAEModel and ViTModel load these weights")
    return 0


if __name__ == "__main__":
    exit_script(main())
