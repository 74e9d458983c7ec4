"""Endoscopic data at scale: prepared datasets, Cholec80 splits, source mixing, stats, S3, bad input."""
from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.scripts import rows_of
from PIL import Image

from endovit.data import (
    CHOLEC80_SPLITS,
    DataError,
    MixSampler,
    PrepareSettings,
    TrainTransform,
    build_train_loader,
    combine_sources,
    compute_and_store_stats,
    decode_image,
    load_frames,
    load_run_data,
    prepare_frames,
    resolve_sources,
)
from endovit.data.loader import TrainFrames
from endovit.data.splits import select_split, split_summary
from endovit.data.store import MANIFEST, repeat_prepared
from endovit.data.synthetic import write_sample_frames
from endovit.recipe import Recipe, RecipeError, parse_recipe

REPO = Path(__file__).resolve().parents[1]
SMALL = PrepareSettings(short_side=32, shard_size=5)


@pytest.fixture(scope="module")
def cholec(tmp_path_factory) -> Path:
    """Cholec80-layout frames of videos 11, 12 and 13 (12 is not in Cholec80_for_Segmentation)."""
    root = tmp_path_factory.mktemp("cholec")
    write_sample_frames(root, videos=3, frames=8, height=40, width=72, first_video=11)
    return root / "frames"


# --- Cholec80 splits -------------------------------------------------------------------------------------------


def test_splits_are_exactly_endovits():
    everything = set(range(1, 81))
    assert CHOLEC80_SPLITS["Cholec80_for_Segmentation"] == everything - {12, 17, 27, 52}
    assert CHOLEC80_SPLITS["Cholec80_for_ActionTripletDetection"] == everything - {1, 4, 13, 35, 43, 56, 62, 74, 78}
    assert CHOLEC80_SPLITS["Cholec80_for_SurgicalPhaseRecognition"] == set(range(1, 41))
    assert CHOLEC80_SPLITS["Cholec80_for_Validation"] == {2, 3, 6, 7, 8, 11, 14, 15, 16, 18, 19, 20, 21, 23, 24, 25,
                                                          29, 30, 31, 32, 33, 34, 37, 40}


def test_select_split_keeps_exactly_the_split_videos():
    import datasets

    videos = [f"video{v:02d}" for v in range(1, 81) for _ in range(2)]
    frames = datasets.Dataset.from_dict({"image": ["x.png"] * len(videos), "video": videos})
    for name, wanted in CHOLEC80_SPLITS.items():
        kept = select_split(frames, name, "test data")
        assert {int(v[5:]) for v in kept["video"]} == wanted
        assert len(kept) == 2 * len(wanted)
    with pytest.warns(UserWarning, match=r"test data: 3 video folder\(s\) are in no Cholec80 split \(not "
                                         r"video01-video80\), so Cholec80_for_Validation leaves their frames out, "
                                         r"e\.g\. 'case-5', 'vid_04', 'video101'"):
        odd = datasets.Dataset.from_dict({"image": ["x.png"] * 4, "video": ["video02", "video101", "vid_04", "case-5"]})
        assert select_split(odd, "Cholec80_for_Validation", "test data")["video"] == ["video02"]
    summary = split_summary(collections.Counter(videos))
    assert f"{'Cholec80_for_Segmentation':>40}: {2 * 76:>10}" in summary
    assert f"{'Cholec80_for_Validation':>40}: {2 * 24:>10}" in summary


def test_prepare_split_keeps_its_videos_and_prints_summary(cholec, tmp_path, capsys):
    result = prepare_frames(cholec, tmp_path / "seg", PrepareSettings(split="Cholec80_for_Segmentation",
                                                                       short_side=32), progress=False)
    frames = load_frames(tmp_path / "seg")
    assert sorted(set(frames["video"])) == ["video11", "video13"]
    assert len(frames) == result.frames == 16
    assert set(frames["source"]) == {"Cholec80_for_Segmentation"}
    out = capsys.readouterr().out
    assert "Summary (frames in each of EndoViT's Cholec80 splits" in out
    assert "Cholec80_for_Segmentation:         16" in out


@pytest.mark.parametrize("split, message", [
    ("Cholec80_for_Segmentaton", "did you mean Cholec80_for_Segmentation"),
    ("Cholec80_for_SurgicalPhaseRecognition", "split Cholec80_for_SurgicalPhaseRecognition is empty"),
])
def test_bad_split_names_and_empty_splits_are_clear_errors(tmp_path, split, message):
    write_sample_frames(tmp_path / "in", videos=1, frames=2, height=16, width=16, first_video=41)
    with pytest.raises(DataError, match=message):
        prepare_frames(tmp_path / "in" / "frames", tmp_path / "out", PrepareSettings(split=split), progress=False)
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_split_of_a_folder_not_in_cholec80_layout_names_the_layout(tmp_path):
    (tmp_path / "flat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "flat" / "img_000001.png")
    with pytest.raises(DataError, match=r"not in the Cholec80 layout.*frames/videoNN/videoNN_NNNNNN\.png"):
        prepare_frames(tmp_path / "flat", tmp_path / "out", PrepareSettings(split="Cholec80_for_Validation"),
                       progress=False)


def test_recipe_rejects_unknown_split_and_bad_weights():
    with pytest.raises(RecipeError, match="did you mean Cholec80_for_Validation"):
        Recipe(train_data="x", val_sources=["Cholec80_for_Validaton"]).validate()
    with pytest.raises(RecipeError, match="one weight per --train_sources entry"):
        parse_recipe(["--recipe", "demo", "--train_data", "x", "--train_sources", "A,B", "--source_weights", "1"])
    with pytest.raises(RecipeError, match="weights must be positive"):
        parse_recipe(["--recipe", "demo", "--train_data", "x", "--train_sources", "A,B", "--source_weights", "1,0"])
    recipe = parse_recipe(["--recipe", "demo", "--train_data", "x", "--train_sources",
                           "HeiCo,Cholec80_for_Segmentation", "--source_weights", "2,1"])
    assert recipe.train_sources == ["HeiCo", "Cholec80_for_Segmentation"] and recipe.source_weights == [2.0, 1.0]


# --- prepare: idempotent, interrupt-safe, corrupt frames -------------------------------------------------------


def test_two_frame_folders_of_one_name_are_refused_before_anything_is_written(tmp_path):
    # frames are named by their folder: two datasets' video01 under one --input would become one video
    for dataset in ("Cholec80", "HeiCo"):
        write_sample_frames(tmp_path / "all" / dataset, videos=1, frames=2, height=32, width=48)
    first, second = (tmp_path / "all" / name / "frames" / "video01" for name in ("Cholec80", "HeiCo"))
    with pytest.raises(DataError, match=rf"^frame folders {first} and {second} would both be video 'video01' .*: "
                                        r"rename one, or prepare them as separate datasets$"):
        prepare_frames(tmp_path / "all", tmp_path / "out", SMALL, progress=False)
    assert not (tmp_path / "out").exists()


def test_prepare_is_idempotent_and_resumes_only_missing_shards(cholec, tmp_path):
    out = tmp_path / "prep"
    first = prepare_frames(cholec, out, SMALL, progress=False)
    assert (first.written_shards, first.reused_shards, first.frames) == (5, 0, 24)
    shard_files = sorted((out / "shards").glob("*.arrow"))
    stamps = {p: p.stat().st_mtime_ns for p in shard_files}
    again = prepare_frames(cholec, out, SMALL, progress=False)
    assert (again.written_shards, again.reused_shards) == (0, 5)
    assert {p: p.stat().st_mtime_ns for p in shard_files} == stamps

    (out / MANIFEST).unlink()
    shard_files[2].unlink()
    (out / "shards" / ".shard-00003.arrow.deadbeef.tmp").write_bytes(b"half a shard")
    resumed = prepare_frames(cholec, out, SMALL, progress=False)
    assert (resumed.written_shards, resumed.reused_shards) == (1, 4)
    assert not list((out / "shards").glob(".*.tmp"))
    assert rows_of(load_frames(out)) == rows_of(load_frames(tmp_path / "prep")) and len(load_frames(out)) == 24

    with pytest.raises(DataError, match=r"prepared from other input or settings \(--short_side 32 then, 16 now\); "
                                         "pass --overwrite true"):
        prepare_frames(cholec, out, PrepareSettings(short_side=16, shard_size=5), progress=False)
    more = shutil.copytree(cholec, tmp_path / "more" / cholec.parent.name / cholec.name)  # same source, a frame more
    shutil.copy(more / "video11" / "video11_000000.png", more / "video11" / "video11_000099.png")
    with pytest.raises(DataError, match=r"prepared from other input or settings \(the input's files differ\)"):
        prepare_frames(more, out, SMALL, progress=False)


def test_repeated_prepared_dataset_links_the_shards_in_turn(cholec, tmp_path):
    """The device check's long epoch: hard links, no copy, the rows of the source again and again."""
    prepared = tmp_path / "prep"
    prepare_frames(cholec, prepared, SMALL, progress=False)
    repeated = repeat_prepared(prepared, 60, tmp_path / "repeated")
    source, rows = load_frames(prepared), load_frames(repeated)
    assert 60 <= len(rows) < 60 + 24 / 4, "whole shards (5 of 24 rows in all) until 60 rows"
    assert rows[:]["image"] == [source[i % 24]["image"] for i in range(len(rows))]
    assert all(p.stat().st_nlink > 1 for p in (repeated / "shards").glob("*.arrow"))
    with pytest.raises(DataError, match="not a complete prepared dataset"):
        repeat_prepared(cholec, 10, tmp_path / "nothing")


def test_prepare_killed_midway_then_rerun_gives_the_complete_dataset(tmp_path):
    write_sample_frames(tmp_path / "in", videos=4, frames=100, height=24, width=40)
    source, out = tmp_path / "in" / "frames", tmp_path / "prep"
    script = ("import sys; from endovit.data import PrepareSettings, prepare_frames; "
              "prepare_frames(sys.argv[1], sys.argv[2], PrepareSettings(short_side=16, shard_size=1), num_proc=2)")
    child = subprocess.Popen([sys.executable, "-c", script, str(source), str(out)], start_new_session=True,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not list((out / "shards").glob("shard-*.arrow")) and time.monotonic() < deadline and child.poll() is None:
        time.sleep(0.002)
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    assert not (out / MANIFEST).exists(), "prepare finished before it could be interrupted"
    done_before = {p: p.stat().st_ino for p in (out / "shards").glob("shard-*.arrow")}
    assert 0 < len(done_before) < 400
    with pytest.raises(DataError, match="unfinished prepared dataset"):
        load_frames(out)

    result = prepare_frames(source, out, PrepareSettings(short_side=16, shard_size=1), num_proc=2, progress=False)
    assert result.reused_shards >= len(done_before) and result.frames == 400
    assert all(p.stat().st_ino == inode for p, inode in done_before.items())
    fresh = prepare_frames(source, tmp_path / "fresh", PrepareSettings(short_side=16, shard_size=1), progress=False)
    assert rows_of(load_frames(out)) == rows_of(load_frames(fresh.path))
    assert len(rows_of(load_frames(out))) == 400


def test_corrupt_frames_are_reported_skipped_and_counted(tmp_path, capsys):
    write_sample_frames(tmp_path / "in", videos=2, frames=4, height=24, width=40)
    frames_dir = tmp_path / "in" / "frames"
    truncated = frames_dir / "video01" / "video01_000002.png"
    truncated.write_bytes(truncated.read_bytes()[:200])
    not_an_image = frames_dir / "video02" / "video02_000000.png"
    not_an_image.write_text("not a png")

    result = prepare_frames(frames_dir, tmp_path / "prep", SMALL, progress=True)
    report = capsys.readouterr()
    assert f"skipped corrupt frame {truncated}" in report.out and f"skipped corrupt frame {not_an_image}" in report.out
    assert "2 corrupt frames skipped" in report.out
    assert sorted(s["path"] for s in result.skipped) == sorted([str(truncated), str(not_an_image)])
    manifest = json.loads((tmp_path / "prep" / MANIFEST).read_text())
    assert manifest["frames"] == 6 and len(manifest["skipped"]) == 2
    assert len(load_frames(tmp_path / "prep")) == 6

    with pytest.raises(DataError, match=f"corrupt frame {truncated}"):
        prepare_frames(frames_dir, tmp_path / "strict", PrepareSettings(on_error="stop"), progress=False)


def test_prepared_rows_carry_metadata_and_resized_images(cholec, tmp_path):
    prepare_frames(cholec, tmp_path / "prep", PrepareSettings(short_side=20, quality=90), progress=False)
    row = load_frames(tmp_path / "prep")[0]
    assert (row["source"], row["video"], row["frame_index"]) == (cholec.parent.name, "video11", 0)
    assert (row["orig_height"], row["orig_width"]) == (40, 72)
    image = decode_image(row["image"])
    assert image.size == (36, 20)
    with Image.open(cholec / "video11" / "video11_000000.png") as original:
        assert original.size == (72, 40)


# --- mixing ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def endo_root(tmp_path_factory, cholec) -> Path:
    """An Endo700k-style root: prepared Cholec80 (videos 11-13) and a prepared 'HeiCo' of 6 frames."""
    root = tmp_path_factory.mktemp("endo700k")
    prepare_frames(cholec, root / "Cholec80", PrepareSettings(source="Cholec80", short_side=0, image_format="png"),
                   progress=False)
    raw_heico = tmp_path_factory.mktemp("raw_heico")
    write_sample_frames(raw_heico, videos=1, frames=6, height=24, width=40, seed=3)
    prepare_frames(raw_heico / "frames", root / "HeiCo", PrepareSettings(source="HeiCo", short_side=0,
                                                                                   image_format="png"), progress=False)
    return root


def run_data_of(recipe, log):
    return load_run_data(recipe.train_data, recipe.val_data, train_sources=recipe.train_sources,
                         val_sources=recipe.val_sources, source_weights=recipe.source_weights,
                         stats_from_data=recipe.stats_from_data, log=log)


def test_sources_by_name_split_and_per_source_counts(endo_root):
    recipe = Recipe(train_data=str(endo_root), train_sources=["Cholec80_for_Segmentation", "HeiCo"],
                    source_weights=[1, 3], val_sources=["Cholec80_for_Validation"]).validate()
    lines = []
    data = run_data_of(recipe, lines.append)
    assert data.mix.names == ("Cholec80_for_Segmentation", "HeiCo")
    assert data.mix.sizes == (16, 6) and data.mix.draws == (6, 16)
    assert len(data.train) == 22 and len(data.val) == 8
    log = "\n".join(lines)
    assert "Cholec80_for_Segmentation         16 frames  weight 1  ->          6 per epoch" in log
    assert "HeiCo                              6 frames  weight 3  ->         16 per epoch" in log
    assert "Cholec80_for_Validation          8 frames" in log


def test_unknown_source_name_lists_what_exists(endo_root):
    with pytest.raises(DataError, match=r"no source 'PSI_AVA' under --train_data .*sub-folders: Cholec80, HeiCo"):
        resolve_sources(str(endo_root), ["PSI_AVA"])


def test_weighted_sampler_is_deterministic_per_epoch_with_fixed_length_and_counts(endo_root):
    sources = resolve_sources(str(endo_root), ["Cholec80_for_Segmentation", "HeiCo"])
    _, mix = combine_sources(sources, [1, 3])
    sampler, replay = MixSampler(mix, seed=5), MixSampler(mix, seed=5)
    epochs = {}
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        keys = list(sampler)
        assert len(keys) == len(sampler) == 22 and {e for e, _, _ in keys} == {epoch}
        indices = [i for _, i, _ in keys]
        from_cholec = [i for i in indices if i < 16]
        assert len(from_cholec) == 6 and len(set(from_cholec)) == 6
        assert sorted(collections.Counter(i for i in indices if i >= 16).values()) == [2, 2, 3, 3, 3, 3]
        repeats = collections.defaultdict(list)
        for _, index, draw in keys:
            repeats[index].append(draw)
        assert all(sorted(draws) == list(range(len(draws))) for draws in repeats.values())
        epochs[epoch] = indices
    assert epochs[0] != epochs[1]
    replay.set_epoch(1)
    assert [i for _, i, _ in replay] == epochs[1]


def test_weighted_loader_batches_follow_the_sampler(endo_root):
    frames, mix = combine_sources(resolve_sources(str(endo_root), ["Cholec80_for_Segmentation", "HeiCo"]), [1, 3])
    loader = build_train_loader(frames, img_size=[16, 16], crop_scale=[0.6, 1.0],
                                batch_size=4, seed=0, num_workers=0, mix=mix)
    assert isinstance(loader.sampler, MixSampler) and len(loader) == 5
    loader.sampler.set_epoch(3)
    batches = list(loader)
    assert batches[0]["pixels"].dtype == torch.uint8 and batches[0]["pixels"].shape == (4, 3, 16, 16)
    assert [i for b in batches for i in b["index"].tolist()] == [i for _, i, _ in loader.sampler][:20]


# --- stats -----------------------------------------------------------------------------------------------------


def test_stats_of_a_synthetic_set_match_the_known_answer(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {"video01": [np.full((6, 10, 3), (10, 200, 30), np.uint8), rng.integers(0, 256, (6, 10, 3), np.uint8)],
              "video02": [np.full((8, 4, 3), (250, 0, 128), np.uint8)]}
    for video, images in arrays.items():
        (tmp_path / "in" / video).mkdir(parents=True)
        for i, array in enumerate(images):
            Image.fromarray(array).save(tmp_path / "in" / video / f"{video}_{i:06d}.png")
    prepare_frames(tmp_path / "in", tmp_path / "prep", PrepareSettings(short_side=0, image_format="keep"),
                   progress=False)

    def expected(videos):
        pixels = np.concatenate([a.reshape(-1, 3) for v in videos for a in arrays[v]]).astype(np.float64) / 255
        return pixels.mean(0), pixels.std(0)

    record = compute_and_store_stats(tmp_path / "prep", num_proc=2, progress=False, log=lambda _: None)
    mean, std = expected(["video01", "video02"])
    np.testing.assert_allclose(record["mean"], mean, atol=1e-6)
    np.testing.assert_allclose(record["std"], std, atol=1e-6)
    assert json.loads((tmp_path / "prep" / MANIFEST).read_text())["stats"]["by_video"]["video02"]["pixels"] == 32

    recipe = Recipe(train_data=str(tmp_path / "prep"), train_sources=["Cholec80_for_Validation"],
                    stats_from_data=True).validate()
    data = run_data_of(recipe, lambda _: None)
    mean, std = expected(["video02"])
    np.testing.assert_allclose(data.stats[0], mean, atol=1e-6)
    np.testing.assert_allclose(data.stats[1], std, atol=1e-6)


def test_stats_from_data_without_stats_says_how_to_get_them(endo_root):
    recipe = Recipe(train_data=str(endo_root), train_sources=["HeiCo"], stats_from_data=True).validate()
    with pytest.raises(DataError, match="has no stored stats; run scripts/compute_stats.py"):
        run_data_of(recipe, lambda _: None)


# --- decoding --------------------------------------------------------------------------------------------------


def test_fast_decode_gives_the_endovit_crops_up_to_rounding(cholec, tmp_path):
    prepare_frames(cholec, tmp_path / "prep", PrepareSettings(short_side=0, image_format="png"), progress=False)
    frames = load_frames(tmp_path / "prep")
    keys = [(2, i, 0) for i in range(len(frames))]
    exact = TrainFrames(frames, TrainTransform((32, 32), (0.6, 1.0)), seed=3).__getitems__(keys)
    fast = TrainFrames(frames, TrainTransform((32, 32), (0.6, 1.0), fast=True), seed=3).__getitems__(keys)
    exact_pixels = torch.stack([s["pixels"] for s in exact])
    fast_pixels = torch.stack([s["pixels"] for s in fast])
    assert exact_pixels.dtype == fast_pixels.dtype == torch.uint8 and exact_pixels.shape == fast_pixels.shape
    difference = (exact_pixels.int() - fast_pixels.int()).abs()
    assert difference.max() <= 2 and (difference > 0).float().mean() < 0.01
    loader = build_train_loader(frames, img_size=[32, 32], crop_scale=[0.6, 1.0],
                                batch_size=4, seed=3, num_workers=0, fast_decode=True)
    assert loader.dataset.transform.fast


def test_jpeg_draft_never_decodes_smaller_than_the_smallest_crop_needs(tmp_path):
    transform = TrainTransform((224, 224), (0.6, 1.0))
    assert transform.draft_size(854, 480) == (854, 480)
    assert transform.draft_size(455, 256) == (455, 256)
    assert transform.draft_size(1920, 1080) == (480, 270)
    array = np.random.default_rng(1).integers(0, 256, (1080, 1920, 3), np.uint8)
    path = tmp_path / "big.jpg"
    Image.fromarray(array).save(path, quality=95)
    image = decode_image({"path": str(path), "bytes": None}, transform.draft_size)
    assert image.size == (480, 270)
    generator = torch.Generator().manual_seed(0)
    for _ in range(200):
        _, _, h, w = transform.crop_box(image.height, image.width, generator)
        assert min(h, w) >= 224
