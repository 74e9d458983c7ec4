"""Probe train/test sets by video, never by frame.

Default: Cholec80's phase-recognition split (videos 1-40 train, 41-80 test) when the frames hold videos on
both sides of it; otherwise the first half of the videos present (sorted by number, then name) trains and
the rest tests. Videos may be named (``video41``), numbered (``41``) or given as ranges of the videos present
(``41-80``).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

from endovit.data.splits import video_number
from endovit.errors import DataError, did_you_mean

__all__ = ["split_by_video"]


def _sort_key(video: str) -> tuple:
    number = video_number(video)
    return (number is None, number or 0, video)


def _resolve(items: Sequence, present: Sequence[str], flag: str) -> set[str]:
    """The present videos that ``items`` name; a name, number or range that matches none is a DataError."""
    by_number = {video_number(v): v for v in present if video_number(v) is not None}
    chosen = set()
    for item in items:
        text = str(item).strip()
        first, dash, last = text.partition("-")
        if dash and first.isdigit() and last.isdigit():
            found = {v for n, v in by_number.items() if int(first) <= n <= int(last)}
        elif text in present:
            found = {text}
        else:
            found = {by_number[int(text)]} if text.isdigit() and int(text) in by_number else set()
        if not found:
            raise DataError(f"--{flag}: video {text!r} is not in the probe data{did_you_mean(text, present)}; "
                            f"it holds {', '.join(present)}")
        chosen |= found
    return chosen


def split_by_video(videos: Sequence[str], train_videos: Iterable = (), test_videos: Iterable = ()
                   ) -> tuple[list[int], list[int]]:
    """Row indices of the probe's train and test frames, given each frame's video.

    Empty ``train_videos`` / ``test_videos`` take the default rule (module docstring); giving only one of
    them makes the other all remaining videos. A video in both sets, or an empty set, is a DataError.
    """
    present = sorted(set(videos), key=_sort_key)
    train_names, test_names = list(train_videos), list(test_videos)
    train = _resolve(train_names, present, "train_videos")
    test = _resolve(test_names, present, "test_videos")
    if not train_names and not test_names:
        numbers = {v: video_number(v) for v in present}
        train = {v for v, n in numbers.items() if n is not None and n <= 40}
        test = {v for v, n in numbers.items() if n is not None and 41 <= n <= 80}
        if not train or not test or len(train) + len(test) < len(present):
            train = set(present[:(len(present) + 1) // 2])
            test = set(present) - train
    elif not train_names:
        train = set(present) - test
    elif not test_names:
        test = set(present) - train
    if both := sorted(train & test, key=_sort_key):
        raise DataError(f"video(s) {', '.join(both)} are in both the probe's train and test sets; a video belongs "
                        "to one side only")
    for name, chosen, flag in (("train", train, "train_videos"), ("test", test, "test_videos")):
        if not chosen:
            raise DataError(f"the probe's {name} set is empty (videos present: {', '.join(present)}); "
                            f"set --{flag}")
    return ([i for i, v in enumerate(videos) if v in train], [i for i, v in enumerate(videos) if v in test])
