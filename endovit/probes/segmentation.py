"""CholecSeg8k as downloaded, and a linear segmentation probe of an encoder's patch tokens.

CholecSeg8k: ``videoNN/videoNN_SSSSS/frame_K_endo.png`` (an 80-frame clip of Cholec80 video NN starting at frame
SSSSS) with ``frame_K_endo_watershed_mask.png`` beside it (also ``_color_mask.png`` and ``_mask.png``, not read).
A watershed mask's pixel value (the same in every channel) is its class: 13 classes (``CLASSES_13``), or the 8 of
EndoViT's benchmark (``CLASSES_8``: connective tissue, blood, cystic duct, hepatic vein and liver ligament become
one class, grasper and L-hook another). Two values are no class: 255, the white 1-pixel edges between regions, and
0, pixels nobody labelled; both become ``IGNORE``, as EndoViT does. Masks saved as RGBA (a few frames of videos 18,
35, 37) are put on white first, as EndoViT does. Default split: EndoViT's test videos ``TEST_VIDEOS`` score the
probe, all other videos fit it.

The probe: frozen encoder on every patch, tokens after the final norm, standardised (statistics of the training
tokens) -> one linear layer per patch -> logits upsampled bilinearly -> softmax cross-entropy that skips
``IGNORE`` pixels, + ``l2/2 * |W|^2``; L-BFGS from zero weights over all training frames at once, so it draws no
random numbers and gives the same result every time. Scoring upsamples the logits to each mask's own size; mIoU
is the mean over classes of TP / (TP + FP + FN) pooled over all test pixels (a class absent from both the truth
and the predictions is left out), pixel accuracy is over the pixels that are not ``IGNORE``.
"""
from __future__ import annotations

import re
from pathlib import Path

import datasets
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from endovit.data.cholecseg8k import (
    CLASSES_8,
    CLASSES_13,
    COLOURS_8,
    COLOURS_13,
    MERGE_8,
    TEST_VIDEOS,
    UNLABELLED,
    VIDEOS,
    WATERSHED,
)
from endovit.errors import DataError

__all__ = ["SEG_FORMAT", "SEG_CLASSES", "CLASSES_13", "CLASSES_8", "WATERSHED", "COLOURS_13", "IGNORE",
           "TEST_VIDEOS", "VIDEOS", "find_cholecseg8k", "read_mask", "cholecseg8k_frames", "fit_segmentation_probe",
           "predict_masks", "segmentation_scores", "segmentation_picture", "FIT_UPSAMPLE"]

SEG_FORMAT = "cholecseg8k"
SEG_CLASSES = (8, 13)
IGNORE = 255
# Fitting upsamples the logits to 4x the patch grid only (56x56 for ViT-B/16 at 224): full-batch L-BFGS then holds
# N x C x 56 x 56 logits instead of N x C x H x W; scoring upsamples to the masks' own size.
FIT_UPSAMPLE = 4
_FRAME = re.compile(r"frame_(\d+)_endo\.png")


def class_names(classes: int) -> list[str]:
    return CLASSES_8 if classes == 8 else CLASSES_13


def class_colours(classes: int) -> list[tuple[int, int, int]]:
    return COLOURS_8 if classes == 8 else COLOURS_13


def find_cholecseg8k(root: str | Path) -> list[tuple[Path, Path, str]]:
    """``(frame, watershed mask, video)`` of every ``videoNN/videoNN_SSSSS/frame_K_endo.png`` under ``root``, in
    video, clip and frame order; a frame without its watershed mask is a DataError naming the missing file."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root} does not exist; give the CholecSeg8k folder that holds the videoNN folders")
    found = []
    for frame in root.glob("*/*/frame_*_endo.png"):
        match = _FRAME.fullmatch(frame.name)
        if match:
            found.append((frame.parent.parent.name, frame.parent.name, int(match.group(1)), frame))
    if not found:
        raise DataError(f"no CholecSeg8k frames under {root}: expected videoNN/videoNN_SSSSS/frame_K_endo.png with "
                        "frame_K_endo_watershed_mask.png beside each")
    rows = []
    for video, _, _, frame in sorted(found, key=lambda row: row[:3]):
        mask = frame.with_name(frame.stem + "_watershed_mask.png")
        if not mask.is_file():
            raise DataError(f"{mask}: missing, the watershed mask of frame {frame}")
        rows.append((frame, mask, video))
    return rows


def read_mask(path: str | Path, size: tuple[int, int], classes: int = 8) -> np.ndarray:
    """Class ids (H, W) uint8 of a watershed mask whose frame is ``size`` (W, H); ``IGNORE`` for edges and
    unlabelled pixels. A size other than the frame's, or a value that is no CholecSeg8k class, is a DataError."""
    try:
        image = Image.open(path)
        image.load()
    except OSError as err:
        raise DataError(f"{path}: cannot read this watershed mask ({err})") from None
    if image.size != tuple(size):
        raise DataError(f"{path}: mask is {image.size[0]}x{image.size[1]} but its frame is {size[0]}x{size[1]}; "
                        "a mask must have its frame's size")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        white = Image.new("RGB", image.size, (255, 255, 255))  # EndoViT puts its RGBA masks on white
        white.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        image = white
    values = np.asarray(image.convert("RGB"))[..., 0]  # the class value is in every channel; EndoViT reads the first
    lut = np.full(256, -1, dtype=np.int16)
    ids = MERGE_8 if classes == 8 else range(13)
    lut[WATERSHED] = list(ids)
    lut[list(UNLABELLED)] = IGNORE
    mask = lut[values]
    if (bad := mask < 0).any():
        unknown = sorted(set(np.unique(values[bad]).tolist()))
        raise DataError(f"{path}: watershed value(s) {unknown} are no CholecSeg8k class (known: "
                        f"{', '.join(map(str, WATERSHED))}, and 255/0 for edges/unlabelled)")
    return mask.astype(np.uint8)


def cholecseg8k_frames(root: str | Path) -> tuple[datasets.Dataset, list[str], list[Path]]:
    """The frames as a dataset (``image``, ``video`` columns, in ``find_cholecseg8k`` order), their paths and
    their masks' paths."""
    rows = find_cholecseg8k(root)
    paths = [str(f) for f, _, _ in rows]
    frames = datasets.Dataset.from_dict({"image": paths, "video": [v for _, _, v in rows]})
    return frames.cast_column("image", datasets.Image(decode=False)), paths, [m for _, m, _ in rows]


def read_masks(frames: list[str], masks: list[Path], classes: int) -> np.ndarray:
    """(N, H, W) uint8 class ids; every mask must have its frame's size, and all frames one size."""
    out = []
    for frame, mask in zip(frames, masks, strict=True):
        with Image.open(frame) as image:
            size = image.size
        if out and size != out[0].shape[::-1]:
            raise DataError(f"{frame}: frame is {size[0]}x{size[1]} but the first probe frame is "
                            f"{out[0].shape[1]}x{out[0].shape[0]}; the segmentation probe needs one frame size")
        out.append(read_mask(mask, size, classes))
    return np.stack(out)


def _logits(tokens: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, size) -> torch.Tensor:
    """(N, h, w, D) standardised tokens -> (N, C, *size) logits, upsampled bilinearly."""
    logits = (tokens @ weight + bias).permute(0, 3, 1, 2)
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=False)


def _resize_masks(masks: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(masks[:, None].float(), size=tuple(size), mode="nearest")[:, 0].long()


def fit_segmentation_probe(tokens: torch.Tensor, masks: torch.Tensor, *, num_classes: int, l2: float = 1e-4,
                           max_iter: int = 100) -> dict[str, torch.Tensor]:
    """Weights of the linear probe on (N, h, w, D) patch tokens and (N, H, W) masks (module docstring)."""
    tokens = tokens.float()
    n, h, w, d = tokens.shape
    mean = tokens.reshape(-1, d).mean(dim=0)  # the linear probe's standardisation (classifiers.standardize)
    scale = (tokens.reshape(-1, d).var(dim=0, unbiased=False) + 1e-6).rsqrt()
    train = (tokens - mean) * scale
    size = (h * FIT_UPSAMPLE, w * FIT_UPSAMPLE)
    target = _resize_masks(masks.to(tokens.device), size)
    weight = torch.zeros(d, num_classes, device=tokens.device, requires_grad=True)
    bias = torch.zeros(num_classes, device=tokens.device, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20, tolerance_grad=1e-7,
                                  tolerance_change=1e-10, line_search_fn="strong_wolfe")
    if not (target != IGNORE).any():
        raise DataError("every pixel of the probe's training masks is an edge or unlabelled; nothing to fit")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(_logits(train, weight, bias, size), target, ignore_index=IGNORE)
        loss = loss + 0.5 * l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return {"weight": weight.detach(), "bias": bias.detach(), "mean": mean, "scale": scale}


@torch.no_grad()
def predict_masks(probe: dict[str, torch.Tensor], tokens: torch.Tensor, size, chunk: int = 16) -> torch.Tensor:
    """(N, H, W) uint8 predicted class ids at ``size`` (H, W) for (N, h, w, D) tokens."""
    out = []
    for start in range(0, tokens.shape[0], chunk):
        x = (tokens[start:start + chunk].float() - probe["mean"]) * probe["scale"]
        out.append(_logits(x, probe["weight"], probe["bias"], size).argmax(dim=1).to(torch.uint8).cpu())
    return torch.cat(out) if out else torch.zeros(0, *size, dtype=torch.uint8)


def segmentation_scores(pred: np.ndarray, target: np.ndarray, names: list[str]) -> dict[str, float]:
    """``miou``, ``acc`` (pixel accuracy) and ``iou/<class>`` (NaN for a class in neither) over all pixels whose
    target is not ``IGNORE``."""
    pred, target = np.asarray(pred).ravel().astype(np.int64), np.asarray(target).ravel().astype(np.int64)
    valid = target != IGNORE
    c = len(names)
    confusion = np.bincount(target[valid] * c + pred[valid], minlength=c * c).reshape(c, c)
    tp = np.diag(confusion).astype(np.float64)
    union = confusion.sum(axis=0) + confusion.sum(axis=1) - tp
    iou = np.divide(tp, union, out=np.full(c, np.nan), where=union > 0)
    present = iou[~np.isnan(iou)]
    return {"miou": float(present.mean()) if len(present) else float("nan"),
            "acc": float(tp.sum() / valid.sum()) if valid.any() else float("nan"),
            **{f"iou/{name}": float(v) for name, v in zip(names, iou, strict=True)}}


def _paint(ids: np.ndarray, colours: list) -> np.ndarray:
    palette = np.full((256, 3), 255, dtype=np.uint8)  # IGNORE (and anything unknown) is white, as in colour masks
    palette[:len(colours)] = colours
    return palette[ids]


def segmentation_picture(pixels: np.ndarray, truth: np.ndarray, pred: np.ndarray, classes: int) -> np.ndarray:
    """Rows of (frame | ground truth | prediction) for uint8 (N, H, W, 3) frames and (N, H, W) masks, with a legend
    of the classes below; (H', W', 3) uint8."""
    names, colours = class_names(classes), class_colours(classes)
    n, h, w = truth.shape
    rows = [np.concatenate([pixels[i], _paint(truth[i], colours), _paint(pred[i], colours)], axis=1)
            for i in range(n)]
    grid = np.concatenate(rows, axis=0)
    line = 14
    legend = Image.new("RGB", (grid.shape[1], line * (len(names) + 2) + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    draw.text((4, 2), "frame | ground truth | prediction   (white: edge / unlabelled, ignored)", fill=(0, 0, 0))
    for i, (name, colour) in enumerate(zip(names, colours, strict=True)):
        y = 2 + line * (i + 1)
        draw.rectangle([4, y + 1, 16, y + 11], fill=tuple(colour), outline=(0, 0, 0))
        draw.text((22, y), f"{i} {name}", fill=(0, 0, 0))
    return np.concatenate([grid, np.asarray(legend)], axis=0)
