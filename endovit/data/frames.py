"""Endoscopic frames as a Hugging Face ``datasets`` image dataset.

Accepted inputs: a folder of image files in any nesting (Cholec80: ``frames/videoNN/videoNN_NNNNNN.png``),
a folder written by ``Dataset.save_to_disk``, or a folder / file of parquet shards. Images stay
undecoded (``Image(decode=False)``) until a DataLoader worker needs them, so a bad file is reported
with its path at that moment and memory stays flat.
"""
from __future__ import annotations

import io
import os
import re
from pathlib import Path

import datasets
from PIL import Image, UnidentifiedImageError

__all__ = ["DataError", "IMAGE_EXTENSIONS", "load_frames", "decode_image", "find_image_files"]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class DataError(ValueError):
    """Input data that cannot be used; the message names the path and what to do."""


def find_image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, hidden files skipped), in a stable sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            Path(dirpath, f) for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        )
    return sorted(found)


def _frame_index(path: Path) -> int:
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else -1


def _from_image_folder(root: Path) -> datasets.Dataset:
    files = find_image_files(root)
    if not files:
        raise DataError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}; "
            "point the data flag at a folder of frames or at a prepared dataset"
        )
    table = {
        "image": [str(p) for p in files],
        "video": [p.parent.name if p.parent != root else "" for p in files],
        "frame_index": [_frame_index(p) for p in files],
    }
    features = datasets.Features(
        {"image": datasets.Image(decode=False), "video": datasets.Value("string"), "frame_index": datasets.Value("int64")}
    )
    return datasets.Dataset.from_dict(table, features=features)


def _parquet_files(path: Path) -> list[str]:
    if path.is_file():
        return [str(path)] if path.suffix == ".parquet" else []
    return sorted(str(p) for p in path.rglob("*.parquet"))


def load_frames(path: str | os.PathLike, split: str = "train") -> datasets.Dataset:
    """Load frames from an image folder, a ``save_to_disk`` folder, or parquet shards.

    Returns a dataset with an undecoded ``image`` column (plus whatever metadata it carries).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"data path {path} does not exist; pass a folder of frames or a prepared dataset")
    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "dataset_dict.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            if split not in loaded:
                raise DataError(f"dataset {path} has splits {list(loaded)}, not {split!r}")
            loaded = loaded[split]
        dataset = loaded
    elif parquet := _parquet_files(path):
        dataset = datasets.Dataset.from_parquet(parquet)
    elif path.is_dir():
        dataset = _from_image_folder(path)
    else:
        raise DataError(f"data path {path} is a file; pass a folder of frames or a prepared dataset")
    if "image" not in dataset.column_names:
        raise DataError(f"dataset {path} has no 'image' column (columns: {', '.join(dataset.column_names)})")
    if len(dataset) == 0:
        raise DataError(f"dataset {path} is empty")
    if not isinstance(dataset.features["image"], datasets.Image) or dataset.features["image"].decode:
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    return dataset


def decode_image(item: dict) -> Image.Image:
    """Decode one undecoded ``image`` cell ({'bytes', 'path'}) to RGB; errors name the file."""
    where = item.get("path") or "<embedded image bytes>"
    try:
        source = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
        with Image.open(source) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise DataError(
            f"cannot decode frame {where}: {err}; remove or replace the file"
        ) from None
