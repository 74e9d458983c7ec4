"""A folder of frames -> a prepared dataset (Arrow shards + manifest, see ``store.py``).

Every frame is decoded in full once (so a corrupt or truncated file is found here, not mid-training),
optionally resized so its short side is ``short_side`` and re-encoded (JPEG or PNG), or kept byte for byte.
Shards are independent jobs spread over ``num_proc`` processes; each shard file is written under a
temporary name and renamed when complete, so an interrupted run leaves only complete shards and
re-running with the same arguments writes just the missing ones.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa
from PIL import Image
from tqdm.auto import tqdm

from endovit.data.frames import FrameError, decode_image, find_image_files, frame_number, video_name
from endovit.data.parallel import worker_pool
from endovit.data.splits import check_split_name, split_summary, split_videos, video_number
from endovit.data.store import (
    FEATURES,
    FORMAT,
    MANIFEST,
    PLAN,
    SHARDS_DIR,
    read_manifest,
    shard_name,
)
from endovit.errors import DataError, did_you_mean
from endovit.io import atomic_path, atomic_write_json, file_sha256

__all__ = ["IMAGE_FORMATS", "ON_ERROR", "PrepareSettings", "PrepareResult", "prepare_frames"]

IMAGE_FORMATS = ("jpeg", "png", "keep")
ON_ERROR = ("skip", "stop")


@dataclass(frozen=True)
class PrepareSettings:
    """How frames are stored; a re-run must use the same settings to resume."""

    source: str = ""  # source dataset name stored in every row; empty = the split name or the input folder's name
    split: str = ""  # a Cholec80 split name: keep only its videos; empty = all frames
    short_side: int = 256  # resize (down only) so the shorter side is this many pixels; 0 = keep the size
    image_format: str = "jpeg"  # jpeg | png (lossless) | keep (the original file's bytes, unchanged)
    quality: int = 95  # JPEG quality
    shard_size: int = 1000  # frames per shard
    on_error: str = "skip"  # skip (report and count corrupt frames) | stop (fail on the first one)

    def validate(self) -> PrepareSettings:
        """Self, or a DataError ``--key 'value': why`` for the first setting that cannot be used."""
        checks = (
            ("image_format", self.image_format in IMAGE_FORMATS, _choose(self.image_format, IMAGE_FORMATS)),
            ("image_format", self.image_format != "keep" or not self.short_side,
             "'keep' stores original bytes, so it needs --short_side 0"),
            ("short_side", self.short_side >= 0, "must be 0 (keep the size) or a positive number of pixels"),
            ("quality", 1 <= self.quality <= 100, "JPEG quality must be in 1..100"),
            ("shard_size", self.shard_size > 0, "must be a positive number of frames"),
            ("on_error", self.on_error in ON_ERROR, _choose(self.on_error, ON_ERROR)),
        )
        for key, ok, why in checks:
            if not ok:
                raise flag_error(key, getattr(self, key), why)
        if self.split:
            check_split_name(self.split)
        return self


def flag_error(key: str, value: object, why: str) -> DataError:
    """The one form of a bad-flag message: ``--key 'value': why`` (the recipe's ``bad`` writes the same)."""
    return DataError(f"--{key} {value!r}: {why}")


def _choose(value: str, choices: tuple[str, ...]) -> str:
    return f"choose one of {', '.join(choices)}{did_you_mean(value, choices)}"


@dataclass
class PrepareResult:
    """What a prepare run left on disk and what it did."""

    path: Path
    manifest: dict
    written_shards: int
    reused_shards: int

    @property
    def frames(self) -> int:
        return self.manifest["frames"]

    @property
    def skipped(self) -> list[dict]:
        return self.manifest["skipped"]


def _encode(path: Path, settings: PrepareSettings) -> tuple[bytes, int, int]:
    """Fully decoded (checked, by the training decode), optionally resized and re-encoded bytes, plus the
    original height and width (upright, as decoded)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise FrameError(str(path), str(err)) from None
    rgb = decode_image({"bytes": data, "path": str(path)})
    width, height = rgb.size
    if settings.image_format == "keep":
        return data, height, width
    if settings.short_side and min(width, height) > settings.short_side:
        scale = settings.short_side / min(width, height)
        size = ((settings.short_side, round(height * scale)) if width <= height
                else (round(width * scale), settings.short_side))
        rgb = rgb.resize(size, Image.BICUBIC)
    buffer = io.BytesIO()
    if settings.image_format == "jpeg":
        rgb.save(buffer, format="JPEG", quality=settings.quality)
    else:
        rgb.save(buffer, format="PNG", compress_level=3)
    return buffer.getvalue(), height, width


@dataclass(frozen=True)
class _ShardJob:
    index: int
    root: str
    files: tuple[str, ...]  # paths relative to root
    out: str
    settings: PrepareSettings


def _write_shard(job: _ShardJob) -> dict:
    """Encode one shard's frames and write ``<name>.json`` then ``<name>.arrow`` (renamed into place)."""
    name = shard_name(job.index)
    rows: dict[str, list] = {key: [] for key in FEATURES}
    videos: Counter = Counter()
    skipped = []
    for rel in job.files:
        path = Path(job.root, rel)
        try:
            data, height, width = _encode(path, job.settings)
        except FrameError as err:
            if job.settings.on_error == "stop":
                raise DataError(f"corrupt frame {path}: {err.reason}; replace or remove it, or pass --on_error skip"
                                ) from None
            skipped.append({"path": str(path), "error": err.reason})
            continue
        video = video_name(path, Path(job.root))
        rows["image"].append({"bytes": data, "path": rel})
        rows["source"].append(job.settings.source)
        rows["video"].append(video)
        rows["frame_index"].append(frame_number(path))
        rows["orig_height"].append(height)
        rows["orig_width"].append(width)
        videos[video] += 1
    shards = Path(job.out, SHARDS_DIR)
    table = datasets.Dataset.from_dict(rows, features=FEATURES).data.table
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    data = sink.getvalue()
    meta = {"name": name, "frames": len(rows["image"]), "videos": dict(videos), "skipped": skipped,
            "bytes": data.size, "sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_json(shards / f"{name}.json", meta)
    with atomic_path(shards / f"{name}.arrow") as tmp:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    return meta


def _select_files(root: Path, split: str) -> list[Path]:
    files = find_image_files(root)
    if not files:
        raise DataError(f"no image files found under {root}; expected frames such as "
                        "frames/videoNN/videoNN_NNNNNN.png (Cholec80) or any folder of .png/.jpg files")
    if not split:
        return files
    videos = {f: video_name(f, root) for f in files}
    if not any(video_number(v) is not None for v in videos.values()):
        found = sorted(set(videos.values()))[:5]
        raise DataError(f"{root} is not in the Cholec80 layout needed by --split {split}: expected "
                        f"frames/videoNN/videoNN_NNNNNN.png, found folders {found}")
    wanted = split_videos(split)
    selected = [f for f in files if video_number(videos[f]) in wanted]
    if not selected:
        present = sorted({n for v in videos.values() if (n := video_number(v)) is not None})
        raise DataError(f"Cholec80 split {split} is empty under {root}: it takes videos {sorted(wanted)}, "
                        f"found videos {present}")
    return selected


def prepare_frames(input_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   settings: PrepareSettings = PrepareSettings(), num_proc: int = 1, overwrite: bool = False,
                   progress: bool = True, log: Callable[[str], None] = print) -> PrepareResult:
    """Prepare the frames under ``input_dir`` into ``out_dir``; resumes a matching unfinished run."""
    root = Path(input_dir)
    if not root.is_dir():
        raise DataError(f"--input {root} is not a folder; pass the folder holding the frames (e.g. Cholec80/frames)")
    source = settings.source or settings.split or (root.parent.name if root.name == "frames" else root.name)
    settings = dataclasses.replace(settings, source=source).validate()
    files = _select_files(root, settings.split)
    relative = [f.relative_to(root).as_posix() for f in files]
    chunks = [tuple(relative[i:i + settings.shard_size]) for i in range(0, len(relative), settings.shard_size)]
    plan = {
        "format": FORMAT,
        "settings": dataclasses.asdict(settings),
        "frames": len(relative),
        "shards": len(chunks),
        "files_sha1": hashlib.sha1("\n".join(relative).encode()).hexdigest(),
    }
    out = Path(out_dir)
    plan = _resume_or_create(out, plan, overwrite)

    shards_dir = out / SHARDS_DIR
    shards_dir.mkdir(parents=True, exist_ok=True)
    for stale in shards_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    jobs = [_ShardJob(i, str(root), chunk, str(out), settings) for i, chunk in enumerate(chunks)
            if not (shards_dir / f"{shard_name(i)}.arrow").is_file()]
    done = len(relative) - sum(len(job.files) for job in jobs)
    with worker_pool(min(num_proc, len(jobs))) as pool, tqdm(
            total=len(relative), initial=done, unit="frame", desc=f"prepare {source}", disable=not progress) as bar:
        by_index = {job.index: job for job in jobs}
        results = pool.imap_unordered(_write_shard, jobs) if pool else map(_write_shard, jobs)
        for meta in results:
            bar.update(len(by_index[int(meta["name"].split("-")[1])].files))
            for skip in meta["skipped"]:
                bar.write(f"skipped corrupt frame {skip['path']}: {skip['error']}")

    manifest = _finish(out, plan, settings)
    result = PrepareResult(out, manifest, written_shards=len(jobs), reused_shards=len(chunks) - len(jobs))
    log(f"{out}: {result.frames} frames of {source} in {len(chunks)} shards ({result.written_shards} written, "
        f"{result.reused_shards} already complete); {len(result.skipped)} corrupt frames skipped")
    if any(video_number(v) is not None for v in manifest["videos"]):
        log(split_summary(manifest["videos"]))
    return result


def _resume_or_create(out: Path, plan: dict, overwrite: bool) -> dict:
    """Start ``out`` with ``plan``, or check an existing plan matches it (resume); returns the plan in force."""
    if overwrite and ((out / PLAN).is_file() or (out / MANIFEST).is_file()):
        shutil.rmtree(out)
    if not (out / PLAN).is_file():
        if out.exists() and any(not entry.name.endswith(".tmp") for entry in out.iterdir()):
            raise DataError(f"--out {out} is not empty and holds no prepared dataset; choose an empty or new folder")
        out.mkdir(parents=True, exist_ok=True)
        plan = {**plan, "id": uuid.uuid4().hex}
        atomic_write_json(out / PLAN, plan)
        return plan
    existing = json.loads((out / PLAN).read_text())
    keys = ("format", "settings", "frames", "shards", "files_sha1")
    changed = [key for key in keys if existing.get(key) != plan[key]]
    if changed:
        raise DataError(f"--out {out} was prepared from other input or settings ({', '.join(changed)} differ); "
                        "pass --overwrite true to start again, or choose another --out")
    return existing


def _finish(out: Path, plan: dict, settings: PrepareSettings) -> dict:
    """Collect the shard records into the manifest and write it (the dataset's completion marker)."""
    existing = read_manifest(out)
    if existing is not None:
        return existing
    shards, videos, skipped = [], Counter(), []
    for i in range(plan["shards"]):
        name = shard_name(i)
        meta = json.loads((out / SHARDS_DIR / f"{name}.json").read_text())
        arrow = out / SHARDS_DIR / f"{name}.arrow"
        shards.append({"name": name, "frames": meta["frames"], "bytes": arrow.stat().st_size,
                       "sha256": meta.get("sha256") or file_sha256(arrow)})  # shards of older runs: hash them now
        videos.update(meta["videos"])
        skipped.extend(meta["skipped"])
    manifest = {
        "format": FORMAT,
        "id": plan["id"],
        "source": settings.source,
        "split": settings.split,
        "settings": plan["settings"],
        "frames": sum(s["frames"] for s in shards),
        "videos": dict(sorted(videos.items())),
        "skipped": skipped,
        "shards": shards,
        "stats": None,
    }
    atomic_write_json(out / MANIFEST, manifest)
    return manifest
