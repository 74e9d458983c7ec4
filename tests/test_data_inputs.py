"""Which frames a run reads: splits of a saved DatasetDict, and remote data without its filesystem package."""
from __future__ import annotations

import sys

import datasets
import pytest

from endovit.data import DataError, load_frames, load_run_data, resolve_sources


@pytest.fixture(scope="module")
def dataset_dict(frames_dir, val_frames_dir, tmp_path_factory):
    """A saved DatasetDict: train = video01-02 (16 frames), validation = video09 (6 frames)."""
    path = tmp_path_factory.mktemp("dict") / "endoscopy"
    embedded = datasets.Image()
    datasets.DatasetDict({
        "train": load_frames(frames_dir).cast_column("image", embedded),
        "validation": load_frames(val_frames_dir).cast_column("image", embedded),
    }).save_to_disk(str(path))
    return path


def test_a_dataset_dict_validates_on_its_validation_split(dataset_dict):
    data = load_run_data(str(dataset_dict), str(dataset_dict), log=lambda _: None)
    assert len(data.train) == 16 and len(data.val) == 6
    val_videos = set(load_frames(dataset_dict, "validation")["video"])
    assert val_videos == {"video09"}


def test_splits_are_chosen_by_keyword(dataset_dict):
    data = load_run_data(str(dataset_dict), str(dataset_dict), train_split="validation", val_split="train",
                         log=lambda _: None)
    assert len(data.train) == 6 and len(data.val) == 16


def test_validation_from_the_training_root_uses_the_training_split(dataset_dict):
    data = load_run_data(str(dataset_dict), val_sources=[str(dataset_dict)], log=lambda _: None)
    assert len(data.val) == len(data.train) == 16


def test_a_missing_split_lists_the_splits_that_exist(dataset_dict):
    with pytest.raises(DataError, match=r"has no split 'valid' \(did you mean validation\?\); its splits are "
                                        r"train, validation \(choose one with --train_split / --val_split\)"):
        load_run_data(str(dataset_dict), str(dataset_dict), val_split="valid", log=lambda _: None)


def test_plain_data_has_no_splits_and_ignores_them(frames_dir):
    data = load_run_data(str(frames_dir), str(frames_dir), train_split="x", val_split="y", log=lambda _: None)
    assert len(data.train) == len(data.val) == 16


def test_s3_without_s3fs_is_one_line_naming_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "s3fs", None)  # "import s3fs" now raises ImportError
    monkeypatch.delitem(sys.modules["fsspec.registry"]._registry, "s3", raising=False)
    for load in (lambda: load_frames("s3://bucket/prepared"), lambda: resolve_sources("s3://bucket", ["HeiCo"]),
                 lambda: load_run_data("s3://bucket/prepared", log=lambda _: None)):
        with pytest.raises(DataError, match=r"^s3://bucket(/prepared)?: reading s3:// data needs a package that is "
                                            r"not installed .*; pip install 'endovit\[s3\]'$"):
            load()
