"""The prepared-dataset format: Arrow shards plus a JSON manifest, on local disk or object storage.

    <root>/endovit_plan.json          written first: settings, input fingerprint, shard count (resume check)
    <root>/shards/shard-00000.json    one shard's frame counts and skipped frames, written before its .arrow
    <root>/shards/shard-00000.arrow   one Arrow IPC stream of rows, renamed into place when complete
    <root>/endovit_dataset.json       the manifest, written last: the dataset is complete only once it exists

A dataset prepared by a SageMaker Processing job over several instances (``parts.py``) keeps each instance's part,
itself a prepared dataset, under ``<root>/parts/<job>/<host>/``; its merged manifest names each shard's part, so
those shards are read from ``parts/<job>/<host>/shards/`` (manifests without parts read as before).

Shards are read with ``datasets.Dataset.from_file`` (memory-mapped, nothing copied into RAM). A remote
dataset (``s3://...``, any fsspec URL) is mirrored shard by shard into a local cache first; each shard
file appears there only after a complete download that matches the manifest's size, sha256 and row count,
under a lock, so processes on one node share it. The manifest is input like any other: shard names must be
``shard-NNNNN`` and every cached file stays inside the cache folder.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import datasets
import fsspec
import pyarrow as pa
import pyarrow.compute as pc
from filelock import FileLock

from endovit.errors import DataError
from endovit.io import atomic_path, atomic_write_json, file_sha256, is_remote

__all__ = ["MANIFEST", "PLAN", "SHARDS_DIR", "PARTS_DIR", "FEATURES", "filesystem", "is_prepared", "shard_name",
           "shard_file", "read_manifest", "write_manifest", "repeat_prepared", "shard_records", "load_prepared",
           "require_image_bytes"]

MANIFEST = "endovit_dataset.json"
PLAN = "endovit_plan.json"
SHARDS_DIR = "shards"
PARTS_DIR = "parts"
FORMAT = "endovit-prepared-v1"
SHARD_NAME = re.compile(r"shard-\d{5,}")
SHA256 = re.compile(r"[0-9a-f]{64}")
PART_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}/[A-Za-z0-9][A-Za-z0-9-]{0,62}")  # <job>/<host>, no "."
FEATURES = datasets.Features({
    "image": datasets.Image(decode=False),
    "source": datasets.Value("string"),
    "video": datasets.Value("string"),
    "frame_index": datasets.Value("int64"),
    "time": datasets.Value("float64"),  # a video frame's presentation time in seconds; null for frame files
    "orig_height": datasets.Value("int32"),
    "orig_width": datasets.Value("int32"),
})


def shard_name(index: int) -> str:
    """The name prepare gives shard ``index`` (``shard-00042``); manifests naming anything else are refused."""
    return f"shard-{index:05d}"


def shard_file(shard: dict) -> str:
    """Where a manifest's shard lives, relative to the dataset's root: ``shards/<name>.arrow``, or
    ``parts/<job>/<host>/shards/<name>.arrow`` for a shard that one instance of a Processing job wrote."""
    part = f"{PARTS_DIR}/{shard['part']}/" if shard.get("part") else ""
    return f"{part}{SHARDS_DIR}/{shard['name']}.arrow"


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


def repeat_prepared(prepared: str | os.PathLike, frames: int, out: str | os.PathLike) -> Path:
    """A local prepared dataset of at least ``frames`` rows whose shards are hard links to ``prepared``'s, in turn
    (no copy): a large dataset for benchmarks, or an epoch long enough for the loader's steady state."""
    prepared, out = Path(prepared), Path(out)
    manifest = read_manifest(prepared)
    if manifest is None:
        raise DataError(f"{prepared}: not a complete prepared dataset (run scripts/prepare_data.py)")
    shards = [s for s in manifest["shards"] if s["frames"]]
    (out / SHARDS_DIR).mkdir(parents=True, exist_ok=True)
    listed, total = [], 0
    while total < frames:
        shard = shards[len(listed) % len(shards)]
        target = out / SHARDS_DIR / f"{shard_name(len(listed))}.arrow"
        if not target.exists():
            os.link(prepared / shard_file(shard), target)
        listed.append({**{k: v for k, v in shard.items() if k != "part"}, "name": shard_name(len(listed))})
        total += shard["frames"]
    atomic_write_json(out / MANIFEST, {**manifest, "shards": listed, "frames": total})
    return out


def write_manifest(path: str | os.PathLike, manifest: dict, storage_options: dict | None = None) -> None:
    """Replace the manifest (one atomic rename locally, one PUT on object storage)."""
    if is_remote(path):
        fs, root = filesystem(path, storage_options)
        fs.pipe_file(f"{root.rstrip('/')}/{MANIFEST}", (json.dumps(manifest, indent=1) + "\n").encode())
    else:
        atomic_write_json(Path(path) / MANIFEST, manifest)


def _default_cache_dir() -> Path:
    return Path(datasets.config.HF_DATASETS_CACHE) / "endovit-remote"


def shard_records(manifest: dict, where: str) -> list[dict]:
    """The manifest's shards holding frames, checked: names as prepare writes them (``shard-NNNNN``) and parts as
    a merge writes them (``<job>/<host>``), so no path can be smuggled in; whole numbers of frames and bytes, and a
    64-digit sha256 where there is one."""
    shards = manifest.get("shards")
    if not isinstance(shards, list):
        raise DataError(f"{where}/{MANIFEST} lists no shards; re-run scripts/prepare_data.py")
    for shard in shards:
        name = shard.get("name") if isinstance(shard, dict) else None
        if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
            raise DataError(f"{where}/{MANIFEST} names a shard {name!r}, not one prepare writes (shard-NNNNN); "
                            "refusing to use this manifest")
        if "part" in shard and not (isinstance(shard["part"], str) and PART_NAME.fullmatch(shard["part"])):
            raise DataError(f"{where}/{MANIFEST}: shard {name} names a part {shard['part']!r}, not one a merge writes "
                            "(<job>/<host>); refusing to use this manifest")
        counts = [shard.get("frames"), shard.get("bytes", 0)]
        if any(not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in counts) or (
                "sha256" in shard and not SHA256.fullmatch(str(shard["sha256"]))):
            raise DataError(f"{where}/{MANIFEST}: shard {name} has invalid frames, bytes or sha256 entries")
    return [s for s in shards if s["frames"] > 0]


def _stream_rows(path: Path) -> int | None:
    """Rows of an Arrow IPC stream file, or None when it is not one."""
    try:
        with pa.memory_map(str(path)) as source:
            return sum(batch.num_rows for batch in pa.ipc.open_stream(source))
    except (pa.ArrowInvalid, OSError):
        return None


def _verify(tmp: Path, shard: dict, where: str) -> None:
    """Size, sha256 (when the manifest has one) and row count of a downloaded shard, before it enters the cache."""
    size, problem = tmp.stat().st_size, ""
    if "bytes" in shard and size != shard["bytes"]:
        problem = f"{size} bytes, the manifest says {shard['bytes']}"
    elif "sha256" in shard and (digest := file_sha256(tmp)) != shard["sha256"]:
        problem = f"sha256 {digest[:12]}..., the manifest says {shard['sha256'][:12]}..."
    elif (rows := _stream_rows(tmp)) != shard["frames"]:
        problem = f"{'no readable' if rows is None else rows} rows, the manifest says {shard['frames']}"
    if problem:
        raise DataError(f"{where}: shard {shard['name']} does not match {MANIFEST} ({problem}); the upload is "
                        "incomplete or was changed: upload the whole prepared folder again")


def _cached_file(local_dir: Path, shard: dict) -> Path:
    """Where a shard lives in the cache: named by its content hash when the manifest has one (a changed shard
    gets a new name, so it is fetched again), and always inside ``local_dir``."""
    name = f"{shard['name']}.{shard['sha256']}.arrow" if "sha256" in shard else f"{shard['name']}.arrow"
    if shard.get("part"):  # shards of different parts share names; "." joins them (neither part nor name holds one)
        name = f"{shard['part'].replace('/', '.')}.{name}"
    local = (local_dir / name).resolve()
    if not local.is_relative_to(local_dir.resolve()):
        raise DataError(f"shard {shard['name']!r} would be cached outside {local_dir}; refusing it")
    return local


def _mirror(fs, remote: str, local: Path, shard: dict, where: str) -> None:
    """Download ``remote`` to ``local`` once, under a file lock: to a temporary name, verified, then renamed.

    A file that fails the check is removed, so the next run downloads it again."""
    local.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(local) + ".lock"):
        if local.is_file() and local.stat().st_size == shard.get("bytes", local.stat().st_size):
            return
        with atomic_path(local) as tmp:
            fs.get_file(remote, str(tmp))
            _verify(tmp, shard, where)


def load_prepared(path: str | os.PathLike, storage_options: dict | None = None,
                  cache_dir: str | os.PathLike | None = None) -> tuple[datasets.Dataset, dict]:
    """A prepared dataset (local folder or URL) as one memory-mapped ``datasets.Dataset``, plus its manifest.

    Remote shards are cached under ``cache_dir`` (default: the ``datasets`` cache, ``endovit-remote``), each
    checked against the manifest (size, sha256, rows) before it enters the cache. Manifests written before
    shards had hashes still load, checked by size and rows only.
    """
    fs, root = filesystem(path, storage_options)
    root = root.rstrip("/")
    manifest = read_manifest(path, storage_options)
    if manifest is None:
        if fs.isfile(f"{root}/{PLAN}"):
            raise DataError(f"{path} is an unfinished prepared dataset (no {MANIFEST}); re-run "
                            "scripts/prepare_data.py with the same arguments to complete it")
        raise DataError(f"{path} is not a prepared dataset (no {MANIFEST}); create one with scripts/prepare_data.py")
    shards = shard_records(manifest, str(path))
    if is_remote(path):
        key = hashlib.sha1(f"{path}|{manifest.get('id')}".encode()).hexdigest()[:16]
        local_dir = Path(cache_dir or _default_cache_dir()) / key
        files = []
        for shard in shards:
            remote = f"{root}/{shard_file(shard)}"
            if not fs.isfile(remote):
                raise DataError(f"{path}: shard {remote} listed in {MANIFEST} is missing; upload the complete folder")
            local = _cached_file(local_dir, shard)
            _mirror(fs, remote, local, shard, str(path))
            files.append(local)
    else:
        files = [Path(root, shard_file(s)) for s in shards]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise DataError(f"{path}: shard {missing[0]} listed in {MANIFEST} is missing; "
                            "re-run scripts/prepare_data.py with --overwrite true")
    if not files:
        raise DataError(f"prepared dataset {path} holds no frames (skipped: {len(manifest.get('skipped', []))})")
    parts = [datasets.Dataset.from_file(str(f)) for f in files]
    dataset = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    require_image_bytes(dataset, str(path))
    return dataset, manifest


def require_image_bytes(dataset: datasets.Dataset, where: str) -> None:
    """A prepared or saved dataset must carry its images (``prepare_data.py`` and ``save_to_disk`` embed them): a
    row without bytes would make training open its ``path`` on this machine's disk, whatever that path names. The
    folder may have come from elsewhere, as a SageMaker channel is a copy of S3."""
    column = dataset.data.column("image")
    missing, total, first = 0, 0, None
    for chunk in column.chunks:
        total += len(chunk)
        if not pa.types.is_struct(chunk.type) or chunk.type.get_field_index("bytes") < 0:
            missing, first = missing + len(chunk), first or (chunk[0].as_py() if len(chunk) else None)
            continue
        data = chunk.field("bytes")
        empty = pc.or_kleene(chunk.is_null(), pc.fill_null(pc.equal(pc.binary_length(data), 0), True))
        count = pc.sum(empty).as_py() or 0
        if count and first is None:
            first = chunk[pc.index(empty, True).as_py()].as_py()
        missing += count
    if missing:
        named = first.get("path") if isinstance(first, dict) else first
        raise DataError(f"{where}: {missing} of {total} frames carry no image bytes (the first names {named!r}); "
                        "a dataset must embed its images, or training would read that path from this machine: "
                        "create it with scripts/prepare_data.py or save_to_disk")
