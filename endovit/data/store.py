"""The prepared-dataset format: Arrow shards plus a JSON manifest, on local disk or object storage.

    <root>/endovit_plan.json          written first: settings, input fingerprint, shard count (resume check)
    <root>/shards/shard-00000.json    one shard's frame counts and skipped frames, written before its .arrow
    <root>/shards/shard-00000.arrow   one Arrow IPC stream of rows, renamed into place when complete
    <root>/endovit_dataset.json       the manifest, written last: the dataset is complete only once it exists

Shards are read with ``datasets.Dataset.from_file`` (memory-mapped, nothing copied into RAM). A remote
dataset (``s3://...``, any fsspec URL) is mirrored shard by shard into a local cache first; each shard
file appears there only after a complete download, under a lock, so processes on one node share it.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import datasets
import fsspec
from filelock import FileLock

from endovit.errors import DataError
from endovit.io import atomic_path, atomic_write_json

__all__ = ["MANIFEST", "PLAN", "SHARDS_DIR", "FEATURES", "filesystem", "is_remote", "is_prepared", "shard_name",
           "read_manifest", "write_manifest", "load_prepared"]

MANIFEST = "endovit_dataset.json"
PLAN = "endovit_plan.json"
SHARDS_DIR = "shards"
FORMAT = "endovit-prepared-v1"
FEATURES = datasets.Features({
    "image": datasets.Image(decode=False),
    "source": datasets.Value("string"),
    "video": datasets.Value("string"),
    "frame_index": datasets.Value("int64"),
    "orig_height": datasets.Value("int32"),
    "orig_width": datasets.Value("int32"),
})


def is_remote(path: str | os.PathLike) -> bool:
    """True for URLs such as ``s3://bucket/key`` (``file://`` and plain paths are local)."""
    text = str(path)
    return "://" in text and not text.startswith("file://")


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


_EXTRAS = {"s3": "s3", "s3a": "s3"}  # URL protocol -> the endovit extra that installs its filesystem


def filesystem(path: str | os.PathLike, storage_options: dict | None = None):
    """``(fs, path inside it)`` for a local path or URL; a URL whose filesystem package is not installed is one
    DataError naming what to install (``pip install 'endovit[s3]'`` for ``s3://``)."""
    try:
        return fsspec.core.url_to_fs(str(path), **(storage_options or {}))
    except ImportError as err:
        protocol = str(path).split("://", 1)[0]
        install = (f"pip install 'endovit[{_EXTRAS[protocol]}]'" if protocol in _EXTRAS
                   else "install the fsspec filesystem package for it")
        raise DataError(f"{path}: reading {protocol}:// data needs a package that is not installed ({err}); "
                        f"{install}") from None


def is_prepared(path: str | os.PathLike, storage_options: dict | None = None) -> bool:
    """True when ``path`` (a folder or URL) holds a prepared dataset, complete (manifest) or unfinished (plan).

    The one test of "is this a prepared dataset?"; ``load_prepared`` then says which of the two it is."""
    fs, root = filesystem(path, storage_options)
    return any(fs.isfile(f"{root.rstrip('/')}/{name}") for name in (MANIFEST, PLAN))


def _read_json(fs, path: str) -> dict | None:
    if not fs.isfile(path):
        return None
    try:
        return json.loads(fs.cat_file(path))
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not valid JSON ({err}); re-run scripts/prepare_data.py") from None


def read_manifest(path: str | os.PathLike, storage_options: dict | None = None) -> dict | None:
    """The manifest of a complete prepared dataset at ``path``, or None when there is none."""
    fs, root = filesystem(path, storage_options)
    manifest = _read_json(fs, f"{root.rstrip('/')}/{MANIFEST}")
    if manifest is not None and manifest.get("format") != FORMAT:
        raise DataError(f"{path}/{MANIFEST} has format {manifest.get('format')!r}, this code reads {FORMAT}; "
                        "re-run scripts/prepare_data.py with --overwrite true")
    return manifest


def write_manifest(path: str | os.PathLike, manifest: dict, storage_options: dict | None = None) -> None:
    """Replace the manifest (one atomic rename locally, one PUT on object storage)."""
    if is_remote(path):
        fs, root = filesystem(path, storage_options)
        fs.pipe_file(f"{root.rstrip('/')}/{MANIFEST}", (json.dumps(manifest, indent=1) + "\n").encode())
    else:
        atomic_write_json(Path(path) / MANIFEST, manifest)


def _default_cache_dir() -> Path:
    return Path(datasets.config.HF_DATASETS_CACHE) / "endovit-remote"


def _mirror(fs, remote: str, local: Path) -> None:
    """Download ``remote`` to ``local`` once: a temporary name, then a rename, under a file lock."""
    local.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(local) + ".lock"):
        if local.exists():
            return
        with atomic_path(local) as tmp:
            fs.get_file(remote, str(tmp))


def load_prepared(path: str | os.PathLike, storage_options: dict | None = None,
                  cache_dir: str | os.PathLike | None = None) -> tuple[datasets.Dataset, dict]:
    """A prepared dataset (local folder or URL) as one memory-mapped ``datasets.Dataset``, plus its manifest.

    Remote shards are cached under ``cache_dir`` (default: the ``datasets`` cache, ``endovit-remote``).
    """
    fs, root = filesystem(path, storage_options)
    root = root.rstrip("/")
    manifest = read_manifest(path, storage_options)
    if manifest is None:
        if fs.isfile(f"{root}/{PLAN}"):
            raise DataError(f"{path} is an unfinished prepared dataset (no {MANIFEST}); re-run "
                            "scripts/prepare_data.py with the same arguments to complete it")
        raise DataError(f"{path} is not a prepared dataset (no {MANIFEST}); create one with scripts/prepare_data.py")
    shards = [s for s in manifest["shards"] if s["frames"] > 0]
    if is_remote(path):
        key = hashlib.sha1(f"{path}|{manifest['id']}".encode()).hexdigest()[:16]
        local_dir = Path(cache_dir or _default_cache_dir()) / key
        files = []
        for shard in shards:
            remote = f"{root}/{SHARDS_DIR}/{shard['name']}.arrow"
            if not fs.isfile(remote):
                raise DataError(f"{path}: shard {remote} listed in {MANIFEST} is missing; upload the complete folder")
            local = local_dir / f"{shard['name']}.arrow"
            _mirror(fs, remote, local)
            files.append(local)
    else:
        files = [Path(root, SHARDS_DIR, f"{s['name']}.arrow") for s in shards]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{path}: shard {missing[0]} listed in {MANIFEST} is missing; "
                            "re-run scripts/prepare_data.py with --overwrite true")
    if not files:
        raise DataError(f"prepared dataset {path} holds no frames (skipped: {len(manifest.get('skipped', []))})")
    parts = [datasets.Dataset.from_file(str(f)) for f in files]
    return (parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)), manifest
