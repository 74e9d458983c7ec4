"""Prepared datasets on object storage (a moto S3 server on 127.0.0.1): loading, caching, and what an
attacker or a broken upload can put there."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from endovit.data import DataError, PrepareSettings, load_frames, prepare_frames, resolve_sources
from endovit.data.synthetic import write_sample_frames


def rows_of(frames) -> dict[tuple[str, int], bytes]:
    """(video, frame_index) -> stored image bytes, for comparing datasets."""
    table = frames.select_columns(["video", "frame_index", "image"])
    return {(r["video"], r["frame_index"]): r["image"]["bytes"] for r in table}


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
    pytest.importorskip("s3fs")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    saved = dict(os.environ)
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
                      AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}", AWS_EC2_METADATA_DISABLED="true")
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield port
    finally:
        server.terminate()
        server.wait()
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
