"""Atomic writes: a uniquely named temporary sibling, then a rename, so no reader ever sees half a file
and a failed write leaves nothing behind."""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "temporary_sibling", "readable_mode",
           "is_plain_name", "walk_once", "SHA256_PIN", "remove_temporaries"]

SHA256_PIN = re.compile(r"sha256=([0-9A-Fa-f]{64})")  # a URL's #fragment that pins its file (pip's convention)


def is_plain_name(name) -> bool:
    """Whether ``name``, read from data, names an entry inside a folder: no separator, not ``.`` or ``..``."""
    return isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name


def walk_once(root: str | os.PathLike, keep_folder=lambda name: True) -> tuple[list[tuple[str, list[str]]], list[str]]:
    """Every folder under ``root`` with its file names, sorted, linked folders followed: each real folder once (by
    device and inode), so a link back up the tree (a loop) or a second link to a folder already walked is skipped.
    Returns the folders and the skipped links; ``keep_folder(name)`` prunes sub-folders by name."""
    folders, walked, skipped = [], set(), []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        info = os.stat(dirpath)
        if (info.st_dev, info.st_ino) in walked:
            skipped.append(dirpath)
            dirnames[:] = []
            continue
        walked.add((info.st_dev, info.st_ino))
        dirnames[:] = sorted(d for d in dirnames if keep_folder(d))
        folders.append((dirpath, sorted(filenames)))
    return folders, skipped


def temporary_sibling(path: str | os.PathLike) -> Path:
    """A hidden, unique name beside ``path`` (same folder, so the final rename is atomic)."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")


def remove_temporaries(folder: str | os.PathLike) -> None:
    """Delete what a killed writer left in ``folder``: ``temporary_sibling`` files and folders."""
    folder = Path(folder)
    for leftover in folder.glob(".*.tmp") if folder.is_dir() else []:
        if re.fullmatch(r"\..+\.[0-9a-f]{12}\.tmp", leftover.name):
            if leftover.is_dir() and not leftover.is_symlink():
                shutil.rmtree(leftover, ignore_errors=True)
            else:
                leftover.unlink(missing_ok=True)


def readable_mode(path: str | os.PathLike) -> None:
    """Give a written file the usual ``0644``-style mode (safetensors and mkstemp write ``0600``)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask if Path(path).is_file() else 0o777 & ~umask)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write ``path``'s content to (a file or a folder); on success it is renamed
    to ``path`` (replacing what was there), on any failure it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path)
    try:
        yield tmp
        if tmp.is_dir() and path.is_dir() and not path.is_symlink():
            old = temporary_sibling(path)  # a folder cannot replace a folder: move the old one aside first
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
            return
        if not tmp.is_dir():
            readable_mode(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_json(path: str | os.PathLike, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
