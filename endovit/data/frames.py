"""Endoscopic frames as a Hugging Face ``datasets`` image dataset.

Accepted inputs: a folder of image files in any nesting (Cholec80: ``frames/videoNN/videoNN_NNNNNN.png``),
a prepared dataset (``scripts/prepare_data.py``; local or ``s3://``), a folder written by
``Dataset.save_to_disk`` (local or remote), or a folder / file of parquet shards. Images stay undecoded
(``Image(decode=False)``) until a DataLoader worker needs them, so a bad file is reported with its path
at that moment and memory stays flat.
"""
from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from endovit.data.store import MANIFEST, filesystem, is_prepared, load_prepared, require_image_bytes
from endovit.data.video import is_video_file
from endovit.errors import DataError, counted, did_you_mean
from endovit.io import is_plain_name, is_remote, walk_once

__all__ = ["DataError", "FrameError", "IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS", "DataLocation", "locate",
           "load_location", "load_frames", "decode_image",
           "max_pixels", "list_files", "is_image_file", "find_image_files", "frame_number", "video_name"]

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}
# The only decoders Pillow may pick (it picks by content, not by name): those of IMAGE_EXTENSIONS. Without this list
# a file named .png that holds PostScript is handed to Ghostscript, an external program.
DECODED_FORMATS = ("PNG", "JPEG", "BMP", "TIFF", "WEBP")
DEFAULT_MAX_PIXELS = 64_000_000  # 64 MP per frame (8000 x 8000); a 4K frame has 8.3 MP


def list_files(root: Path) -> list[Path]:
    """Every file under ``root`` (recursive, hidden files and folders skipped), in a stable sorted order.

    Linked folders are followed, each real folder once (by device and inode): a link back up the tree (a loop)
    or a second link to a folder already walked is skipped, and the skipped links are reported in one warning.
    """
    folders, skipped = walk_once(root, keep_folder=lambda name: not name.startswith("."))
    if skipped:
        warnings.warn(f"{root}: skipped {len(skipped)} linked folder(s) already walked (a symlink loop or a second "
                      f"link to the same folder), e.g. {skipped[0]}", stacklevel=3)
    return sorted(Path(dirpath, f) for dirpath, filenames in folders for f in filenames if not f.startswith("."))


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def find_image_files(root: Path) -> list[Path]:
    """The image files of ``list_files(root)``."""
    return [p for p in list_files(root) if is_image_file(p)]


def frame_number(path: Path) -> int:
    """The frame index in a file name: its last group of digits (``video01_000042.png`` -> 42), else -1."""
    digits = re.findall(r"\d+", path.stem)
    return int(digits[-1]) if digits else -1


def video_name(path: Path, root: Path) -> str:
    """The video a frame belongs to: its folder's name (``videoNN`` in Cholec80), empty at the top level."""
    return path.parent.name if path.parent != root else ""


def _from_image_folder(root: Path) -> datasets.Dataset:
    everything = list_files(root)
    files = [p for p in everything if is_image_file(p)]
    if not files:
        if videos := [p for p in everything if is_video_file(p)]:
            raise DataError(
                f"{root} holds video files ({counted(len(videos), 'video')}, e.g. {videos[0].name}), not frames; "
                f"prepare them first (python scripts/prepare_data.py --input {root} --out PREPARED) and give "
                "PREPARED here"
            )
        raise DataError(
            f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) found under {root}; "
            "give a folder of frames or a prepared dataset"
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


def _require_files_inside(fs, root: str, path) -> None:
    """A ``save_to_disk`` folder names its splits and Arrow files in JSON, which ``datasets`` joins to the folder
    unchecked: an absolute or ``..`` name would read data from elsewhere on this machine."""

    def read(name: str) -> dict:
        try:
            content = json.loads(fs.cat_file(f"{root}/{name}")) if fs.isfile(f"{root}/{name}") else {}
        except ValueError as err:
            raise DataError(f"{path}: {name} is not valid JSON ({err}); save the dataset again with "
                            "save_to_disk") from None
        return content if isinstance(content, dict) else {}

    if fs.isfile(f"{root}/dataset_dict.json"):
        splits = read("dataset_dict.json").get("splits", [])
        if bad := [split for split in splits if not is_plain_name(split)]:
            raise DataError(f"{path}: dataset_dict.json names split {bad[0]!r}, not a folder inside it; save the "
                            "dataset again with save_to_disk")
        folders = [f"{split}/" for split in splits]
    else:
        folders = [""]
    for folder in folders:
        files = read(f"{folder}state.json").get("_data_files", [])
        names = [entry.get("filename") if isinstance(entry, dict) else entry for entry in files]
        if bad := [name for name in names if not is_plain_name(name)]:
            raise DataError(f"{path}: {folder}state.json names data file {bad[0]!r}, not a file inside its folder; "
                            "save the dataset again with save_to_disk")


def _pick_split(loaded, path, split: str) -> datasets.Dataset:
    if isinstance(loaded, datasets.DatasetDict):
        if split not in loaded:
            raise DataError(f"dataset {path} has no split {split!r}{did_you_mean(split, loaded)}; its splits are "
                            f"{', '.join(loaded)} (choose one with --train_split / --val_split)")
        return loaded[split]
    return loaded


@dataclass(frozen=True)
class DataLocation:
    """One dataset's place and form, found once by :func:`locate`; :func:`load_location` loads it without asking
    again. ``kind``: ``prepared`` (a manifest, or an unfinished prepare's plan), ``saved`` (``save_to_disk``),
    ``parquet`` (local shards) or ``images`` (a local folder of frames)."""

    path: str
    kind: str
    storage_options: dict | None = dataclasses.field(default=None, compare=False)
    files: tuple[str, ...] = ()  # the parquet shards (found while locating: the tree is walked once)


def locate(path: str | os.PathLike, storage_options: dict | None = None) -> DataLocation:
    """Which accepted form the data at ``path`` has (see ``load_frames``); DataError when it has none."""
    remote = is_remote(path)
    if not remote and not Path(path).exists():
        raise DataError(f"data path {path} does not exist; pass a folder of frames or a prepared dataset")
    where = DataLocation(str(path), "", storage_options)
    if is_prepared(path, storage_options):
        return dataclasses.replace(where, kind="prepared")
    fs, root = filesystem(path, storage_options)
    if _is_saved_dataset(fs, root.rstrip("/")):
        return dataclasses.replace(where, kind="saved")
    if remote:
        raise DataError(f"{path} is neither a prepared dataset ({MANIFEST}) nor a save_to_disk folder; remote data "
                        "must be prepared first (scripts/prepare_data.py) and uploaded as a whole folder")
    if parquet := _parquet_files(Path(path)):
        return dataclasses.replace(where, kind="parquet", files=tuple(parquet))
    if Path(path).is_dir():
        return dataclasses.replace(where, kind="images")
    raise DataError(f"data path {path} is a file; pass a folder of frames or a prepared dataset")


def load_location(where: DataLocation, split: str = "train",
                  cache_dir: str | os.PathLike | None = None) -> tuple[datasets.Dataset, dict | None]:
    """The frames at ``where`` (an undecoded ``image`` column plus whatever metadata they carry) and, for a
    prepared dataset, its manifest (else None). ``split`` picks one split of a saved ``DatasetDict``."""
    path, options, manifest = where.path, where.storage_options, None
    if where.kind == "prepared":
        dataset, manifest = load_prepared(path, options, cache_dir)
    elif where.kind == "saved":
        fs, root = filesystem(path, options)
        _require_files_inside(fs, root.rstrip("/"), path)
        extra = {"storage_options": options} if is_remote(path) else {}
        dataset = _pick_split(datasets.load_from_disk(path, **extra), path, split)
        if "image" in dataset.column_names:
            require_image_bytes(dataset, path)
    elif where.kind == "parquet":
        dataset = datasets.Dataset.from_parquet(list(where.files))
    else:
        dataset = _from_image_folder(Path(path))
    if "image" not in dataset.column_names:
        raise DataError(f"dataset {path} has no 'image' column (columns: {', '.join(dataset.column_names)})")
    if len(dataset) == 0:
        raise DataError(f"dataset {path} is empty")
    if not isinstance(dataset.features["image"], datasets.Image) or dataset.features["image"].decode:
        dataset = dataset.cast_column("image", datasets.Image(decode=False))
    return dataset, manifest


def load_frames(path: str | os.PathLike, split: str = "train", storage_options: dict | None = None,
                cache_dir: str | os.PathLike | None = None) -> datasets.Dataset:
    """Load frames from an image folder, a prepared dataset, a ``save_to_disk`` folder, or parquet shards.

    ``path`` may be a URL (``s3://bucket/prefix``) of a prepared or ``save_to_disk`` dataset; credentials and
    endpoint come from ``storage_options`` or the standard AWS environment (``AWS_ENDPOINT_URL``, ...), and
    remote shards are cached under ``cache_dir`` (default: the datasets cache). ``split`` picks one split of a
    saved ``DatasetDict``. Returns a dataset with an undecoded ``image`` column (plus whatever metadata it
    carries).
    """
    return load_location(locate(path, storage_options), split, cache_dir)[0]


class FrameError(DataError):
    """A frame that cannot be decoded or used; ``reason`` is the message without the file name."""

    def __init__(self, where: str, reason: str | None = None):
        if reason is None:  # rebuilt from its message alone: torch re-raises a worker's error as type(message)
            super().__init__(where)
            self.where, self.reason = "", where
            return
        super().__init__(f"cannot decode frame {where}: {reason}; remove or replace the file")
        self.where, self.reason = where, reason

    def __reduce__(self):
        return type(self), (self.where, self.reason) if self.where else (self.reason,)


def max_pixels() -> int:
    """The pixel limit of one frame: ``ENDOVIT_MAX_PIXELS`` from the environment (so DataLoader workers see it
    too; 0 or less: no limit of ours), else ``DEFAULT_MAX_PIXELS``."""
    text = os.environ.get("ENDOVIT_MAX_PIXELS", "").strip()
    try:
        return int(float(text)) if text else DEFAULT_MAX_PIXELS
    except ValueError:
        raise DataError(f"ENDOVIT_MAX_PIXELS={text!r} is not a number of pixels (e.g. 100000000)") from None


def decode_image(item: dict, draft: Callable[[int, int], tuple[int, int]] | None = None,
                 limit: int | None = None) -> Image.Image:
    """Decode one undecoded ``image`` cell ({'bytes', 'path'}) to 8-bit RGB, faithfully for every mode PIL opens.

    The one decode of the project (prepare, stats, training, validation, figures). EXIF orientation is
    applied as ``datasets``' ``Image`` feature does. Modes: 1, L and P become grey or palette RGB; 16-bit grey
    (I;16, I;16B, I;16L, and I, read as 0..65535) is scaled to 8 bit by round(v / 257), so v * 257 decodes to v;
    CMYK and YCbCr are converted; alpha (LA, RGBA, PA, P with transparency) is composited on black, like the
    black surround of an endoscope's field of view (transparent pixels become black, opaque ones keep their
    colour); 32-bit float (F) is refused. Only ``DECODED_FORMATS`` are opened, whatever the file is named. A frame
    over ``limit`` pixels (default ``max_pixels()``, 64 MP) is refused before it is decoded. ``draft(width,
    height)`` gives the smallest size the caller can use; a JPEG is then decoded at the coarsest DCT scale (1/2,
    1/4, 1/8) that is still at least that large. Every failure is a ``FrameError`` (a DataError) naming the file.
    """
    where = item.get("path") or "<embedded image bytes>"
    limit = max_pixels() if limit is None else limit
    try:
        source = io.BytesIO(item["bytes"]) if item.get("bytes") else item["path"]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit decides below
            img = Image.open(source, formats=DECODED_FORMATS)
        with img:
            width, height = img.size
            if 0 < limit < width * height:
                raise FrameError(where, f"{width}x{height} is {width * height / 1e6:.0f} megapixels, over the limit "
                                        f"of {limit / 1e6:g} MP; set ENDOVIT_MAX_PIXELS to allow it")
            if draft is not None and img.format == "JPEG":
                img.draft("RGB", draft(*img.size))
            img.load()
            return _to_rgb(_upright(img), where)
    except FrameError:
        raise
    except Image.DecompressionBombError as err:
        raise FrameError(where, f"{err} (Pillow's limit, PIL.Image.MAX_IMAGE_PIXELS)") from None
    except UnidentifiedImageError:
        raise FrameError(where, f"not a {', '.join(DECODED_FORMATS)} image, the formats frames may have") from None
    except (OSError, ValueError, SyntaxError) as err:
        raise FrameError(where, str(err)) from None
    except Exception as err:  # a decoder's own failure on hostile bytes (struct.error, IndexError, ...)
        raise FrameError(where, f"{type(err).__name__}: {err}") from None


_ORIENTATION = 0x0112


def _upright(img: Image.Image) -> Image.Image:
    """``img`` turned as its EXIF orientation says (``ImageOps.exif_transpose``); itself when it has none."""
    if img.getexif().get(_ORIENTATION, 1) in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(img)
    return img


_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def _to_rgb(img: Image.Image, where: str) -> Image.Image:
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in _SIXTEEN_BIT:
        values = np.clip(np.asarray(img).astype(np.int64), 0, 65535)
        return Image.fromarray(((values + 128) // 257).astype(np.uint8), "L").convert("RGB")
    if mode == "F" or mode.startswith("I;"):
        raise FrameError(where, f"pixel mode {mode} (float or unusual integer pixels) is not supported; "
                                "store frames as 8- or 16-bit grey or RGB")
    if mode in ("LA", "La", "PA", "RGBa") or (mode == "P" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        black = Image.new("RGB", img.size)
        black.paste(img.convert("RGB"), mask=img.getchannel("A"))
        return black
    return img.convert("RGB")
