"""Frame labels for probes: Cholec80's annotation files, a CSV, or a ``datasets`` label column.

Cholec80 ships ``phase_annotations/videoNN-phase.txt`` (``Frame<TAB>Phase``, one row per frame at 25 fps)
and ``tool_annotations/videoNN-tool.txt`` (``Frame<TAB>Grasper<TAB>...``, one row every 25 frames, 0/1).
A frame file ``videoNN_000042.png`` extracted at ``frame_fps`` maps to annotation frame
``(42 - first_frame) * annotation_fps / frame_fps``; every frame must find its row. A row prepared from a video
file (it has a ``time``) already carries the video's own frame number, the annotation files' numbering, so it is
looked up as it is and the three numbering settings do not apply to it.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np

from endovit.data.cholec80 import PHASES, TOOLS
from endovit.errors import DataError, did_you_mean
from endovit.io import is_plain_name

__all__ = ["PHASES", "TOOLS", "LABEL_FORMATS", "Labels", "read_phase_file", "read_tool_file", "cholec80_labels",
           "csv_labels", "column_labels", "frame_key"]

LABEL_FORMATS = ("cholec80_phase", "cholec80_tool", "csv", "column", "cholecseg8k")  # the last: segmentation.py


@dataclass
class Labels:
    """Per-frame targets: class ids (N,) for one class per frame, 0/1 (N, C) for multi-label, or a mask of class
    ids (N, H, W) per frame (``dense``)."""

    values: np.ndarray
    names: list[str]

    @property
    def multilabel(self) -> bool:
        return self.values.ndim == 2

    @property
    def dense(self) -> bool:
        return self.values.ndim == 3

    def select(self, indices) -> Labels:
        return Labels(self.values[np.asarray(indices, dtype=np.int64)], self.names)


def _read_table(path: Path, columns: tuple[str, ...]) -> dict[int, list[str]]:
    """Annotation frame number -> the row's other cells, for a file whose header is ``Frame`` + ``columns``."""
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise DataError(f"cannot read annotation file {path}: {err.strerror}") from None
    header = lines[0].split() if lines else []
    if header != ["Frame", *columns]:
        raise DataError(f"{path}: header {' '.join(header)!r} is not Cholec80's {' '.join(['Frame', *columns])!r}")
    table = {}
    for number, line in enumerate(lines[1:], start=2):
        cells = line.split()
        if not cells:
            continue
        if len(cells) != 1 + len(columns) or not cells[0].isdigit():
            raise DataError(f"{path} line {number}: expected {1 + len(columns)} tab-separated values, got {line!r}")
        table[int(cells[0])] = cells[1:]
    return table


def read_phase_file(path: str | Path) -> dict[int, int]:
    """``videoNN-phase.txt`` -> {annotation frame: phase id in ``PHASES``}."""
    table = _read_table(Path(path), ("Phase",))
    ids = {name: i for i, name in enumerate(PHASES)}
    for frame, (phase,) in table.items():
        if phase not in ids:
            raise DataError(f"{path}: frame {frame} has unknown phase {phase!r}{did_you_mean(phase, PHASES)}")
    return {frame: ids[phase] for frame, (phase,) in table.items()}


def read_tool_file(path: str | Path) -> dict[int, np.ndarray]:
    """``videoNN-tool.txt`` -> {annotation frame: 0/1 presence of each of ``TOOLS``}."""
    table = _read_table(Path(path), TOOLS)
    for frame, cells in table.items():
        if any(c not in ("0", "1") for c in cells):
            raise DataError(f"{path}: frame {frame} has tool values {cells}; expected 0 or 1")
    return {frame: np.array([int(c) for c in cells], dtype=np.int64) for frame, cells in table.items()}


def _image_path(frames: datasets.Dataset, row: int) -> str:
    return frames[row]["image"].get("path") or f"row {row}"


def _require(frames: datasets.Dataset, columns: tuple[str, ...], why: str) -> None:
    missing = [c for c in columns if c not in frames.column_names]
    if missing:
        raise DataError(f"the probe frames have no {', '.join(missing)} column (columns: "
                        f"{', '.join(frames.column_names)}); {why}")


def cholec80_labels(frames: datasets.Dataset, folder: str | Path, task: str, *, frame_fps: float = 1.0,
                    annotation_fps: float = 25.0, first_frame: int = 0) -> Labels:
    """Phase (``task="phase"``) or tool-presence (``"tool"``) labels of every frame from Cholec80's files in
    ``folder/phase_annotations`` or ``folder/tool_annotations``."""
    _require(frames, ("video", "frame_index"), "load frames from the Cholec80 layout frames/videoNN/videoNN_N.png")
    sub, read = {"phase": ("phase_annotations", read_phase_file), "tool": ("tool_annotations", read_tool_file)}[task]
    columns = frames.select_columns([c for c in ("video", "frame_index", "time") if c in frames.column_names]).to_dict()
    times = columns.get("time") or [None] * len(columns["video"])
    tables: dict[str, tuple[Path, dict]] = {}
    values = []
    for row, (video, index, time) in enumerate(zip(columns["video"], columns["frame_index"], times, strict=True)):
        if video not in tables:
            if not video:
                raise DataError(f"frame {_image_path(frames, row)} is not in a video folder: give the folder that "
                                "holds the video folders (frames/videoNN/videoNN_N.png)")
            if not is_plain_name(video):
                raise DataError(f"frame {_image_path(frames, row)} has video {video!r}, not a plain name: its labels "
                                f"would be read from outside {Path(folder) / sub}")
            path = Path(folder) / sub / f"{video}-{task}.txt"
            if not path.is_file():
                raise DataError(f"no {task} annotations for video {video!r}: {path} does not exist")
            tables[video] = path, read(path)
        path, table = tables[video]
        position = index if time is not None else (index - first_frame) * annotation_fps / frame_fps
        frame = round(position)
        if time is not None and frame not in table:
            raise DataError(f"frame {_image_path(frames, row)} (video frame {index}, {time:.3f} s) has no label in "
                            f"{path}; a video's rows are numbered as its own frames, as Cholec80's annotations are")
        if abs(position - frame) > 1e-6 or frame not in table:
            raise DataError(f"frame {_image_path(frames, row)} (index {index} -> annotation frame {position:g}) has "
                            f"no label in {path}; check frame_fps {frame_fps:g}, annotation_fps {annotation_fps:g} and "
                            f"first_frame {first_frame} (evaluate.py's --<name>, pretrain.py's --probe_<name>)")
        values.append(table[frame])
    return Labels(np.stack(values) if task == "tool" else np.array(values, dtype=np.int64),
                  list(TOOLS if task == "tool" else PHASES))


def frame_key(path: str, root: str | Path) -> str:
    """A frame's path relative to ``root`` (as stored when it is already relative), with forward slashes."""
    path = Path(path)
    try:
        path = path.relative_to(root)
    except ValueError:
        pass
    return path.as_posix()


def csv_labels(frames: datasets.Dataset, csv_path: str | Path, root: str | Path) -> Labels:
    """Labels from a CSV: ``path,label`` (one class name per frame) or ``path,A,B,...`` (0/1 per class).

    Paths are relative to ``root`` (the probe data folder) or absolute; every frame needs a row.
    """
    try:
        with open(csv_path, newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            rows = [r for r in reader if r]
    except OSError as err:
        raise DataError(f"cannot read label file {csv_path}: {err.strerror}") from None
    if len(header) < 2 or header[0] != "path":
        raise DataError(f"{csv_path}: header must be 'path,label' or 'path,<class>,<class>,...', got {header}")
    names = header[1:]
    by_key = {frame_key(r[0], root): r[1:] for r in rows}
    if len(names) == 1:
        classes = sorted({cells[0] for cells in by_key.values()})
        if all(c.isdigit() for c in classes):
            classes.sort(key=int)
        ids = {c: i for i, c in enumerate(classes)}
        encode = lambda cells: ids[cells[0]]  # noqa: E731
    else:
        encode = lambda cells: [int(c) for c in cells]  # noqa: E731
    values = []
    for row, item in enumerate(frames.select_columns(["image"]).to_dict()["image"]):
        cells = by_key.get(frame_key(item.get("path") or "", root))
        if cells is None:
            raise DataError(f"frame {_image_path(frames, row)} has no row in {csv_path}; add it (path relative to "
                            f"{root}) or leave the frame out")
        if len(cells) != len(names) or (len(names) > 1 and any(c not in ("0", "1") for c in cells)):
            raise DataError(f"{csv_path}: row for {frame_key(item['path'], root)} is {cells}; expected "
                            f"{'one label' if len(names) == 1 else f'{len(names)} values of 0 or 1'}")
        values.append(encode(cells))
    return Labels(np.array(values, dtype=np.int64), classes if len(names) == 1 else names)


def column_labels(frames: datasets.Dataset, column: str) -> Labels:
    """Labels from a ``ClassLabel`` (one class) or ``Sequence(ClassLabel)`` (multi-label) column."""
    if column not in frames.column_names:
        raise DataError(f"the probe frames have no label column {column!r}{did_you_mean(column, frames.column_names)}"
                        f" (columns: {', '.join(frames.column_names)})")
    feature = frames.features[column]
    inner = getattr(feature, "feature", None)
    values = frames.select_columns([column]).to_dict()[column]
    if isinstance(feature, datasets.ClassLabel):
        names, encoded = feature.names, np.array(values, dtype=np.int64)
        unlabelled = np.flatnonzero(encoded < 0)
    elif isinstance(inner, datasets.ClassLabel):
        names, encoded = inner.names, np.zeros((len(values), inner.num_classes), dtype=np.int64)
        for row, ids in enumerate(values):
            encoded[row, ids] = 1
        unlabelled = [row for row, ids in enumerate(values) if any(i < 0 for i in ids)]
    else:
        raise DataError(f"label column {column!r} is {feature}; expected ClassLabel or Sequence(ClassLabel)")
    if len(unlabelled):
        raise DataError(f"frame {_image_path(frames, int(unlabelled[0]))} has no label in column {column!r}")
    return Labels(encoded, list(names))
