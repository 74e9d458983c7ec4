"""Frozen-feature probes of an MAE encoder on labelled frames, split by video: settings, scoring, and the
``Probe`` that a training loop builds once and evaluates every few steps."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path

import datasets
import numpy as np
import psutil
import torch
from PIL import Image

from endovit.data.frames import decode_image, load_frames
from endovit.data.loader import build_val_loader
from endovit.data.splits import video_number
from endovit.errors import DataError, RecipeError, counted, did_you_mean
from endovit.probes.classifiers import knn_scores, linear_probe_scores
from endovit.probes.features import POOLS, features_from_pixels
from endovit.probes.labels import LABEL_FORMATS, Labels, cholec80_labels, column_labels, csv_labels
from endovit.probes.metrics import score, score_names
from endovit.probes.segmentation import (
    SEG_CLASSES,
    SEG_FORMAT,
    TEST_VIDEOS,
    cholecseg8k_frames,
    class_names,
    fit_segmentation_probe,
    predict_masks,
    read_masks,
    segmentation_picture,
    segmentation_scores,
)
from endovit.probes.split import split_by_video

__all__ = ["KINDS", "ProbeSettings", "ProbeData", "load_probe_data", "every_nth_of_each_video", "metric_names",
           "probe_metrics", "segmentation_probe", "probe_picture", "flatten", "decode_frames", "check_probe_size",
           "Probe", "build_probe", "SEG_METRICS"]

KINDS = ("knn", "linear", "both")
SEG_METRICS = ("seg_miou", "seg_acc")  # the segmentation probe's (plus seg_iou/<class>, to the trackers only)
PICTURE_FRAMES = 4  # held-out frames in the segmentation probe's picture


@dataclass
class ProbeSettings:
    """What to probe with and how. As recipe keys each field is ``probe_<name>``, documented there."""

    data: str = ""  # labelled frames: a folder (Cholec80 layout), a prepared / save_to_disk dataset or parquet
    label_format: str = "cholec80_phase"  # cholec80_phase | cholec80_tool | csv | column | cholecseg8k
    labels: str = ""  # annotation root (holds phase_annotations/; empty = data or its parent), CSV, or column name
    kind: str = "knn"  # knn | linear | both
    k: int = 20  # k-NN neighbours
    temperature: float = 0.07  # k-NN vote weight exp(cosine / temperature)
    l2: float = 1.0e-4  # linear probe: L2 penalty on the mean loss
    batch_size: int = 64  # frames per forward pass, per process
    train_videos: list = field(default_factory=list)  # e.g. [1-40] or [video01, video02]; empty = default split
    test_videos: list = field(default_factory=list)  # empty = the default split, or the videos not in train
    frame_step: int = 1  # keep every Nth frame of each video (in the data's order); 1 = all
    frame_fps: float = 1.0  # rate the frames were extracted at (file index / frame_fps = seconds)
    annotation_fps: float = 25.0  # rate of Cholec80's annotation frame numbers
    first_frame: int = 0  # file index of the frame at time 0 (1 for ffmpeg's default numbering)
    seg_classes: int = 8  # cholecseg8k: 8 (EndoViT's merge) or 13 classes

    @classmethod
    def from_recipe(cls, recipe, prefix: str = "probe_") -> ProbeSettings:
        """Settings from an object's ``<prefix><field>`` attributes (a ``Recipe`` has one per field)."""
        return cls(**{f.name: getattr(recipe, prefix + f.name) for f in fields(cls)})

    def validate(self, prefix: str = "") -> ProbeSettings:
        """Raise RecipeError naming the first bad value as its flag ``--<prefix><name>``; returns self."""
        def bad(key: str, why: str) -> RecipeError:
            return RecipeError(f"--{prefix}{key} {getattr(self, key)!r}: {why}")

        if not self.data:
            raise bad("data", "give a folder or dataset of labelled frames")
        if self.label_format not in LABEL_FORMATS:
            raise bad("label_format", f"choose one of {', '.join(LABEL_FORMATS)}"
                                      f"{did_you_mean(self.label_format, LABEL_FORMATS)}")
        if self.label_format == "csv" and not self.labels:
            raise bad("labels", "give the CSV file of labels")
        if self.kind not in KINDS:
            raise bad("kind", f"choose one of {', '.join(KINDS)}")
        for key in ("k", "batch_size", "frame_step"):
            if getattr(self, key) <= 0:
                raise bad(key, "must be a positive integer")
        for key in ("temperature", "frame_fps", "annotation_fps"):
            if getattr(self, key) <= 0:
                raise bad(key, "must be positive")
        if self.l2 < 0:
            raise bad("l2", "must not be negative")
        if self.seg_classes not in SEG_CLASSES:
            raise bad("seg_classes", "choose 8 (EndoViT's merged classes) or 13 (CholecSeg8k's own)")
        return self


@dataclass
class ProbeData:
    """The probe's frames (train videos first, then test videos) and their labels."""

    frames: datasets.Dataset
    labels: Labels
    num_train: int
    videos: dict  # {"train": [...], "test": [...]}

    def summary(self) -> str:
        """E.g. ``128 train frames (16 videos), 128 test frames (16 videos), 7 labels``."""
        num_test = len(self.frames) - self.num_train
        return (f"{counted(self.num_train, 'train frame')} ({counted(len(self.videos['train']), 'video')}), "
                f"{counted(num_test, 'test frame')} ({counted(len(self.videos['test']), 'video')}), "
                + (counted(len(self.labels.names), "label") if self.labels.multilabel
                   else counted(len(self.labels.names), "class", "classes")))


def _annotation_root(data: str, sub: str, *, prefix: str) -> Path:
    candidates = [Path(data), Path(data).parent]
    for folder in candidates:
        if (folder / sub).is_dir():
            return folder
    raise DataError(f"no {sub} folder in {candidates[0]} or {candidates[1]}; give --{prefix}labels, the folder that "
                    "holds it (a prepared dataset keeps no annotations: the folder it was prepared from)")


def _labels(frames: datasets.Dataset, s: ProbeSettings, *, prefix: str) -> Labels:
    if s.label_format == "csv":
        return csv_labels(frames, s.labels, s.data)
    if s.label_format == "column":
        return column_labels(frames, s.labels or "label")
    task = s.label_format.removeprefix("cholec80_")
    folder = s.labels or _annotation_root(s.data, f"{task}_annotations", prefix=prefix)
    return cholec80_labels(frames, folder, task, frame_fps=s.frame_fps, annotation_fps=s.annotation_fps,
                           first_frame=s.first_frame)


def _load_segmentation_data(s: ProbeSettings) -> ProbeData:
    """CholecSeg8k frames and their masks (read for the kept frames only), split by video: by default EndoViT's
    test videos score the probe when the data holds them."""
    frames, paths, masks = cholecseg8k_frames(s.data)
    videos = frames.select_columns(["video"]).to_dict()["video"]
    test_videos = s.test_videos
    if not s.train_videos and not s.test_videos:
        test_videos = [v for v in sorted(set(videos)) if video_number(v) in TEST_VIDEOS]
    train, test = (every_nth_of_each_video(rows, videos, s.frame_step)
                   for rows in split_by_video(videos, s.train_videos, test_videos))
    rows = train + test
    labels = Labels(read_masks([paths[i] for i in rows], [masks[i] for i in rows], s.seg_classes),
                    class_names(s.seg_classes))
    return ProbeData(frames.select(rows), labels, len(train),
                     {"train": sorted({videos[i] for i in train}), "test": sorted({videos[i] for i in test})})


def load_probe_data(settings: ProbeSettings, *, prefix: str = "") -> ProbeData:
    """Frames, labels and the video split; a video never has frames on both sides. A frames error names its flag,
    ``--<prefix>data``."""
    try:
        if settings.label_format == SEG_FORMAT:
            return _load_segmentation_data(settings)
        frames = load_frames(settings.data)
    except DataError as err:
        raise DataError(f"--{prefix}data: {err}") from None
    labels = _labels(frames, settings, prefix=prefix)
    if "video" not in frames.column_names:
        raise DataError(f"probe data {settings.data} has no 'video' column; probes split by video")
    videos = frames.select_columns(["video"]).to_dict()["video"]
    train, test = (every_nth_of_each_video(rows, videos, settings.frame_step)
                   for rows in split_by_video(videos, settings.train_videos, settings.test_videos))
    rows = train + test
    return ProbeData(frames.select(rows), labels.select(rows), len(train),
                     {"train": sorted({videos[i] for i in train}), "test": sorted({videos[i] for i in test})})


def every_nth_of_each_video(rows: list[int], videos: list[str], step: int) -> list[int]:
    """The rows that are the 1st, (1+step)th, (1+2*step)th, ... row of their video among ``rows``."""
    seen: Counter = Counter()
    kept = []
    for row in rows:
        if seen[videos[row]] % step == 0:
            kept.append(row)
        seen[videos[row]] += 1
    return kept


def metric_names(kind: str, multilabel: bool | None = None, dense: bool = False) -> list[str]:
    """The metrics a probe of ``kind`` reports (for any label type when ``multilabel`` is None), e.g.
    ``knn_avg_map``; for masks (``dense``) ``seg_miou`` and ``seg_acc`` whatever the kind; with the ``probe/``
    prefix they are the logged names."""
    if dense:
        return list(SEG_METRICS)
    classifiers = ("knn", "linear") if kind == "both" else (kind,)
    scores = score_names(multilabel) if multilabel is not None else (*score_names(False), *score_names(True))
    names = [f"{classifier}_{pool}_{name}" for classifier in classifiers for pool in POOLS for name in scores]
    return names + list(SEG_METRICS) if multilabel is None else names


def segmentation_probe(features: dict[str, torch.Tensor], data: ProbeData, s: ProbeSettings
                       ) -> tuple[dict[str, float], torch.Tensor]:
    """The linear segmentation probe fitted on the train frames' patch tokens: scores on the test frames
    (``miou``, ``acc``, ``iou/<class>``) and its predicted (N_test, H, W) uint8 masks."""
    n, masks = data.num_train, data.labels.values
    tokens = features["patch"]
    probe = fit_segmentation_probe(tokens[:n], torch.as_tensor(masks[:n], device=tokens.device),
                                   num_classes=len(data.labels.names), l2=s.l2)
    pred = predict_masks(probe, tokens[n:], masks.shape[1:])
    return segmentation_scores(pred.numpy(), masks[n:], data.labels.names), pred


def probe_metrics(features: dict[str, torch.Tensor], data: ProbeData, s: ProbeSettings
                  ) -> dict[str, dict[str, float]]:
    """``{"knn_cls": {"acc": ..., "f1": ...}, "linear_avg": {"map": ..., "ap/Grasper": ...}, ...}``."""
    if data.labels.dense:
        return {"seg": segmentation_probe(features, data, s)[0]}
    n, names = data.num_train, data.labels.names
    test_target = data.labels.values[n:]
    results = {}
    for pool, feats in features.items():
        targets = torch.as_tensor(data.labels.values[:n], device=feats.device)
        if s.kind in ("knn", "both"):
            scores = knn_scores(feats[:n], targets, feats[n:], num_classes=len(names), k=s.k, temperature=s.temperature)
            results[f"knn_{pool}"] = score(scores.cpu().numpy(), test_target, names)
        if s.kind in ("linear", "both"):
            scores = linear_probe_scores(feats[:n], targets, feats[n:], num_classes=len(names), l2=s.l2)
            results[f"linear_{pool}"] = score(scores.cpu().numpy(), test_target, names)
    return results


def flatten(results: dict[str, dict[str, float]], prefix: str = "probe/") -> dict[str, float]:
    """``{"knn_cls": {"acc": x}}`` -> ``{"probe/knn_cls_acc": x}``."""
    return {f"{prefix}{probe}_{metric}": value for probe, metrics in results.items() for metric, value in
            metrics.items()}


def decode_frames(frames: datasets.Dataset, img_size, num_workers: int = 0, batch_size: int = 64) -> torch.Tensor:
    """Every frame decoded and resized as for validation, in order, by ``num_workers`` DataLoader workers (0: this
    process): one uint8 (N, 3, H, W) tensor. Draws nothing from the global random generators."""
    with torch.random.fork_rng(devices=[]):
        return torch.cat([batch["pixels"] for batch in build_val_loader(frames, img_size, batch_size, num_workers)])


def probe_memory_budget(device: torch.device, local_processes: int = 1) -> tuple[int, str]:
    """Bytes the decoded probe frames may take on ``device``, and what that is: a tenth of a GPU's memory (every
    process keeps a copy on its own GPU), else a quarter of the host memory available now, shared by the
    ``local_processes`` of this machine."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory // 10, f"a tenth of {device}'s memory"
    processes = max(1, local_processes)
    shared = f", shared by {processes} processes" if processes > 1 else ""
    return psutil.virtual_memory().available // 4 // processes, f"a quarter of the free host memory{shared}"


def check_probe_size(frames: int, *, img_size, settings: ProbeSettings, device: torch.device,
                     local_processes: int = 1) -> None:
    """RecipeError naming --probe_frame_step when ``frames`` decoded at ``img_size`` exceed the device's budget."""
    needed = frames * 3 * img_size[0] * img_size[1]
    budget, what = probe_memory_budget(device, local_processes)
    if needed > budget:
        step = settings.frame_step * -(-needed // budget)
        raise RecipeError(f"--probe_data {settings.data}: {frames:,} probe frames at {img_size[0]}x{img_size[1]} take "
                          f"{needed / 1e9:.1f} GB as uint8, more than {budget / 1e9:.1f} GB ({what}); keep every "
                          f"Nth frame of each video with --probe_frame_step {step}")


class Probe:
    """Probes an MAE encoder on cached probe frames during training.

    ``evaluate`` leaves the training run as it was: no global RNG draws (the classifiers are deterministic and
    the encoder runs in eval mode without dropout), no gradients, and each module's train/eval mode restored.
    Every process must call it (features are gathered across processes).
    """

    def __init__(self, pixels: torch.Tensor, data: ProbeData, settings: ProbeSettings, mean, std, accelerator):
        self.pixels, self.data, self.settings = pixels, data, settings
        self.mean, self.std, self.accelerator = mean, std, accelerator
        self.picture = None  # segmentation: held-out frames | truth | prediction of the last evaluate, uint8 HWC

    @torch.no_grad()
    def evaluate(self, mae) -> dict[str, float]:
        """Metrics such as ``probe/knn_cls_acc``, ``probe/knn_avg_f1`` (phase), ``probe/knn_cls_map`` (tools),
        ``probe/seg_miou`` (masks; then also ``self.picture``)."""
        modes = {module: module.training for module in mae.modules()}
        dense = self.data.labels.dense
        mae.eval()
        try:
            features = features_from_pixels(mae, self.pixels, self.accelerator, mean=self.mean, std=self.std,
                                            batch_size=self.settings.batch_size, dense=dense)
        finally:
            for module, mode in modes.items():
                module.training = mode
        if not dense:
            return flatten(probe_metrics(features, self.data, self.settings))
        scores, pred = segmentation_probe(features, self.data, self.settings)
        self.picture = probe_picture(self.data, pred)
        return flatten({"seg": scores})


def probe_picture(data: ProbeData, pred: torch.Tensor, frames: int = PICTURE_FRAMES, height: int = 160
                  ) -> np.ndarray:
    """``segmentation_picture`` of the first ``frames`` test frames (evenly spread), each panel ``height`` px."""
    n = data.num_train
    picks = np.unique(np.linspace(0, len(pred) - 1, min(frames, len(pred))).round().astype(int))
    h, w = data.labels.values.shape[1:]
    size = (max(1, round(w * height / h)), height)
    images = np.stack([np.asarray(decode_image(data.frames[n + int(i)]["image"]).resize(size, Image.BILINEAR))
                       for i in picks])
    small = lambda m: np.asarray(Image.fromarray(m).resize(size, Image.NEAREST))  # noqa: E731
    truth = np.stack([small(data.labels.values[n + int(i)]) for i in picks])
    guess = np.stack([small(pred[int(i)].numpy()) for i in picks])
    return segmentation_picture(images, truth, guess, len(data.labels.names))


def build_probe(settings: ProbeSettings, *, img_size, mean, std, accelerator, num_workers: int = 0,
                local_processes: int = 1) -> Probe:
    """Load, label, split and decode the probe frames once (by ``num_workers`` workers; kept on
    ``accelerator.device`` as uint8; ``local_processes`` of this machine each keep a copy)."""
    data = load_probe_data(settings.validate("probe_"), prefix="probe_")
    check_probe_size(len(data.frames), img_size=img_size, settings=settings, device=accelerator.device,
                     local_processes=local_processes)
    pixels = decode_frames(data.frames, img_size, num_workers).to(accelerator.device)
    accelerator.print(f"probe: {data.summary()}")
    return Probe(pixels, data, settings, mean, std, accelerator)
