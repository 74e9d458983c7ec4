"""Endoscopic frames as a Hugging Face ``datasets`` image dataset.

Accepted inputs: a folder of image files in any nesting (Cholec80: ``frames/videoNN/videoNN_NNNNNN.png``),
a prepared dataset (``scripts/prepare_data.py``; local or ``s3://``), a folder written by
``Dataset.save_to_disk`` (local or remote), or a folder / file of parquet shards. Images stay undecoded
(``Image(decode=False)``) until a DataLoader worker needs them, so a bad file is reported with its path
at that moment and memory stays flat.
"""
from __future__ import annotations

import io
import os
import re
from collections.abc import Callable
from pathlib import Path

import datasets
import fsspec
from PIL import Image, UnidentifiedImageError

from endovit.data.store import MANIFEST, is_prepared, is_remote, load_prepared
from endovit.errors import DataError

__all__ = ["DataError", "IMAGE_EXTENSIONS", "load_frames", "decode_image", "find_image_files", "frame_number",
           "video_name"]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def find_image_files(root: Path) -> list[Path]:
    """Image files under ``root`` (recursive, hidden files skipped), in a stable sorted order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found.extend(
            Path(dirpath, f) for f in filenames if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_EXTENSIONS
        )
    return sorted(found)


def frame_number(path: Path) -> int:
    """The frame index in a file name: its last group of digits (``video01_000042.png`` -> 42), else -1."""
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else -1


def video_name(path: Path, root: Path) -> str:
    """The video a frame belongs to: its folder's name (``videoNN`` in Cholec80), empty at the top level."""
    return path.parent.name if path.parent != root else ""


def _from_image_folder(root: Path) -> datasets.Dataset:
    files = find_image_files(root)
    if not files:
        raise DataError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}; "
            "point the data flag at a folder of frames or at a prepared dataset"
        )
    table = {
        "image": [str(p) for p in files],
        "video": [video_name(p, root) for p in files],
        "frame_index": [frame_number(p) for p in files],
    }
    features = datasets.Features({
        "image": datasets.Image(decode=False),
        "video": datasets.Value("string"),
        "frame_index": datasets.Value("int64"),
    })
    return datasets.Dataset.from_dict(table, features=features)


def _parquet_files(path: Path) -> list[str]:
    if path.is_file():
        return [str(path)] if path.suffix == ".parquet" else []
    return sorted(str(p) for p in path.rglob("*.parquet"))


def _is_saved_dataset(fs, root: str) -> bool:
    return any(fs.isfile(f"{root}/{name}") for name in ("dataset_info.json", "dataset_dict.json"))


def _pick_split(loaded, path, split: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"dataset {path} has splits {list(loaded)}, not {split!r}")
        return loaded[split]
    return loaded


def _load_any(path: str | os.PathLike, split: str, storage_options: dict | None, cache_dir) -> datasets.Dataset:
    """The dataset at ``path`` in whichever accepted form it has (see ``load_frames``)."""
    remote = is_remote(path)
    if not remote and not Path(path).exists():
        raise DataError(f"data path {path} does not exist; pass a folder of frames or a prepared dataset")
    if is_prepared(path, storage_options):
        return load_prepared(path, storage_options, cache_dir)[0]
    fs, root = fsspec.core.url_to_fs(str(path), **(storage_options or {}))
    if _is_saved_dataset(fs, root.rstrip("/")):
        options = {"storage_options": storage_options} if remote else {}
        return _pick_split(datasets.load_from_disk(str(path), **options), path, split)
    if remote:
        raise DataError(f"{path} is neither a prepared dataset ({MANIFEST}) nor a save_to_disk folder; remote data "
                        "must be prepared first (scripts/prepare_data.py) and uploaded as a whole folder")
    path = Path(path)
    if parquet := _parquet_files(path):
        return datasets.Dataset.from_parquet(parquet)
    if path.is_dir():
        return _from_image_folder(path)
    raise DataError(f"data path {path} is a file; pass a folder of frames or a prepared dataset")


def load_frames(path: str | os.PathLike, split: str = "train", storage_options: dict | None = None,
                cache_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """Load frames from an image folder, a prepared dataset, a ``save_to_disk`` folder, or parquet shards.

    ``path`` may be a URL (``s3://bucket/prefix``) of a prepared or ``save_to_disk`` dataset; credentials and
    endpoint come from ``storage_options`` or the standard AWS environment (``AWS_ENDPOINT_URL``, ...), and
    remote shards are cached under ``cache_dir`` (default: the datasets cache). ``split`` picks one split of a
    saved ``DatasetDict``. Returns a dataset with an undecoded ``image`` column (plus whatever metadata it
    carries).
    """
    dataset = _load_any(path, split, storage_options, cache_dir)
    if "image" not in dataset.column_names:
        raise DataError(f"dataset {path} has no 'image' column (columns: {', '.join(dataset.column_names)})")
    if len(dataset) == 0:
        raise DataError(f"dataset {path} is empty")
    if not isinstance(dataset.features["image"], datasets.Image) or dataset.features["image"].decode:
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    return dataset


def decode_image(item: dict, draft: Callable[[int, int], tuple[int, int]] | None = None) -> Image.Image:
    """Decode one undecoded ``image`` cell ({'bytes', 'path'}) to RGB; errors name the file.

    ``draft(width, height)`` gives the smallest size the caller can use; a JPEG is then decoded at the
    coarsest DCT scale (1/2, 1/4, 1/8) that is still at least that large. Other formats decode in full.
    """
    where = item.get("path") or "<embedded image bytes>"
    try:
        source = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
        with Image.open(source) as img:
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft(*img.size))
            img.load()
            return img if img.mode == "RGB" else img.convert("RGB")
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as err:
        raise DataError(
            f"cannot decode frame {where}: {err}; remove or replace the file"
        ) from None
