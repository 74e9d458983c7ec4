"""Which frames a run uses: the recipe's data roots and source names -> datasets, counts, mean/std.

A source name (``train_sources`` / ``val_sources``, EndoViT's ``--train_datasets_to_take``) is looked up
under its root (``train_data`` / ``val_data``, a local folder or an ``s3://`` URL) in this order:

1. a Cholec80 split name (``Cholec80_for_Segmentation``, ...): a sub-folder of that name if there is one
   (EndoViT's copied split folders), else the split's videos selected from ``<root>/Cholec80`` or from the
   root itself when it holds Cholec80 frames;
2. a sub-folder of the root: a folder of frames or a prepared dataset;
3. a path or URL of its own.

No names means the whole root: one dataset, or every prepared dataset directly inside it.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from endovit.data.frames import DataLocation, load_location, locate
from endovit.data.mixing import Source, SourceMix, combine_sources
from endovit.data.splits import CHOLEC80_SOURCE, CHOLEC80_SPLITS, select_split, split_videos, video_number
from endovit.data.stats import pooled_stats
from endovit.data.store import filesystem, is_prepared
from endovit.errors import DataError
from endovit.io import is_remote

if TYPE_CHECKING:
    import datasets

__all__ = ["RunData", "resolve_sources", "mix_stats", "load_run_data"]


class _Root:
    """A data root (local folder or URL): its sub-folders, and each dataset under it located once (its form) and
    loaded once."""

    def __init__(self, path: str, storage_options: dict | None, split: str = "train"):
        self.path = str(path).rstrip("/")
        self.storage_options = storage_options
        self.split = split
        self.fs, self.fs_path = filesystem(self.path, storage_options)
        self.prepared: dict[str, bool] = {}
        self.loaded: dict[str, tuple[datasets.Dataset, dict | None]] = {}

    def child(self, name: str) -> str:
        return f"{self.path}/{name}" if is_remote(self.path) else os.path.join(self.path, name)

    def has_child(self, name: str) -> bool:
        return self.fs.isdir(f"{self.fs_path.rstrip('/')}/{name}")

    def is_prepared(self, path: str) -> bool:
        if path not in self.prepared:
            self.prepared[path] = is_prepared(path, self.storage_options)
        return self.prepared[path]

    def prepared_children(self) -> list[str]:
        if not self.fs.isdir(self.fs_path):
            return []
        names = sorted(os.path.basename(p.rstrip("/")) for p in self.fs.ls(self.fs_path, detail=False))
        return [n for n in names if not n.startswith(".") and self.is_prepared(self.child(n))]

    def load(self, path: str) -> tuple[datasets.Dataset, dict | None]:
        """A dataset and its manifest (None unless prepared), located and loaded once per path."""
        if path not in self.loaded:
            where = (DataLocation(path, "prepared", self.storage_options) if self.prepared.get(path)
                     else locate(path, self.storage_options))
            self.loaded[path] = load_location(where, self.split)
        return self.loaded[path]


def _stats_of(manifest: dict | None) -> dict | None:
    stats = (manifest or {}).get("stats")
    return dict(stats["by_video"]) if stats else None


def _whole(root: _Root, path: str, name: str) -> Source:
    frames, manifest = root.load(path)
    return Source(name, frames, path, _stats_of(manifest))


def _split_source(root: _Root, name: str) -> Source:
    wanted = split_videos(name)
    base = root.child(CHOLEC80_SOURCE) if root.has_child(CHOLEC80_SOURCE) else root.path
    frames, manifest = root.load(base)
    selected = select_split(frames, name, base)
    stats = _stats_of(manifest)
    if stats is not None:
        stats = {video: sums for video, sums in stats.items() if video_number(video) in wanted}
    return Source(name, selected, f"{base} [{name}]", stats)


def _looks_like_path(name: str) -> bool:
    return is_remote(name) or "/" in name or os.sep in name or os.path.exists(name)


def resolve_sources(root_path: str, names: Sequence[str], *, role: str = "train",
                    storage_options: dict | None = None, split: str = "train") -> list[Source]:
    """The sources ``names`` under ``root_path`` (see the module docstring); errors say what was expected.

    ``split`` picks the split of a saved ``DatasetDict`` (``save_to_disk``) among them."""
    flag = f"--{role}_data"
    if not root_path:
        raise DataError(f"--{role}_sources {list(names)} needs {flag}, the folder or URL that holds them")
    root = _Root(root_path, storage_options, split)
    if not names:
        if not root.is_prepared(root.path) and (children := root.prepared_children()):
            return [_whole(root, root.child(n), n) for n in children]
        try:
            frames, manifest = root.load(root.path)
        except DataError as err:
            raise DataError(f"{flag}: {err}") from None
        name = manifest["source"] if manifest else os.path.basename(root.path) or root.path
        return [Source(name, frames, root.path, _stats_of(manifest))]
    sources = []
    for name in names:
        if name.startswith("Cholec80_for_") and not root.has_child(name):
            sources.append(_split_source(root, name))
        elif root.has_child(name):
            sources.append(_whole(root, root.child(name), name))
        elif _looks_like_path(name):
            sources.append(_whole(root, name, os.path.basename(name.rstrip("/"))))
        else:
            found = sorted(os.path.basename(p.rstrip("/")) for p in root.fs.ls(root.fs_path, detail=False)
                           if root.fs.isdir(p)) if root.fs.isdir(root.fs_path) else []
            raise DataError(
                f"--{role}_sources: no source {name!r} under {flag} {root.path} (sub-folders: "
                f"{', '.join(found) or 'none'}); give a sub-folder name, a Cholec80 split "
                f"({', '.join(CHOLEC80_SPLITS)}) or a path"
            )
    return sources


def mix_stats(sources: Sequence[Source], mix: SourceMix) -> tuple[list[float], list[float]]:
    """Mean/std of the training mix as sampled: each source's exact sums scaled by its draws per frame."""
    missing = [s.origin for s in sources if s.stats is None]
    if missing:
        raise DataError(f"--stats_from_data true, but {missing[0]} has no stored stats; run "
                        f"scripts/compute_stats.py on its prepared dataset, or pass --stats_from_data false")
    groups = [(sums, draws / size) for source, size, draws in zip(sources, mix.sizes, mix.draws, strict=True)
              for sums in source.stats.values()]
    return pooled_stats(groups)


@dataclass
class RunData:
    """The frames of one run, how they were put together, and the training mix's stats when asked for."""

    train: datasets.Dataset
    mix: SourceMix
    val: datasets.Dataset | None = None
    stats: tuple[list[float], list[float]] | None = None  # (mean, std) of the training mix, or None


def load_run_data(train_data: str, val_data: str = "", *, train_sources: Sequence[str] = (),
                  val_sources: Sequence[str] = (), source_weights: Sequence[float] = (),
                  stats_from_data: bool = False, train_split: str = "train", val_split: str = "validation",
                  log: Callable[[str], None] = print) -> RunData:
    """Training and validation frames; logs frames per source.

    Validation uses ``val_data``, or ``train_data`` when only ``val_sources`` is given. A saved ``DatasetDict``
    (``save_to_disk`` of train + validation) gives its ``train_split`` for training and its ``val_split`` for
    validation; when validation falls back to ``train_data`` it selects its sources from the same
    ``train_split`` the training uses. Other forms of data have no splits and ignore both. With
    ``stats_from_data`` the training mix's stored mean/std come back as ``stats`` (rounded to 6 digits).
    """
    sources = resolve_sources(train_data, train_sources, role="train", split=train_split)
    train, mix = combine_sources(sources, list(source_weights) or None)
    log(mix.summary("train"))
    val = None
    val_root = val_data or (train_data if val_sources else "")
    if val_root:
        split = val_split if val_data else train_split
        val, val_mix = combine_sources(resolve_sources(val_root, val_sources, role="val", split=split))
        log(val_mix.summary("val"))
    stats = None
    if stats_from_data:
        mean, std = mix_stats(sources, mix)
        stats = [round(m, 6) for m in mean], [round(s, 6) for s in std]
        log(f"mean {stats[0]}, std {stats[1]} (from the training data's stored stats)")
    return RunData(train, mix, val, stats)
