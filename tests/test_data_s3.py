"""Prepared datasets on object storage (a moto S3 server on 127.0.0.1): loading, caching, and what an
attacker or a broken upload can put there."""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

import pyarrow as pa
import pytest
import s3fs  # noqa: F401 - the s3:// filesystem these tests need: missing, the suite fails (never skips)
from helpers.scripts import moto_server_url, rows_of
from PIL import Image

from endovit.data import DataError, PrepareSettings, load_frames, prepare_frames, resolve_sources
from endovit.data.store import FEATURES, MANIFEST
from endovit.data.synthetic import write_sample_frames


@pytest.fixture(scope="module")
def endo_root(tmp_path_factory) -> Path:
    """Prepared Cholec80 (videos 11-13, 8 frames each) and a prepared 'HeiCo' of 6 frames."""
    raw = tmp_path_factory.mktemp("raw")
    write_sample_frames(raw / "cholec", videos=3, frames=8, height=40, width=72, first_video=11)
    write_sample_frames(raw / "heico", videos=1, frames=6, height=24, width=40, seed=3)
    root = tmp_path_factory.mktemp("endo700k")
    for name, frames in (("Cholec80", raw / "cholec" / "frames"), ("HeiCo", raw / "heico" / "frames")):
        prepare_frames(frames, root / name, PrepareSettings(source=name, short_side=0, image_format="png"),
                       progress=False)
    return root


@pytest.fixture(scope="module")
def s3_server():
    """A moto S3 server on loopback; the AWS environment points every client at it."""
    saved = dict(os.environ)
    with moto_server_url() as url:
        os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                          AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=url, AWS_EC2_METADATA_DISABLED="true")
        try:
            yield int(url.rsplit(":", 1)[1])
        finally:
            os.environ.clear()
            os.environ.update(saved)


def test_prepared_dataset_loads_from_s3_like_from_disk(s3_server, endo_root, tmp_path, monkeypatch):
    import datasets
    import fsspec

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir("endovit-data")
    fs.put(str(endo_root / "Cholec80"), "endovit-data/prepared/Cholec80", recursive=True)
    fs.put(str(endo_root / "HeiCo"), "endovit-data/prepared/HeiCo", recursive=True)

    remote = load_frames("s3://endovit-data/prepared/Cholec80", cache_dir=tmp_path / "cache")
    assert rows_of(remote) == rows_of(load_frames(endo_root / "Cholec80"))
    assert len(list((tmp_path / "cache").rglob("shard-*.arrow"))) == 1

    sources = resolve_sources("s3://endovit-data/prepared", ["Cholec80_for_Validation", "HeiCo"])
    assert [(s.name, len(s.frames)) for s in sources] == [("Cholec80_for_Validation", 8), ("HeiCo", 6)]
    assert rows_of(sources[1].frames) == rows_of(load_frames(endo_root / "HeiCo"))
    with pytest.raises(DataError, match="neither a prepared dataset .* must be prepared first"):
        load_frames("s3://endovit-data/nothing-here")


# --- what a hostile or broken bucket can hold --------------------------------------------------------------------


@pytest.fixture
def bucket(s3_server, endo_root, tmp_path, monkeypatch, request):
    """A fresh bucket holding a copy of the prepared HeiCo (6 frames, one shard); the datasets cache is private."""
    import datasets
    import fsspec

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    name = f"b-{request.node.name.lower().replace('_', '-')[:40]}-{time.monotonic_ns() % 10**6}"
    fs.mkdir(name)
    fs.put(str(endo_root / "HeiCo"), f"{name}/HeiCo", recursive=True)
    return fs, f"{name}/HeiCo"


def edit_manifest(fs, prefix: str, change) -> dict:
    manifest = json.loads(fs.cat_file(f"{prefix}/{MANIFEST}"))
    change(manifest)
    fs.pipe_file(f"{prefix}/{MANIFEST}", json.dumps(manifest).encode())
    return manifest


def arrow_stream(dataset) -> bytes:
    """A dataset's rows as one Arrow IPC stream, the file format of prepared shards and save_to_disk."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, dataset.data.table.schema) as writer:
        writer.write_table(dataset.data.table)
    return sink.getvalue().to_pybytes()


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "shard-00000/../../../x"])
def test_a_manifest_cannot_make_training_write_outside_the_cache(bucket, tmp_path, name):
    fs, prefix = bucket
    fs.put_file(__file__, f"{prefix}/shards/{name.lstrip('/')}.arrow")  # the attacker's payload, present in S3
    edit_manifest(fs, prefix, lambda m: m["shards"][0].update(name=name))
    cache = tmp_path / "deep" / "er" / "cache"
    before = files_under(tmp_path)
    with pytest.raises(DataError, match=rf"names a shard '{re.escape(name)}', not one prepare writes"):
        load_frames(f"s3://{prefix}", cache_dir=cache)
    assert files_under(tmp_path) - before == set()


def test_a_changed_shard_is_one_error_naming_it_and_is_not_cached(bucket, tmp_path, endo_root):
    fs, prefix = bucket
    shard = f"{prefix}/shards/shard-00000.arrow"
    good = fs.cat_file(shard)
    fs.pipe_file(shard, good[:-10] + bytes(10))  # same size, other bytes
    with pytest.raises(DataError, match=r"s3://.*HeiCo: shard shard-00000 does not match endovit_dataset.json "
                                        r"\(sha256 .*\); the upload is incomplete or was changed"):
        load_frames(f"s3://{prefix}", cache_dir=tmp_path / "cache")
    assert not list((tmp_path / "cache").rglob("*.arrow"))
    fs.pipe_file(shard, good)  # fixed upload: fetched again, not a stale cached copy
    assert rows_of(load_frames(f"s3://{prefix}", cache_dir=tmp_path / "cache")) == rows_of(
        load_frames(endo_root / "HeiCo"))


def test_a_truncated_upload_is_refused_then_fetched_again(bucket, tmp_path):
    fs, prefix = bucket
    shard = f"{prefix}/shards/shard-00000.arrow"
    good = fs.cat_file(shard)
    fs.pipe_file(shard, good[: len(good) // 2])
    with pytest.raises(DataError, match=rf"shard shard-00000 does not match .*\({len(good) // 2} bytes, the "
                                        rf"manifest says {len(good)}\)"):
        load_frames(f"s3://{prefix}", cache_dir=tmp_path / "cache")
    fs.pipe_file(shard, good)
    assert len(load_frames(f"s3://{prefix}", cache_dir=tmp_path / "cache")) == 6


def test_the_cache_is_keyed_by_content_so_a_replaced_shard_is_fetched_again(bucket, tmp_path, endo_root):
    fs, prefix = bucket
    assert len(load_frames(f"s3://{prefix}", cache_dir=tmp_path / "cache")) == 6
    other = endo_root / "Cholec80" / "shards" / "shard-00000.arrow"  # 24 frames, same manifest id
    fs.put_file(str(other), f"{prefix}/shards/shard-00000.arrow")
    data = other.read_bytes()
    edit_manifest(fs, prefix, lambda m: m["shards"][0].update(
        frames=24, bytes=len(data), sha256=hashlib.sha256(data).hexdigest()))
    assert len(load_frames(f"s3://{prefix}", cache_dir=tmp_path / "cache")) == 24


def test_an_older_manifest_without_hashes_loads_checked_by_size_and_rows(bucket, tmp_path):
    fs, prefix = bucket
    edit_manifest(fs, prefix, lambda m: [s.pop("sha256") for s in m["shards"]])
    assert len(load_frames(f"s3://{prefix}", cache_dir=tmp_path / "cache")) == 6
    edit_manifest(fs, prefix, lambda m: m["shards"][0].update(frames=7))
    with pytest.raises(DataError, match=r"shard shard-00000 does not match .*\(6 rows, the manifest says 7\)"):
        load_frames(f"s3://{prefix}", cache_dir=tmp_path / "cache2")


def test_remote_rows_without_image_bytes_never_open_local_paths(bucket, tmp_path):
    import datasets

    fs, prefix = bucket
    secret = tmp_path / "secret.png"
    Image.new("RGB", (8, 8)).save(secret)
    rows = {"image": [{"bytes": None, "path": str(secret)}], "source": ["x"], "video": ["v"], "frame_index": [0],
            "orig_height": [8], "orig_width": [8]}
    data = arrow_stream(datasets.Dataset.from_dict(rows, features=FEATURES))
    fs.pipe_file(f"{prefix}/shards/shard-00000.arrow", data)
    edit_manifest(fs, prefix, lambda m: m["shards"][0].update(frames=1, bytes=len(data),
                                                              sha256=hashlib.sha256(data).hexdigest()))
    with pytest.raises(DataError, match=rf"1 of 1 frames carry no image bytes \(the first names '{secret}'\); "
                                        "a dataset must embed its images"):
        load_frames(f"s3://{prefix}", cache_dir=tmp_path / "cache")

    # save_to_disk embeds the files it can read, so the attacker writes the rows into the saved folder directly
    features = datasets.Features({"image": datasets.Image(decode=False)})
    datasets.Dataset.from_dict({"image": [{"bytes": b"x", "path": "a.png"}]}, features=features).save_to_disk(
        str(tmp_path / "saved"))
    forged = datasets.Dataset.from_dict({"image": [{"bytes": None, "path": str(secret)}]}, features=features)
    (data_file,) = (tmp_path / "saved").glob("data-*.arrow")
    data_file.write_bytes(arrow_stream(forged))
    fs.put(str(tmp_path / "saved"), f"{prefix}-saved", recursive=True)
    with pytest.raises(DataError, match="carry no image bytes"):
        load_frames(f"s3://{prefix}-saved")
