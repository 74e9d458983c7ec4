"""Cholec80 pretraining splits exactly as EndoViT defines them (``datasets/Cholec80/prepare_cholec80.py``).

A split is a set of Cholec80 video numbers; frames belong to the video named by their folder
(``frames/videoNN/videoNN_NNNNNN.png``), stored as the ``video`` column (``videoNN``).
"""
from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from endovit.errors import DataError, did_you_mean

if TYPE_CHECKING:
    import datasets

__all__ = ["CHOLEC80_SPLITS", "CHOLEC80_SOURCE", "video_number", "check_split_name", "split_videos", "select_split",
           "split_counts", "split_summary"]

CHOLEC80_SOURCE = "Cholec80"
CHOLEC80_SPLITS: dict[str, frozenset[int]] = {
    "Cholec80_for_Segmentation": frozenset(range(1, 81)) - {12, 17, 27, 52},
    "Cholec80_for_ActionTripletDetection": frozenset(range(1, 81)) - {1, 4, 13, 35, 43, 56, 62, 74, 78},
    "Cholec80_for_SurgicalPhaseRecognition": frozenset(range(1, 41)),
    "Cholec80_for_Validation": frozenset({2, 3, 6, 7, 8, 11, 14, 15, 16, 18, 19, 20, 21, 23, 24, 25, 29, 30, 31,
                                          32, 33, 34, 37, 40}),
}
_VIDEO = re.compile(r"^video(\d+)$", re.IGNORECASE)


def video_number(video: str) -> int | None:
    """The number of a Cholec80 video folder name (``video07`` -> 7), or None for other names."""
    match = _VIDEO.match(video)
    return int(match.group(1)) if match else None


def check_split_name(name: str) -> str:
    """``name`` if it is one of EndoViT's Cholec80 splits; otherwise a DataError with a did-you-mean hint that
    lists the known ones (the one check of a split name: prepare, sources and the recipe call it)."""
    if name not in CHOLEC80_SPLITS:
        raise DataError(f"unknown Cholec80 split {name!r}{did_you_mean(name, CHOLEC80_SPLITS)}; "
                        f"choose one of {', '.join(CHOLEC80_SPLITS)}")
    return name


def split_videos(name: str) -> frozenset[int]:
    """Video numbers of one EndoViT split; an unknown name is a DataError (``check_split_name``)."""
    return CHOLEC80_SPLITS[check_split_name(name)]


def split_counts(video_frames: Mapping[str, int]) -> dict[str, int]:
    """Frames per EndoViT split, from frames per video folder name."""
    by_number = {video_number(v): n for v, n in video_frames.items()}
    return {name: sum(by_number.get(v, 0) for v in videos) for name, videos in CHOLEC80_SPLITS.items()}


def split_summary(video_frames: Mapping[str, int]) -> str:
    """EndoViT's summary table: frames per split (right-aligned names and counts), under a header that says
    what it counts."""
    rows = [f"{name:>40}: {count:>10}" for name, count in split_counts(video_frames).items()]
    return "\n".join(["Summary (frames in each of EndoViT's Cholec80 splits, by video number):", "-" * 10, *rows])


def _require_cholec80_videos(videos: Iterable[str], where: str) -> None:
    names = sorted(set(videos))
    if not any(video_number(v) is not None for v in names):
        shown = ", ".join(repr(v) for v in names[:5]) or "none"
        raise DataError(
            f"{where} is not in the Cholec80 layout: expected frames in video folders "
            f"frames/videoNN/videoNN_NNNNNN.png, found folders {shown}"
        )


def select_split(frames: datasets.Dataset, name: str, where: str) -> datasets.Dataset:
    """Rows of ``frames`` whose ``video`` is in split ``name``; an empty selection is a DataError."""
    wanted = split_videos(name)
    if "video" not in frames.column_names:
        raise DataError(f"{where} has no 'video' column, so Cholec80 split {name} cannot be selected")
    videos = frames.with_format("arrow")["video"].to_pylist()
    _require_cholec80_videos(videos, where)
    indices = [i for i, v in enumerate(videos) if video_number(v) in wanted]
    cholec80 = frozenset().union(*CHOLEC80_SPLITS.values())
    outside = sorted({v for v in videos if video_number(v) not in cholec80})
    if outside:
        warnings.warn(f"{where}: {len(outside)} video folder(s) are in no Cholec80 split (not video01-video80), so "
                      f"{name} leaves their frames out, e.g. {', '.join(map(repr, outside[:3]))}", stacklevel=2)
    if not indices:
        found = sorted({n for v in videos if (n := video_number(v)) is not None})
        raise DataError(
            f"Cholec80 split {name} is empty in {where}: it takes videos {sorted(wanted)}, "
            f"the data holds videos {found}"
        )
    return frames.select(indices)
