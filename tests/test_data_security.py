"""Hostile or broken input on local disk: symlink loops in frame folders, forged manifests, shard hashes, frames that
are not images."""
from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import datasets
import pyarrow as pa
import pytest
from PIL import EpsImagePlugin, Image

from endovit.data import DataError, PrepareSettings, load_frames, prepare_frames
from endovit.data.frames import FrameError, decode_image, find_image_files
from endovit.data.store import MANIFEST, _cached_file


def three_frames(root: Path) -> Path:
    (root / "video01").mkdir(parents=True)
    for i in range(3):
        Image.new("RGB", (8, 8), (i, 0, 0)).save(root / "video01" / f"video01_{i:06d}.png")
    return root


def test_a_symlink_loop_is_walked_once_and_reported(tmp_path):
    root = three_frames(tmp_path / "frames")
    (root / "video01" / "back").symlink_to("..", target_is_directory=True)
    with pytest.warns(UserWarning, match=r"skipped 1 linked folder\(s\) already walked .*video01/back"):
        files = find_image_files(root)
    assert [f.name for f in files] == [f"video01_{i:06d}.png" for i in range(3)]
    with pytest.warns(UserWarning, match="symlink loop"):
        assert len(load_frames(root)) == 3
    with pytest.warns(UserWarning, match="symlink loop"):
        assert prepare_frames(root, tmp_path / "prep", PrepareSettings(short_side=0), progress=False,
                              log=lambda _: None).frames == 3


def test_two_links_to_one_folder_count_its_frames_once_but_links_elsewhere_are_followed(tmp_path):
    root = three_frames(tmp_path / "frames")
    outside = three_frames(tmp_path / "elsewhere") / "video01"
    (root / "video02").symlink_to(outside, target_is_directory=True)
    (root / "video03").symlink_to(outside, target_is_directory=True)
    with pytest.warns(UserWarning, match="skipped 1 linked folder"):
        files = find_image_files(root)
    assert sorted({f.parent.name for f in files}) == ["video01", "video02"] and len(files) == 6


def test_prepared_manifest_records_each_shards_sha256_and_size(tmp_path):
    root = three_frames(tmp_path / "frames")
    prepare_frames(root, tmp_path / "prep", PrepareSettings(short_side=0, shard_size=2), progress=False,
                   log=lambda _: None)
    manifest = json.loads((tmp_path / "prep" / MANIFEST).read_text())
    assert len(manifest["shards"]) == 2
    for shard in manifest["shards"]:
        data = (tmp_path / "prep" / "shards" / f"{shard['name']}.arrow").read_bytes()
        assert shard["sha256"] == hashlib.sha256(data).hexdigest() and shard["bytes"] == len(data)


@pytest.mark.parametrize("name", ["../../x", "/abs/x", "shard-00000/../../x", "shard-1", 7])
def test_a_manifest_naming_other_files_is_refused(tmp_path, name):
    root = three_frames(tmp_path / "frames")
    prepare_frames(root, tmp_path / "prep", PrepareSettings(short_side=0), progress=False, log=lambda _: None)
    manifest = json.loads((tmp_path / "prep" / MANIFEST).read_text())
    manifest["shards"][0]["name"] = name
    (tmp_path / "prep" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"names a shard .*not one prepare writes \(shard-NNNNN\)"):
        load_frames(tmp_path / "prep")


def test_a_cached_shard_path_can_never_leave_the_cache(tmp_path):
    cache = tmp_path / "cache" / "key"
    assert _cached_file(cache, {"name": "shard-00003", "sha256": "a" * 64}).parent == cache.resolve()
    for forged in ("../../x", "/etc/x"):  # what the name check stops first, checked again here
        with pytest.raises(DataError, match="would be cached outside"):
            _cached_file(cache, {"name": forged})


def test_older_manifests_without_hashes_still_load(tmp_path):
    root = three_frames(tmp_path / "frames")
    prepare_frames(root, tmp_path / "prep", PrepareSettings(short_side=0), progress=False, log=lambda _: None)
    manifest = json.loads((tmp_path / "prep" / MANIFEST).read_text())
    for shard in manifest["shards"]:
        del shard["sha256"]
    (tmp_path / "prep" / MANIFEST).write_text(json.dumps(manifest))
    assert len(load_frames(tmp_path / "prep")) == 3
    assert os.path.exists(tmp_path / "prep" / "shards" / "shard-00000.arrow")


POSTSCRIPT = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 8 8\nnewpath 0 0 moveto 8 8 lineto stroke showpage\n%%EOF\n"


def test_a_frame_holding_postscript_is_refused_without_running_ghostscript(tmp_path, monkeypatch):
    """Pillow picks a decoder by content: an EPS named .png would be rendered by Ghostscript, an external program."""
    bin_dir, ran = tmp_path / "bin", tmp_path / "ghostscript-ran"
    bin_dir.mkdir()
    (bin_dir / "gs").write_text(f"#!/bin/sh\necho \"$@\" > {ran}\nexit 1\n")
    (bin_dir / "gs").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", None)  # found again on this PATH
    frame = three_frames(tmp_path / "frames") / "video01" / "video01_000001.png"
    frame.write_bytes(POSTSCRIPT)
    for cell in ({"path": str(frame), "bytes": None}, {"path": None, "bytes": POSTSCRIPT}):
        with pytest.raises(FrameError, match=r"^cannot decode frame .*: not a PNG, JPEG, BMP, TIFF, WEBP image"):
            decode_image(cell)
    assert not ran.exists()


def save_one_frame(folder: Path, image: dict, splits: tuple[str, ...] = ()) -> None:
    """A ``save_to_disk`` folder (a DatasetDict when ``splits`` are named) whose one row is ``image``."""
    features = datasets.Features({"image": datasets.Image(decode=False)})
    dataset = datasets.Dataset.from_dict({"image": [{"bytes": b"x", "path": "a.png"}]}, features=features)
    (datasets.DatasetDict({split: dataset for split in splits}) if splits else dataset).save_to_disk(str(folder))
    forged = datasets.Dataset.from_dict({"image": [image]}, features=features)
    for data_file in folder.rglob("data-*.arrow"):  # save_to_disk embeds what it can read: forge the rows directly
        with pa.OSFile(str(data_file), "wb") as sink, pa.ipc.new_stream(sink, forged.data.table.schema) as writer:
            writer.write_table(forged.data.table)


def test_local_datasets_without_image_bytes_never_open_the_paths_they_name(tmp_path):
    """A SageMaker channel is a local copy of S3: a local dataset is no more trusted than a remote one."""
    secret = three_frames(tmp_path / "frames") / "video01" / "video01_000000.png"
    save_one_frame(tmp_path / "saved", {"bytes": None, "path": str(secret)})
    with pytest.raises(DataError, match=rf"^{tmp_path / 'saved'}: 1 of 1 frames carry no image bytes \(the first "
                                        rf"names '{secret}'\); a dataset must embed its images"):
        load_frames(tmp_path / "saved")
    prepare_frames(tmp_path / "frames", tmp_path / "prep", PrepareSettings(short_side=0), progress=False,
                   log=lambda _: None)
    (shard,) = (tmp_path / "prep" / "shards").glob("*.arrow")
    rows = datasets.Dataset.from_file(str(shard)).to_dict()
    rows["image"] = [{"bytes": None, "path": str(secret)}] * len(rows["image"])
    forged = datasets.Dataset.from_dict(rows, features=datasets.Dataset.from_file(str(shard)).features)
    with pa.OSFile(str(shard), "wb") as sink, pa.ipc.new_stream(sink, forged.data.table.schema) as writer:
        writer.write_table(forged.data.table)
    manifest = json.loads((tmp_path / "prep" / MANIFEST).read_text())
    for entry in manifest["shards"]:
        entry.pop("sha256", None)
        entry.pop("bytes", None)
    (tmp_path / "prep" / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"3 of 3 frames carry no image bytes"):
        load_frames(tmp_path / "prep")


@pytest.mark.parametrize("splits", [(), ("train",)])
@pytest.mark.parametrize("where", ["absolute", "parent"])
def test_a_saved_dataset_naming_data_files_outside_its_folder_is_refused(tmp_path, splits, where):
    outside = tmp_path / "someone_elses"
    save_one_frame(outside, {"bytes": b"private frame", "path": "private.png"})
    (data_file,) = outside.glob("data-*.arrow")
    saved = tmp_path / "saved"
    save_one_frame(saved, {"bytes": b"x", "path": "a.png"}, splits)
    state_file = saved / (splits[0] if splits else "") / "state.json"
    name = str(data_file) if where == "absolute" else os.path.relpath(data_file, state_file.parent)
    state = json.loads(state_file.read_text())
    state["_data_files"] = [{"filename": name}]
    state_file.write_text(json.dumps(state))
    state_name = f"{splits[0]}/state.json" if splits else "state.json"
    with pytest.raises(DataError, match=rf"^{saved}: {state_name} names data file '{re.escape(name)}', not a file "
                                        "inside its folder"):
        load_frames(saved, split="train")


def test_a_saved_dataset_naming_a_split_outside_its_folder_is_refused(tmp_path):
    save_one_frame(tmp_path / "saved", {"bytes": b"x", "path": "a.png"}, ("train",))
    (tmp_path / "saved" / "dataset_dict.json").write_text(json.dumps({"splits": ["../elsewhere"]}))
    with pytest.raises(DataError, match=r"dataset_dict\.json names split '\.\./elsewhere', not a folder inside it"):
        load_frames(tmp_path / "saved", split="../elsewhere")
