"""Per-channel mean and std of frames: exact integer sums, streamed in chunks, over several processes.

For each video the pixel count and, per channel, the sum and the sum of squares of the 8-bit values
are accumulated as integers (exact, whatever the order or the number of processes). Mean and
(population) std in [0, 1] units follow: mean = sum / (255 n), std = sqrt(sum_sq / (255^2 n) - mean^2).
Keeping the sums per video lets any selection of videos (a Cholec80 split) or weighted mix of sources
be pooled exactly later. The stored pixels are measured, i.e. after prepare's resize and re-encoding,
which is what training decodes.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from endovit.data.frames import decode_image, load_frames
from endovit.data.parallel import worker_pool
from endovit.data.store import load_prepared, read_manifest, write_manifest
from endovit.errors import DataError
from endovit.io import is_remote

if TYPE_CHECKING:
    import datasets

__all__ = ["channel_sums", "pooled_stats", "stats_record", "compute_and_store_stats"]

_LEVELS = np.arange(256, dtype=np.int64)
_CHUNK = 64
_frames: datasets.Dataset | None = None


def _use_frames(frames: datasets.Dataset | None) -> None:
    global _frames
    _frames = frames


def _sums_of_range(bounds: tuple[int, int]) -> tuple[int, dict[str, list[int]]]:
    """Integer sums per video for rows [start, stop) of the worker's dataset: [pixels, s_r, s_g, s_b, q_r, q_g, q_b]."""
    start, stop = bounds
    rows = _frames[start:stop]
    videos = rows.get("video") or [""] * (stop - start)
    sums: dict[str, list[int]] = {}
    for item, video in zip(rows["image"], videos, strict=True):
        pixels = np.asarray(decode_image(item)).reshape(-1, 3)
        entry = sums.setdefault(video, [0] * 7)
        entry[0] += len(pixels)
        for c in range(3):
            counts = np.bincount(pixels[:, c], minlength=256)
            entry[1 + c] += int(counts @ _LEVELS)
            entry[4 + c] += int(counts @ (_LEVELS * _LEVELS))
    return stop - start, sums


def channel_sums(frames: datasets.Dataset, num_proc: int = 1, progress: bool = True) -> dict[str, dict]:
    """Exact per-video sums ``{video: {"pixels", "sum": [r, g, b], "sum_sq": [r, g, b]}}`` over every frame."""
    columns = [c for c in ("image", "video") if c in frames.column_names]
    frames = frames.select_columns(columns)
    chunks = [(i, min(i + _CHUNK, len(frames))) for i in range(0, len(frames), _CHUNK)]
    totals: dict[str, list[int]] = {}
    try:
        with worker_pool(min(num_proc, len(chunks)), _use_frames, (frames,)) as pool, tqdm(
                total=len(frames), unit="frame", desc="stats", disable=not progress) as bar:
            results = pool.imap_unordered(_sums_of_range, chunks) if pool else map(_sums_of_range, chunks)
            for done, sums in results:
                for video, values in sums.items():
                    entry = totals.setdefault(video, [0] * 7)
                    for k, value in enumerate(values):
                        entry[k] += value
                bar.update(done)
    finally:
        _use_frames(None)
    return {video: {"pixels": v[0], "sum": v[1:4], "sum_sq": v[4:7]} for video, v in sorted(totals.items())}


def pooled_stats(groups: Iterable[tuple[Mapping, float]]) -> tuple[list[float], list[float]]:
    """Mean and std in [0, 1] from ``(sums, weight)`` pairs; weight scales a group's share (1 = as is)."""
    pixels, first, second = 0.0, [0.0] * 3, [0.0] * 3
    for sums, weight in groups:
        pixels += weight * sums["pixels"]
        for c in range(3):
            first[c] += weight * sums["sum"][c]
            second[c] += weight * sums["sum_sq"][c]
    if pixels <= 0:
        raise DataError("no pixels to compute mean/std from")
    mean = [s / (255.0 * pixels) for s in first]
    std = [math.sqrt(max(q / (255.0**2 * pixels) - m * m, 0.0)) for q, m in zip(second, mean, strict=True)]
    return mean, std


def stats_record(by_video: Mapping[str, Mapping], frames: int) -> dict:
    """The ``stats`` entry of a manifest: pooled mean/std (rounded for reading) plus the exact per-video sums."""
    mean, std = pooled_stats((sums, 1.0) for sums in by_video.values())
    return {"frames": frames, "mean": [round(m, 6) for m in mean], "std": [round(s, 6) for s in std],
            "by_video": dict(by_video)}


def compute_and_store_stats(path: str | os.PathLike, *, num_proc: int = 1, progress: bool = True,
                            storage_options: dict | None = None,
                            log: Callable[[str], None] = print) -> dict:
    """Compute the stats of the dataset at ``path``; store them in its manifest if it is a prepared dataset.

    Other inputs (a folder of frames, a save_to_disk folder) have nowhere to keep them; the values are
    only returned and logged.
    """
    manifest = read_manifest(path, storage_options)
    if manifest is not None:
        frames = load_prepared(path, storage_options)[0]
    elif is_remote(path):
        raise DataError(f"{path} is not a prepared dataset; compute stats of remote data after prepare_data.py")
    else:
        frames = load_frames(path)
    record = stats_record(channel_sums(frames, num_proc, progress), len(frames))
    log(f"{path}: {len(frames)} frames, mean {record['mean']}, std {record['std']}")
    if manifest is not None:
        write_manifest(path, {**manifest, "stats": record}, storage_options)
        log(f"stored in {path}; train with --stats_from_data true to use them")
    else:
        log("not a prepared dataset, so nothing was stored; pass them as --mean and --std")
    return record
