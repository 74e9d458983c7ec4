"""Every training setting in one dataclass: YAML recipes plus ``--key value`` overrides.

One name per concept: a recipe key is also the CLI flag and the SageMaker hyperparameter, and its one line
of documentation here is its ``--help``. Deployment code hands in its own defaults from outside
(inside a SageMaker training job: the job's folders and data channels, ``endovit.sagemaker.job.job_defaults``); this
module imports none of it.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from endovit.cli import OneLineParser, converter, parse_bool
from endovit.data.splits import check_split_name
from endovit.errors import DataError, RecipeError, did_you_mean
from endovit.models.archs import MODEL_ARCHS
from endovit.recipes import ENDOVIT_MEAN, ENDOVIT_STD, RECIPES_DIR, shipped_recipe_names

__all__ = ["Recipe", "RecipeError", "parse_bool", "RECIPES_DIR", "load_recipe", "build_parser", "recipe_from_args",
           "parse_recipe", "ACCELERATE_PRECISIONS"]

GROUPS = {"data": "data", "model": "model", "optim": "optimisation", "speed": "speed and devices",
          "swa": "stochastic weight averaging", "probe": "downstream probe", "run": "validation, logging, checkpoints"}
# accelerate's mixed precision that counts as chosen (its configs write "no" when nobody chose anything)
ACCELERATE_PRECISIONS = ("fp16", "bf16")


def setting(group: str, default, doc: str):
    """A recipe field: its default, its one-line documentation (= its ``--help``) and its ``--help`` group."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"doc": doc, "group": group})
    return field(default=default, metadata={"doc": doc, "group": group})


@dataclass
class Recipe:
    """The resolved settings of one pretraining run.

    Defaults follow EndoViT where that needs no download or long run (no `init_from`, no SWA);
    `recipes/endovit_seg.yaml` holds its full published recipe.
    """

    train_data: str = setting("data", "", "folder of frames (any nesting), a prepared/save_to_disk dataset, parquet "
                                           "shards, or an s3:// URL of one")
    val_data: str = setting("data", "", "validation frames, same forms; empty = no validation")
    train_split: str = setting("data", "train", "split to train on when train_data is a saved DatasetDict")
    val_split: str = setting("data", "validation", "split to validate on when val_data is a saved DatasetDict")
    img_size: list = setting("data", [224, 224], "input size in pixels, H,W (one number = square)")
    crop_scale: list = setting("data", [0.6, 1.0], "RandomResizedCrop area range, min,max (fractions)")
    mean: list = setting("data", ENDOVIT_MEAN, "per-channel mean of the frames, R,G,B in [0, 1] (EndoViT's)")
    std: list = setting("data", ENDOVIT_STD, "per-channel std of the frames, R,G,B (EndoViT's)")
    num_workers: str = setting("data", "auto", "DataLoader workers per process; auto = CPU cores per process "
                                               "less one (cgroup quota counted; at most 16)")
    train_sources: list = setting("data", [], "sub-folders of train_data, Cholec80 split names or paths; "
                                              "empty = all of train_data")
    source_weights: list = setting("data", [], "one sampling weight per train_sources entry; empty = each frame once")
    val_sources: list = setting("data", [], "the same for val_data (or train_data when val_data is empty)")
    stats_from_data: bool = setting("data", False, "use the training data's stored mean/std "
                                                   "(scripts/compute_stats.py) instead of mean/std")
    fast_decode: bool = setting("data", True, "reduced-scale JPEG decode + uint8 resize; false = PIL as EndoViT")
    reshuffle_each_epoch: bool = setting("data", True, "a new frame order every epoch; false = epoch 0's order every "
                                                       "epoch, as EndoViT's sampler (crops still change)")
    model: str = setting("model", "mae_vit_base_patch16", f"architecture: {', '.join(MODEL_ARCHS)}")
    norm_pix_loss: bool = setting("model", False, "loss on per-patch normalised pixels (EndoViT: false)")
    mask_ratio: float = setting("model", 0.75, "fraction of patches masked")
    init_from: str = setting("model", "", "weights to start from: .pth/.safetensors/export folder/URL "
                                          "(URL#sha256=HEX pins it); empty = random init")
    epochs: int = setting("optim", 15, "epochs of the schedule")
    warmup_epochs: float = setting("optim", 1.0, "linear lr warmup, in epochs")
    batch_size: int = setting("optim", 256, "images per optimizer step over all processes and accumulation")
    grad_accum_steps: int = setting("optim", 1, "micro-batches accumulated per optimizer step")
    blr: float = setting("optim", 1.5e-3, "base lr: lr = blr * batch_size / 256 unless lr is set")
    lr: typing.Optional[float] = setting("optim", None, "peak lr; none = from blr")
    min_lr: float = setting("optim", 1.0e-6, "lr at the end of the cosine schedule")
    weight_decay: float = setting("optim", 0.05, "AdamW weight decay (not on norms, biases, tokens)")
    layer_decay: float = setting("optim", 0.75, "layer-wise lr decay over encoder and decoder (1 = none)")
    clip_grad: typing.Optional[float] = setting("optim", None, "clip the gradient norm to this; none = no clipping")
    seed: int = setting("optim", 1665, "seed of weights, crops and masks")
    mixed_precision: str = setting("speed", "auto", "auto (fastest here: bf16 on GPUs that have it, else fp16; "
                                                    "on CPUs measured) | no | fp16 | bf16")
    torch_compile: str = setting("speed", "auto", "auto (on for CUDA) | true | false; falls back to eager on failure")
    fused_optimizer: bool = setting("speed", True, "fused AdamW kernel instead of torch's default implementation")
    grad_checkpointing: bool = setting("speed", False, "recompute block activations in backward (less memory)")
    tf32: bool = setting("speed", True, "TF32 tensor cores for fp32 matmuls on CUDA GPUs (Ampere and newer)")
    ddp_comm_hook: str = setting("speed", "none", "none | bf16 | fp16: compress the gradient all-reduce between GPUs")
    dist_timeout: int = setting("speed", 7200, "seconds a process waits for the others (NCCL's default is 600)")
    swa: bool = setting("swa", False, "keep a stochastic weight average of the model")
    swa_start_epoch: int = setting("swa", 10, "epoch at which averaging (and the SWA lr) starts")
    swa_every_steps: int = setting("swa", 500, "average every this many optimizer steps (and at each epoch's end)")
    swa_lr: float = setting("swa", 4.0e-4, "lr the SWA phase anneals to over one epoch")
    swa_schedule: str = setting("swa", "smooth", "smooth (per-step cosine to swa_lr, average after the step) | endovit "
                                                 "(EndoViT's code: lr changed only at averaging steps, layer scale "
                                                 "compounding while annealing, average before the step)")
    best_swa_from_epoch: int = setting("swa", 0, "best_swa/ = the SWA average with the lowest validation loss among "
                                                 "validations from this epoch on (EndoViT's release: 11)")
    probe_data: str = setting("probe", "", "labelled frames to probe on: a folder (Cholec80 layout), a prepared/"
                                           "save_to_disk dataset or parquet; empty = no probe during pretraining")
    probe_label_format: str = setting("probe", "cholec80_phase", "cholec80_phase | cholec80_tool | csv | column | "
                                      "cholecseg8k (masks: the linear segmentation probe, whatever probe_kind)")
    probe_labels: str = setting("probe", "", "annotation root (holds phase_annotations/), CSV file or column name; "
                                             "empty = the probe data's folder or its parent")
    probe_kind: str = setting("probe", "knn", "knn | linear | both")
    probe_train_videos: list = setting("probe", [], "videos the probe fits on, e.g. 1-40; empty = Cholec80's 1-40 "
                                                    "when the data has both halves, else the first half of the videos")
    probe_test_videos: list = setting("probe", [], "videos the probe scores; empty = the rest (or the default split)")
    probe_frame_step: int = setting("probe", 1, "keep every Nth probe frame of each video (Cholec80 at 1 fps: 10 "
                                    "keeps 18k of 184k frames); 1 = all")
    probe_k: int = setting("probe", 20, "k-NN neighbours")
    probe_temperature: float = setting("probe", 0.07, "k-NN vote weight exp(cosine / temperature)")
    probe_l2: float = setting("probe", 1.0e-4, "linear probe: L2 penalty on the mean loss")
    probe_batch_size: int = setting("probe", 64, "probe frames per forward pass, per process")
    probe_frame_fps: float = setting("probe", 1.0, "rate the probe frames were extracted at (file index / fps = "
                                                   "seconds)")
    probe_annotation_fps: float = setting("probe", 25.0, "rate of Cholec80's annotation frame numbers")
    probe_first_frame: int = setting("probe", 0, "file index of the frame at time 0 (1 for ffmpeg's default "
                                                 "numbering)")
    probe_seg_classes: int = setting("probe", 8, "cholecseg8k: 8 (EndoViT's merged classes) or 13 (CholecSeg8k's "
                                                 "own)")
    probe_every_steps: int = setting("probe", 500, "probe every this many optimizer steps (and at the end)")
    probe_best_metric: str = setting("probe", "", "export best_probe/ whenever this probe metric peaks, e.g. "
                                     "knn_avg_map (tools), knn_avg_acc (phases) or seg_miou (cholecseg8k); empty = "
                                     "no such export")
    val_every_steps: int = setting("run", 500, "validate every this many optimizer steps (and at the end)")
    val_schedule: str = setting("run", "global", "global (val_every_steps counted over the run) | epoch (counted "
                                                 "within each epoch, plus at every epoch's end: EndoViT's)")
    val_batch_size: int = setting("run", 0, "validation images per process; 0 = the training micro-batch")
    log_every_steps: int = setting("run", 20, "log loss, lr and speed every this many optimizer steps")
    save_every_steps: int = setting("run", 500, "save the training state every this many optimizer steps")
    keep_checkpoints: int = setting("run", 3, "newest training checkpoints to keep")
    num_recon_images: int = setting("run", 4, "validation frames in reconstruction.png; 0 = none")
    report_to: str = setting("run", "tensorboard", "tensorboard | wandb | tensorboard,wandb | none")
    output_dir: str = setting("run", "outputs/run", "final weights, exports, config.yaml, reconstruction.png")
    checkpoint_dir: str = setting("run", "", "training checkpoints; empty = <output_dir>/checkpoints")
    logging_dir: str = setting("run", "", "TensorBoard events; empty = <output_dir>/tensorboard")
    resume: str = setting("run", "none", "none | auto (newest complete checkpoint) | a checkpoint folder")
    stop_at_step: typing.Optional[int] = setting("run", None, "stop early at this optimizer step (schedule unchanged)")
    origin: dict = field(default_factory=dict, repr=False, compare=False,
                         metadata={"internal": True})  # key -> where its value came from; not a setting

    def __post_init__(self) -> None:
        """One side means a square; anything else that is not two sizes is ``validate``'s to refuse."""
        if isinstance(self.img_size, int) and not isinstance(self.img_size, bool):
            self.img_size = [self.img_size]
        if isinstance(self.img_size, list) and len(self.img_size) == 1 and isinstance(self.img_size[0], int):
            self.img_size = self.img_size * 2

    @property
    def output_path(self) -> Path:
        return Path(self.output_dir)

    @property
    def checkpoints_path(self) -> Path:
        return Path(self.checkpoint_dir or Path(self.output_dir) / "checkpoints")

    @property
    def logging_path(self) -> Path:
        return Path(self.logging_dir or Path(self.output_dir) / "tensorboard")

    @property
    def patch_size(self) -> int:
        return MODEL_ARCHS[self.model]["patch_size"]

    def _bad(self, key: str, why: str) -> RecipeError:
        return RecipeError(f"--{key} {getattr(self, key)!r}: {why}")

    def validate(self) -> Recipe:
        """Raise RecipeError naming the first bad value; returns self."""
        bad = self._bad
        self._validate_types()
        if self.model not in MODEL_ARCHS:
            raise bad("model", f"unknown model{did_you_mean(self.model, MODEL_ARCHS)}; choose one of "
                               f"{', '.join(MODEL_ARCHS)}")
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
        for key, example in (("mean", "0.3464,0.2280,0.2228"), ("std", "0.2520,0.2128,0.2093"),
                             ("crop_scale", "0.6,1")):
            values = getattr(self, key)
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise bad(key, f"give numbers, e.g. {example}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise bad("std" if len(self.mean) == 3 else "mean", "need three per-channel values, std > 0")
        if max(self.mean) > 1 or min(self.mean) < 0 or max(self.std) > 1:
            raise bad("mean" if max(self.mean) > 1 or min(self.mean) < 0 else "std",
                      "is in [0, 1] units, as pixels are divided by 255 first: divide 0-255 values by 255")
        if len(self.crop_scale) != 2 or not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise bad("crop_scale", "need [min, max] with 0 < min <= max <= 1")
        for key in ("epochs", "batch_size", "grad_accum_steps", "log_every_steps", "val_every_steps",
                    "save_every_steps", "swa_every_steps", "dist_timeout", "probe_every_steps"):
            if getattr(self, key) <= 0:
                raise bad(key, "must be a positive integer")
        if str(self.num_workers) != "auto":
            try:
                self.num_workers = int(self.num_workers)
            except ValueError:
                raise bad("num_workers", "give a number of workers or auto") from None
        for key in ("num_recon_images", "blr", "min_lr", "weight_decay", "swa_start_epoch", "swa_lr",
                    "best_swa_from_epoch", "val_batch_size") + (
                () if self.num_workers == "auto" else ("num_workers",)):
            if getattr(self, key) < 0:
                raise bad(key, "must not be negative")
        for key, most in (("num_workers", 256), ("num_recon_images", 64), ("keep_checkpoints", 1000),
                          ("val_batch_size", 65536), ("batch_size", 1 << 20)):
            if getattr(self, key) != "auto" and getattr(self, key) > most:
                raise bad(key, f"at most {most}")
        if max(self.img_size) > 4096:
            raise bad("img_size", "at most 4096 pixels a side")
        if self.lr is not None and self.lr <= 0:
            raise bad("lr", "must be positive, or none to derive it from blr")
        if self.min_lr > self.peak_lr:
            raise bad("min_lr", f"is above the peak lr {self.peak_lr:g}: the cosine schedule would climb")
        if not 0 < self.layer_decay <= 1:
            raise bad("layer_decay", "must be in (0, 1]: 1 = no decay (EndoViT: 0.75)")
        if self.clip_grad is not None and self.clip_grad <= 0:
            raise bad("clip_grad", "must be a positive gradient norm, or none for no clipping")
        if self.keep_checkpoints < 1:
            raise bad("keep_checkpoints", "keep at least 1, or resuming has nothing to start from")
        if self.warmup_epochs < 0 or self.warmup_epochs >= self.epochs:
            raise bad("warmup_epochs", f"must be in [0, epochs={self.epochs})")
        for key, choices in (("mixed_precision", ("auto", "no", "fp16", "bf16")),
                             ("swa_schedule", ("smooth", "endovit")), ("val_schedule", ("global", "epoch")),
                             ("torch_compile", ("auto", "true", "false")), ("ddp_comm_hook", ("none", "bf16", "fp16"))):
            if getattr(self, key) not in choices:
                raise bad(key, f"choose {', '.join(choices[:-1])} or {choices[-1]}")
        if not self.train_data:
            raise bad("train_data", "give a folder of frames or a prepared dataset")
        self._validate_sources()
        if self.probe_data:
            from endovit.probes import ProbeSettings

            ProbeSettings.from_recipe(self).validate("probe_")
        if self.probe_best_metric:
            self._validate_probe_best_metric()
        if self.stop_at_step is not None and self.stop_at_step <= 0:
            raise bad("stop_at_step", "must be a positive step number")
        return self

    def _validate_types(self) -> None:
        """Every number, switch and list has its declared type (a YAML file can hold anything); numbers are finite."""
        for name, hint in _field_types().items():
            value = getattr(self, name)
            optional = typing.get_origin(hint) is typing.Union
            base = next(a for a in typing.get_args(hint) if a is not type(None)) if optional else hint
            if (optional and value is None) or base is str:
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            expected = {bool: isinstance(value, bool), int: number and float(value).is_integer(),
                        float: number, list: isinstance(value, list)}[base]
            if not expected:
                kind = {bool: "true or false", int: "a whole number", float: "a number", list: "a list"}[base]
                raise self._bad(name, f"must be {kind}{', or none' if optional else ''}")
            if number and not math.isfinite(value):
                raise self._bad(name, "must be a finite number")
            if base is int:
                setattr(self, name, int(value))

    def unused_probe_settings(self) -> list[str]:
        """The probe settings given (by the recipe file, the job or a flag) although no probe runs (no probe_data)."""
        if self.probe_data:
            return []
        return [key for key in self.origin if key.startswith("probe_") and key != "probe_data"]

    def _validate_probe_best_metric(self) -> None:
        from endovit.probes import metric_names

        if not self.probe_data:
            raise self._bad("probe_best_metric", "needs --probe_data (the labelled frames to probe on)")
        if self.probe_best_metric not in metric_names("both"):
            raise self._bad("probe_best_metric", "name a probe metric: knn|linear, cls|avg, acc|f1|map joined by "
                                                 "'_', e.g. knn_avg_map; or seg_miou, seg_acc")
        dense = self.probe_label_format == "cholecseg8k"
        if self.probe_best_metric not in metric_names(self.probe_kind, None if not dense else False, dense):
            raise self._bad("probe_best_metric", "is not measured with --probe_label_format cholecseg8k (seg_miou, "
                                                 "seg_acc are)" if dense else
                            f"is not measured with --probe_kind {self.probe_kind}")

    def _validate_sources(self) -> None:
        bad = self._bad
        for key in ("train_sources", "val_sources"):
            names = [str(n) for n in getattr(self, key)]
            if any(not n.strip() for n in names) or len(set(names)) != len(names):
                raise bad(key, "give distinct, non-empty source names")
            for name in names:
                if name.startswith("Cholec80_for_"):
                    try:
                        check_split_name(name)
                    except DataError as err:
                        raise bad(key, str(err)) from None
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
        """Every setting (not ``origin``), as saved in ``config.yaml``."""
        return {f.name: getattr(self, f.name) for f in settings_fields()}


def settings_fields() -> list[dataclasses.Field]:
    return [f for f in fields(Recipe) if not f.metadata.get("internal")]


def _field_types() -> dict[str, type]:
    hints = typing.get_type_hints(Recipe)
    return {f.name: hints[f.name] for f in settings_fields()}


def build_parser() -> argparse.ArgumentParser:
    """``--recipe NAME|PATH`` plus one ``--key value`` flag per recipe field (no bare switches), grouped, each with
    its documentation and default."""
    parser = OneLineParser(usage="accelerate launch scripts/pretrain.py [--recipe NAME|PATH] [--KEY VALUE ...]",
                           description="MAE pretraining on endoscopic frames (run under `accelerate launch`). "
                                       "Every flag is also a recipe YAML key; defaults shown are the built-in "
                                       "ones, which --recipe (default endovit_seg) overrides.", allow_abbrev=False)
    names = ", ".join(shipped_recipe_names())
    parser.add_argument("--recipe", default="endovit_seg", help=f"recipe name ({names}) or path to a YAML file")
    hints = _field_types()
    groups = {key: parser.add_argument_group(title) for key, title in GROUPS.items()}
    for f in settings_fields():
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        groups[f.metadata["group"]].add_argument(
            f"--{f.name}", type=converter(hints[f.name]), default=argparse.SUPPRESS, metavar="VALUE",
            help=f"{f.metadata['doc']} (default: {default!r})")
    return parser


def load_recipe(name_or_path: str) -> dict:
    """Read a recipe YAML (by name from the shipped recipes, or by path) into a checked dict."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        names = ", ".join(shipped_recipe_names())
        raise RecipeError(f"recipe {name_or_path!r} not found: give a YAML path or one of {names}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise RecipeError(f"recipe {path} is not valid YAML{where}: {getattr(err, 'problem', None) or err}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"recipe {path} must be a mapping of key: value")
    hints = _field_types()
    for key, value in data.items():
        if key not in hints:
            raise RecipeError(f"recipe {path}: unknown key {key!r}{did_you_mean(repr(key), map(repr, hints))}")
        if isinstance(value, str) and hints[key] is not str:
            try:
                data[key] = converter(hints[key])(value)
            except argparse.ArgumentTypeError as err:
                raise RecipeError(f"recipe {path}: key {key!r}: {err}") from None
    return data


def recipe_from_args(args: argparse.Namespace, *, environ: Mapping[str, str] | None = None,
                     job_defaults: Mapping[str, object] | None = None) -> Recipe:
    """Recipe file values, then ``job_defaults`` (what the deployment sets: a SageMaker job's folders and channels),
    then an explicit accelerate mixed precision (``accelerate launch --mixed_precision`` or its config), then CLI
    flags; validated. ``origin`` records where each value that is not a built-in default came from."""
    environ = os.environ if environ is None else environ
    layers = [(f"recipe {args.recipe}", load_recipe(args.recipe)), ("SageMaker job", dict(job_defaults or {}))]
    accelerate_precision = environ.get("ACCELERATE_MIXED_PRECISION", "")
    if accelerate_precision in ACCELERATE_PRECISIONS:
        layers.append(("accelerate's mixed_precision", {"mixed_precision": accelerate_precision}))
    layers.append(("command line", {k: v for k, v in vars(args).items() if k != "recipe"}))
    values, origin = {}, {}
    for name, layer in layers:
        values.update(layer)
        origin.update(dict.fromkeys(layer, name))
    return Recipe(**values, origin=origin).validate()


def parse_recipe(argv: list[str] | None = None, *, job_defaults: Mapping[str, object] | None = None) -> Recipe:
    return recipe_from_args(build_parser().parse_args(argv), job_defaults=job_defaults)
