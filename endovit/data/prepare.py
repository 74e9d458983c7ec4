"""A folder of frames and/or videos -> a prepared dataset (Arrow shards + manifest, see ``store.py``).

Every frame is decoded in full once (so a corrupt or truncated file is found here, not mid-training),
optionally resized so its short side is ``short_side`` and re-encoded (JPEG or PNG), or kept byte for byte.
Shards are independent jobs spread over ``num_proc`` processes; each shard file is written under a
temporary name and renamed when complete, so an interrupted run leaves only complete shards and
re-running with the same arguments writes just the missing ones.

Videos (``video.py``) are sampled at ``fps`` by presentation time; each chunk of ``shard_size`` sampling ticks
of one video is one shard (one unit of work), so a killed run loses at most a chunk per worker, not a video.
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
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import datasets
import pyarrow as pa
from PIL import Image
from tqdm.auto import tqdm

from endovit.data.frames import FrameError, decode_image, frame_number, video_name
from endovit.data.parallel import worker_pool
from endovit.data.prepare_inputs import find_inputs, input_name, select_files
from endovit.data.splits import check_split_name, split_summary, video_number
from endovit.data.store import (
    FEATURES,
    FORMAT,
    MANIFEST,
    PLAN,
    SHARDS_DIR,
    read_manifest,
    shard_name,
)
from endovit.data.video import NotAVideo, chunk_ticks, decode_chunk, probe_video
from endovit.errors import DataError, counted, did_you_mean
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
    fps: float = 1.0  # videos: frames sampled per second of presentation time; 0 = every frame

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
            ("fps", self.fps >= 0, "must be 0 (every frame) or a positive number of frames per second"),
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
    return encode_rgb(rgb, settings), height, width


def encode_rgb(rgb: Image.Image, settings: PrepareSettings) -> bytes:
    """An upright RGB frame resized (down only) to ``short_side`` and encoded as the settings say: the one
    resize + encode of frames and video frames alike."""
    width, height = rgb.size
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
    return buffer.getvalue()


@dataclass(frozen=True)
class _ShardJob:
    index: int
    root: str
    files: tuple[str, ...]  # paths relative to root
    out: str
    settings: PrepareSettings
    ticks: tuple[int, int] | None = None  # a video chunk: files is (the video,), these sampling ticks [first, end)
    rate: float = 0.0  # the video's nominal frame rate

    @property
    def size(self) -> int:
        return self.ticks[1] - self.ticks[0] if self.ticks else len(self.files)


def _video_rows(job: _ShardJob, rows: dict[str, list], videos: Counter) -> list[dict]:
    """Decode one video chunk into ``rows``; returns its decode errors (a truncated or damaged file)."""
    rel = job.files[0]
    path = Path(job.root, rel)
    video = Path(rel).stem
    messages: list[str] = []
    for decoded in decode_chunk(path, fps=job.settings.fps, first=job.ticks[0], end=job.ticks[1], rate=job.rate,
                                errors=messages):
        width, height = decoded.image.size
        rows["image"].append({"bytes": encode_rgb(decoded.image, job.settings),
                              "path": f"{rel}#t={decoded.time:.6f}"})
        rows["source"].append(job.settings.source)
        rows["video"].append(video)
        rows["frame_index"].append(decoded.frame_index)
        rows["time"].append(decoded.time)
        rows["orig_height"].append(height)
        rows["orig_width"].append(width)
        videos[video] += 1
    if messages and job.settings.on_error == "stop":
        raise DataError(f"damaged video {path}: {messages[0]} (ticks {job.ticks[0]}..{job.ticks[1]}); replace or "
                        "remove it, or pass --on_error skip to keep its decodable frames")
    return [{"path": str(path), "ticks": list(job.ticks), "error": m} for m in messages]


def _write_shard(job: _ShardJob) -> dict:
    """Encode one shard's frames and write ``<name>.json`` then ``<name>.arrow`` (renamed into place)."""
    name = shard_name(job.index)
    rows: dict[str, list] = {key: [] for key in FEATURES}
    videos: Counter = Counter()
    skipped: list[dict] = []
    video_errors = _video_rows(job, rows, videos) if job.ticks else []
    for rel in job.files if not job.ticks else ():
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
        rows["time"].append(None)
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
    if job.ticks:
        meta["video_errors"] = video_errors
    atomic_write_json(shards / f"{name}.json", meta)
    with atomic_path(shards / f"{name}.arrow") as tmp:
        with open(tmp, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
    return meta


def _plan_videos(base: Path, videos: list[Path], settings: PrepareSettings, first_index: int,
                 out: str) -> tuple[list[_ShardJob], list[dict]]:
    """One job per chunk of each readable video, and the files with a video name that are not videos."""
    jobs, not_videos = [], []
    for path in videos:
        rel = path.relative_to(base).as_posix()
        try:
            info = probe_video(path)
        except NotAVideo as err:
            if settings.on_error == "stop":
                raise DataError(f"{err}; remove it, or pass --on_error skip to skip it") from None
            not_videos.append({"path": str(path), "error": str(err)})
            continue
        for ticks in chunk_ticks(info, settings.fps, settings.shard_size):
            jobs.append(_ShardJob(first_index + len(jobs), str(base), (rel,), out, settings, ticks, info.rate))
    return jobs, not_videos


def prepare_frames(input_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   settings: PrepareSettings = PrepareSettings(), *, num_proc: int = 1, overwrite: bool = False,
                   progress: bool = True, exclude: Collection[str] = (),
                   log: Callable[[str], None] = print) -> PrepareResult:
    """Prepare the frames and videos under ``input_dir`` (a folder, or one video file) into ``out_dir``, but for
    the files ``exclude`` names (relative to ``input_dir``: another run's share); resumes a matching unfinished run."""
    root = Path(input_dir)
    if not root.exists():
        raise DataError(f"--input {root} does not exist; pass the folder holding the frames or videos "
                        "(e.g. Cholec80/frames or the Cholec80 folder with videos/), or a video file")
    base = root if root.is_dir() else root.parent
    source = settings.source or settings.split or input_name(root, is_file=root.is_file())
    settings = dataclasses.replace(settings, source=source).validate()
    found, found_videos, others = find_inputs(root)
    found, found_videos = ([f for f in group if f.relative_to(base).as_posix() not in exclude]
                           for group in (found, found_videos))
    files, videos = select_files(root, settings.split, found, found_videos)
    if videos and settings.image_format == "keep":
        raise flag_error("image_format", "keep", "videos have no frame files to keep; use jpeg or png")
    relative = [f.relative_to(base).as_posix() for f in files]
    chunks = [tuple(relative[i:i + settings.shard_size]) for i in range(0, len(relative), settings.shard_size)]
    out = Path(out_dir)
    jobs = [_ShardJob(i, str(base), chunk, str(out), settings) for i, chunk in enumerate(chunks)]
    video_jobs, not_videos = _plan_videos(base, videos, settings, len(jobs), str(out))
    jobs += video_jobs
    listing = relative + [f"{j.files[0]}@{j.ticks[0]}-{j.ticks[1]}" for j in video_jobs] + [
        f"not a video: {n['path']}" for n in not_videos]
    plan_settings = dataclasses.asdict(settings)
    if not videos:
        plan_settings.pop("fps")  # frame folders: the plan (and so resuming) is as before videos were read
    plan = {
        "format": FORMAT,
        "settings": plan_settings,
        "frames": len(relative),
        "shards": len(jobs),
        "files_sha1": hashlib.sha1("\n".join(listing).encode()).hexdigest(),
    }
    if videos:
        plan |= {"videos": len(videos) - len(not_videos), "not_videos": not_videos}
    plan = _resume_or_create(out, plan, overwrite)

    shards_dir = out / SHARDS_DIR
    shards_dir.mkdir(parents=True, exist_ok=True)
    for stale in shards_dir.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
    todo = _run(jobs, video_jobs, shards_dir, source=source, num_proc=num_proc, progress=progress)
    manifest = _finish(out, plan, settings)
    result = PrepareResult(out, manifest, written_shards=len(todo), reused_shards=len(jobs) - len(todo))
    line = (f"{out}: {counted(result.frames, 'frame')} of {source} in {counted(len(jobs), 'shard')} "
            f"({result.written_shards} written, {result.reused_shards} already complete); "
            f"{counted(len(result.skipped), 'corrupt frame')} skipped")
    if videos:
        damaged = sorted({e["path"] for e in manifest.get("video_errors", [])})
        line += (f"; {counted(manifest.get('video_count', 0), 'video')} at fps {settings.fps:g}, {len(damaged)} "
                 f"damaged (decodable frames kept), {counted(len(manifest.get('not_videos', [])), 'non-video file')}"
                 " skipped")
    if others:
        line += f"; {counted(others, 'other file')} ignored"
    log(line)
    if any(video_number(v) is not None for v in manifest["videos"]):
        log(split_summary(manifest["videos"]))
    return result


def _run(jobs: list[_ShardJob], video_jobs: list[_ShardJob], shards_dir: Path, *, source: str, num_proc: int,
         progress: bool) -> list[_ShardJob]:
    """Write the shards not yet complete, over ``num_proc`` processes, with a progress bar; returns those jobs."""
    total = sum(job.size for job in jobs)
    chunks_left = Counter(job.files[0] for job in video_jobs)
    todo = [job for job in jobs if not (shards_dir / f"{shard_name(job.index)}.arrow").is_file()]
    waiting = {job.index for job in todo}
    for job in video_jobs:
        if job.index not in waiting:
            chunks_left[job.files[0]] -= 1
    videos_done = lambda: sum(1 for n in chunks_left.values() if n == 0)  # noqa: E731
    unit = "frame" if not video_jobs else "tick"  # a video's sampling ticks (its frames but for damaged stretches)
    with worker_pool(min(num_proc, len(todo))) as pool, tqdm(
            total=total, initial=total - sum(j.size for j in todo), unit=unit, desc=f"prepare {source}",
            disable=not progress) as bar:
        by_index = {job.index: job for job in todo}
        results = pool.imap_unordered(_write_shard, todo) if pool else map(_write_shard, todo)
        frames_done = 0
        for meta in results:
            job = by_index[int(meta["name"].split("-")[1])]
            bar.update(job.size)
            frames_done += meta["frames"]
            if job.ticks:
                chunks_left[job.files[0]] -= 1
                bar.set_postfix_str(f"{frames_done} frames written, videos {videos_done()}/{len(chunks_left)}",
                                    refresh=False)
            for skip in meta["skipped"]:
                bar.write(f"skipped corrupt frame {skip['path']}: {skip['error']}")
            for error in meta.get("video_errors", []):
                bar.write(f"damaged video {error['path']} (ticks {error['ticks'][0]}..{error['ticks'][1]}): "
                          f"{error['error']}; its decodable frames are kept")

    return todo


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
    if changed := [key for key in keys if existing.get(key) != plan[key]]:
        then, now = existing.get("settings") or {}, plan["settings"]
        what = [f"--{key} {then.get(key)!r} then, {now[key]!r} now" for key in now if then.get(key) != now[key]]
        what += [f"format {existing.get('format')!r}"] if existing.get("format") != plan["format"] else []
        what += ["the input's files differ"] if "files_sha1" in changed or not what else []
        raise DataError(f"--out {out} was prepared from other input or settings ({'; '.join(what)}); "
                        "pass --overwrite true to start again, or choose another --out")
    return existing


def _finish(out: Path, plan: dict, settings: PrepareSettings) -> dict:
    """Collect the shard records into the manifest and write it (the dataset's completion marker)."""
    existing = read_manifest(out)
    if existing is not None:
        return existing
    shards, videos, skipped, video_errors = [], Counter(), [], []
    for i in range(plan["shards"]):
        name = shard_name(i)
        meta = json.loads((out / SHARDS_DIR / f"{name}.json").read_text())
        arrow = out / SHARDS_DIR / f"{name}.arrow"
        shards.append({"name": name, "frames": meta["frames"], "bytes": arrow.stat().st_size,
                       "sha256": meta.get("sha256") or file_sha256(arrow)})  # shards of older runs: hash them now
        videos.update(meta["videos"])
        skipped.extend(meta["skipped"])
        video_errors.extend(meta.get("video_errors", []))
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
    if "videos" in plan:  # read from video files: what was read, what was damaged, what was not a video
        manifest |= {"video_count": plan["videos"], "video_errors": video_errors, "not_videos": plan["not_videos"]}
    atomic_write_json(out / MANIFEST, manifest)
    return manifest
