"""Every training setting in one dataclass: YAML recipes plus ``--key value`` overrides.

One name per concept: a recipe key is also the CLI flag and the SageMaker hyperparameter.
Inside a SageMaker training job the job's folders and data channels are the defaults (``endovit.sagemaker``).
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from endovit.data.splits import CHOLEC80_SPLITS
from endovit.errors import RecipeError
from endovit.models.mae import MODEL_ARCHS
from endovit.sagemaker.job import job_defaults

__all__ = ["Recipe", "RecipeError", "parse_bool", "RECIPES_DIR", "load_recipe", "build_parser", "recipe_from_args",
           "parse_recipe"]

RECIPES_DIR = Path(__file__).parent / "recipes"
ENDOVIT_MEAN = [0.3464, 0.2280, 0.2228]
ENDOVIT_STD = [0.2520, 0.2128, 0.2093]


@dataclass
class Recipe:
    """The resolved settings of one pretraining run.

    Defaults follow EndoViT where that needs no download or long run (no `init_from`, no SWA);
    `recipes/endovit_seg.yaml` holds its full published recipe.
    """

    # data
    train_data: str = ""  # folder of frames (any nesting), a save_to_disk folder, or parquet shards
    val_data: str = ""  # same forms; empty = no validation
    img_size: list = field(default_factory=lambda: [224, 224])  # [H, W]; a single int means square
    crop_scale: list = field(default_factory=lambda: [0.6, 1.0])  # RandomResizedCrop area range
    mean: list = field(default_factory=lambda: list(ENDOVIT_MEAN))
    std: list = field(default_factory=lambda: list(ENDOVIT_STD))
    num_workers: int = 8
    train_sources: list = field(default_factory=list)  # sub-folders of train_data, Cholec80 split names or paths
    source_weights: list = field(default_factory=list)  # one weight per train_sources entry; empty = each frame once
    val_sources: list = field(default_factory=list)  # the same for val_data (or train_data when val_data is empty)
    stats_from_data: bool = False  # replace mean/std by the training data's stored stats (scripts/compute_stats.py)
    fast_decode: bool = True  # reduced-scale JPEG decode + uint8 tensor resize; false = PIL exactly as EndoViT
    # model
    model: str = "mae_vit_base_patch16"
    norm_pix_loss: bool = False
    mask_ratio: float = 0.75
    init_from: str = ""  # .pth / .safetensors / URL of weights to start from; empty = random init
    # optimisation
    epochs: int = 15
    warmup_epochs: float = 1.0
    batch_size: int = 256  # effective batch per optimizer step, over all processes and accumulation
    grad_accum_steps: int = 1
    blr: float = 1.5e-3  # lr = blr * batch_size / 256 unless lr is set
    lr: typing.Optional[float] = None
    min_lr: float = 1.0e-6
    weight_decay: float = 0.05
    layer_decay: float = 0.75
    clip_grad: typing.Optional[float] = None
    mixed_precision: str = "auto"  # auto = bf16 where the GPU/CPU runs it natively, else no | no | fp16 | bf16
    torch_compile: str = "auto"  # auto = on for CUDA GPUs | true | false (falls back to eager on failure)
    fused_optimizer: bool = True  # fused AdamW kernel instead of a per-parameter loop
    grad_checkpointing: bool = False  # recompute block activations in backward (saves memory for ViT-L/H)
    seed: int = 1665
    # stochastic weight averaging
    swa: bool = False
    swa_start_epoch: int = 10
    swa_every_steps: int = 500
    swa_lr: float = 4.0e-4
    # validation, logging, checkpoints
    val_every_steps: int = 500
    val_batch_size: int = 0  # per process; 0 = the training micro-batch
    log_every_steps: int = 20
    save_every_steps: int = 500
    keep_checkpoints: int = 3
    num_recon_images: int = 4
    report_to: str = "tensorboard"  # tensorboard | wandb | tensorboard,wandb | none
    output_dir: str = "outputs/run"  # final weights, config.yaml, reconstruction.png
    checkpoint_dir: str = ""  # training checkpoints; empty = <output_dir>/checkpoints
    logging_dir: str = ""  # TensorBoard events; empty = <output_dir>/tensorboard
    resume: str = "none"  # none | auto (newest complete checkpoint in output_dir) | a checkpoint folder
    stop_at_step: typing.Optional[int] = None  # stop early at this optimizer step; the schedule is unchanged

    def __post_init__(self) -> None:
        if isinstance(self.img_size, int):
            self.img_size = [self.img_size]
        if len(self.img_size) == 1:
            self.img_size = [self.img_size[0], self.img_size[0]]

    @property
    def checkpoints_path(self) -> Path:
        return Path(self.checkpoint_dir or Path(self.output_dir) / "checkpoints")

    @property
    def logging_path(self) -> Path:
        return Path(self.logging_dir or Path(self.output_dir) / "tensorboard")

    @property
    def patch_size(self) -> int:
        return MODEL_ARCHS[self.model]["patch_size"]

    def validate(self) -> Recipe:
        """Raise RecipeError naming the first bad value; returns self."""
        def bad(key: str, why: str) -> RecipeError:
            return RecipeError(f"--{key} {getattr(self, key)!r}: {why}")

        if self.model not in MODEL_ARCHS:
            raise bad("model", f"unknown model; choose one of {', '.join(MODEL_ARCHS)}")
        try:
            self.img_size = [int(s) for s in self.img_size]
        except (TypeError, ValueError):
            raise bad("img_size", "give whole numbers: one size or height,width") from None
        if len(self.img_size) != 2 or min(self.img_size) <= 0:
            raise bad("img_size", "give one size or [height, width]")
        if any(s % self.patch_size for s in self.img_size):
            raise bad("img_size", f"each side must be divisible by the patch size {self.patch_size} of {self.model}")
        if not 0.0 < self.mask_ratio < 1.0:
            raise bad("mask_ratio", "must be strictly between 0 and 1")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise bad("std" if len(self.mean) == 3 else "mean", "need three per-channel values, std > 0")
        if len(self.crop_scale) != 2 or not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise bad("crop_scale", "need [min, max] with 0 < min <= max <= 1")
        for key in ("epochs", "batch_size", "grad_accum_steps", "log_every_steps", "val_every_steps",
                    "save_every_steps", "swa_every_steps"):
            if getattr(self, key) <= 0:
                raise bad(key, "must be a positive integer")
        for key in ("num_workers", "num_recon_images", "blr", "min_lr", "weight_decay"):
            if getattr(self, key) < 0:
                raise bad(key, "must not be negative")
        if self.lr is not None and self.lr <= 0:
            raise bad("lr", "must be positive, or none to derive it from blr")
        if self.keep_checkpoints < 1:
            raise bad("keep_checkpoints", "keep at least 1, or resuming has nothing to start from")
        if self.swa_start_epoch < 0:
            raise bad("swa_start_epoch", "must not be negative")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise bad("warmup_epochs", f"must be in [0, epochs={self.epochs})")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise bad("mixed_precision", "choose auto, no, fp16 or bf16")
        if self.torch_compile not in ("auto", "true", "false"):
            raise bad("torch_compile", "choose auto, true or false")
        if not self.train_data:
            raise bad("train_data", "give a folder of frames or a prepared dataset")
        self._validate_sources()
        if self.stop_at_step is not None and self.stop_at_step <= 0:
            raise bad("stop_at_step", "must be a positive step number")
        return self

    def _validate_sources(self) -> None:
        def bad(key: str, why: str) -> RecipeError:
            return RecipeError(f"--{key} {getattr(self, key)!r}: {why}")

        for key in ("train_sources", "val_sources"):
            names = [str(n) for n in getattr(self, key)]
            if any(not n.strip() for n in names) or len(set(names)) != len(names):
                raise bad(key, "give distinct, non-empty source names")
            for name in names:
                if name.startswith("Cholec80_for_") and name not in CHOLEC80_SPLITS:
                    close = difflib.get_close_matches(name, CHOLEC80_SPLITS, n=1)
                    hint = f" (did you mean {close[0]}?)" if close else ""
                    raise bad(key, f"unknown Cholec80 split {name!r}{hint}; choose from {', '.join(CHOLEC80_SPLITS)}")
            setattr(self, key, names)
        if self.source_weights:
            if len(self.source_weights) != len(self.train_sources):
                raise bad("source_weights", f"give one weight per --train_sources entry ({len(self.train_sources)})")
            try:
                self.source_weights = [float(w) for w in self.source_weights]
            except (TypeError, ValueError):
                raise bad("source_weights", "weights must be numbers") from None
            if any(not math.isfinite(w) or w <= 0 for w in self.source_weights):
                raise bad("source_weights", "weights must be positive; drop a source instead of weighting it 0")

    @property
    def peak_lr(self) -> float:
        """``lr`` if given, else MAE's scaling rule ``blr * batch_size / 256``."""
        return self.lr if self.lr is not None else self.blr * self.batch_size / 256

    def micro_batch_size(self, num_processes: int) -> int:
        """Per-process batch so that processes x accumulation x micro-batch = ``batch_size``."""
        per_step = num_processes * self.grad_accum_steps
        if self.batch_size % per_step:
            raise RecipeError(
                f"--batch_size {self.batch_size} is not divisible by {num_processes} processes x "
                f"{self.grad_accum_steps} accumulation steps; choose a multiple of {per_step}"
            )
        return self.batch_size // per_step

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _field_types() -> dict[str, type]:
    return typing.get_type_hints(Recipe)


def parse_bool(text: str) -> bool:
    lowered = str(text).strip().lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _parse_list(text: str) -> list:
    text = text.strip()
    value = yaml.safe_load(text) if text.startswith("[") else [yaml.safe_load(p) for p in text.split(",") if p.strip()]
    if not isinstance(value, list):
        value = [value]
    return value


def _converter(hint):
    """A string -> value converter for one field's type hint ('none' means None where allowed)."""
    optional = typing.get_origin(hint) is typing.Union and type(None) in typing.get_args(hint)
    base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
    convert = {bool: parse_bool, int: int, float: float, str: str, list: _parse_list}[base]

    def parse(text: str):
        if optional and str(text).strip().lower() in ("none", "null", ""):
            return None
        try:
            return convert(text)
        except (TypeError, ValueError, yaml.YAMLError) as err:
            raise argparse.ArgumentTypeError(f"cannot read {text!r} as {base.__name__}: {err}") from None

    parse.__name__ = base.__name__
    return parse


def build_parser() -> argparse.ArgumentParser:
    """``--recipe NAME|PATH`` plus one ``--key value`` flag per recipe field (no bare switches)."""
    parser = argparse.ArgumentParser(
        description="MAE pretraining on endoscopic frames (run under `accelerate launch`).",
        allow_abbrev=False,
    )
    names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
    parser.add_argument("--recipe", default="endovit_seg", help=f"recipe name ({names}) or path to a YAML file")
    hints = _field_types()
    for f in fields(Recipe):
        parser.add_argument(f"--{f.name}", type=_converter(hints[f.name]), default=argparse.SUPPRESS, metavar="VALUE")
    return parser


def load_recipe(name_or_path: str) -> dict:
    """Read a recipe YAML (by name from the shipped recipes, or by path) into a checked dict."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = ", ".join(sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")))
        raise RecipeError(f"recipe {name_or_path!r} not found: give a YAML path or one of {names}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of key: value")
    hints = _field_types()
    for key, value in data.items():
        if key not in hints:
            close = difflib.get_close_matches(str(key), hints, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RecipeError(f"recipe {path}: unknown key {key!r}{hint}")
        if isinstance(value, str) and hints[key] is not str:
            try:
                data[key] = _converter(hints[key])(value)
            except argparse.ArgumentTypeError as err:
                raise RecipeError(f"recipe {path}: key {key!r}: {err}") from None
    return data


def recipe_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Recipe:
    """Recipe file values, then SageMaker job defaults (only inside a job), then CLI overrides; validated."""
    values = load_recipe(args.recipe)
    values.update(job_defaults(os.environ if environ is None else environ))
    values.update({k: v for k, v in vars(args).items() if k != "recipe"})
    return Recipe(**values).validate()


def parse_recipe(argv: list[str] | None = None) -> Recipe:
    return recipe_from_args(build_parser().parse_args(argv))
