"""Files and locations, one definition each: atomic writes (a uniquely named temporary sibling, then a rename, so
no reader ever sees half a file and a failed write leaves nothing behind), hashing, hard links, and URLs (which are
downloaded, which are remote storage, how they are shown without their secrets)."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_json", "temporary_sibling", "readable_mode",
           "is_plain_name", "walk_once", "SHA256_PIN", "remove_temporaries", "file_sha256", "link_or_copy",
           "is_url", "is_remote", "redact_url"]

SHA256_PIN = re.compile(r"sha256=([0-9A-Fa-f]{64})")  # a URL's #fragment that pins its file (pip's convention)
_DOWNLOAD_URL = re.compile(r"^(https?|file)://", re.IGNORECASE)
_ANY_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def is_url(source: str | os.PathLike) -> bool:
    """Whether weights at ``source`` are downloaded (an http, https or file URL) rather than opened as a path."""
    return bool(_DOWNLOAD_URL.match(str(source)))


def is_remote(path: str | os.PathLike) -> bool:
    """True for storage URLs such as ``s3://bucket/key`` (``file://`` and plain paths are local)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def redact_url(text: str) -> str:
    """``text`` with every URL's credentials (``user:password@``), query string and fragment removed.

    ``https://user:tok@host/path/w.pth?X-Amz-Signature=...`` becomes ``https://host/path/w.pth``; use it wherever
    a source location is printed, logged or stored.
    """
    def clean(match: re.Match) -> str:
        url = match.group(0)
        try:
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname or ""
            if parts.port is not None:
                host = f"{host}:{parts.port}"
        except ValueError:
            return url.split("?", 1)[0].split("#", 1)[0]
        if "@" in parts.netloc and not host:
            host = parts.netloc.rsplit("@", 1)[1]
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))

    return _ANY_URL.sub(clean, str(text))


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    """Hard-link ``source`` to ``target`` (the same bytes twice cost no disk), else copy it."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)




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
