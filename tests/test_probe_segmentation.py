"""The CholecSeg8k reader (its layout, 13 / 8 classes, its known defects), the linear segmentation probe (mIoU as
scikit-learn computes it, deterministic), and the probe in scripts/evaluate.py and during pretraining (logged,
pictured, best-by-mIoU export, training unchanged)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, jaccard_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from endovit.data.cholecseg8k import MERGE_8, WATERSHED
from endovit.data.synthetic_seg import write_seg_frames
from endovit.errors import DataError, RecipeError
from endovit.probes.probe import ProbeSettings, load_probe_data, segmentation_probe
from endovit.probes.segmentation import IGNORE, read_mask, segmentation_scores

REPO = Path(__file__).resolve().parents[1]
TINY = ["--recipe", "demo", "--model", "mae_vit_tiny_patch16", "--img_size", "32", "--num_workers", "0",
        "--mixed_precision", "no", "--report_to", "tensorboard", "--batch_size", "4", "--epochs", "2",
        "--warmup_epochs", "1", "--swa", "false", "--log_every_steps", "2"]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), CUDA_VISIBLE_DEVICES="")
    env.setdefault("OMP_NUM_THREADS", "1")
    result = subprocess.run([sys.executable, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert not check or result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def seg_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cholecseg8k")
    write_seg_frames(root, videos=(1, 9, 12, 27), frames=3, height=48, width=80, seed=5)
    return root


def _write(path: Path, values: np.ndarray, mode: str = "RGB") -> Path:
    pixels = np.repeat(values[..., None], 3, axis=2).astype(np.uint8)
    if mode == "RGBA":
        pixels = np.concatenate([pixels, np.full(values.shape + (1,), 255, np.uint8)], axis=2)
        pixels[0, 0, 3] = 0  # one transparent pixel: white once put on white, so ignored
    Image.fromarray(pixels, mode).save(path)
    return path


def test_watershed_values_become_13_or_8_classes_and_edges_and_unlabelled_are_ignored(tmp_path):
    values = np.array([WATERSHED + [255, 0]], dtype=np.uint8)
    path = _write(tmp_path / "frame_1_endo_watershed_mask.png", values)
    size = (values.shape[1], 1)
    assert read_mask(path, size, 13).tolist() == [list(range(13)) + [IGNORE, IGNORE]]
    assert read_mask(path, size, 8).tolist() == [MERGE_8 + [IGNORE, IGNORE]]
    assert MERGE_8[5] == MERGE_8[9] == 7 and {MERGE_8[i] for i in (6, 7, 8, 11, 12)} == {6}  # as EndoViT merges
    rgba = _write(tmp_path / "rgba.png", values, "RGBA")
    assert read_mask(rgba, size, 8)[0, 0] == IGNORE and read_mask(rgba, size, 8)[0, 1] == MERGE_8[1]


def test_bad_masks_are_one_line_errors_naming_the_file(tmp_path):
    path = _write(tmp_path / "m.png", np.full((4, 6), 50, np.uint8))
    with pytest.raises(DataError, match=rf"^{path}: mask is 6x4 but its frame is 8x4; ") as err:
        read_mask(path, (8, 4))
    assert "\n" not in str(err.value)
    odd = _write(tmp_path / "odd.png", np.array([[50, 77]], np.uint8))
    with pytest.raises(DataError, match=rf"^{odd}: watershed value\(s\) \[77\] are no CholecSeg8k class"):
        read_mask(odd, (2, 1))


def test_the_reader_finds_the_layout_splits_by_endovits_test_videos_and_names_a_missing_mask(seg_dir, tmp_path):
    data = load_probe_data(ProbeSettings(data=str(seg_dir), label_format="cholecseg8k"))
    assert data.videos == {"train": ["video01", "video09"], "test": ["video12", "video27"]}
    assert data.labels.values.shape == (12, 48, 80) and data.num_train == 6
    masks = data.labels.values
    assert (masks == IGNORE).mean() > 0.01, "white edges and unlabelled pixels are ignored"
    assert set(np.unique(masks)) - {IGNORE} <= set(range(8)) and len(np.unique(masks)) >= 4
    broken = tmp_path / "broken"
    write_seg_frames(broken, videos=(12, 27), frames=1, height=32, width=48)
    missing = next(broken.glob("video27/*/frame_*_endo_watershed_mask.png"))
    missing.unlink()
    with pytest.raises(DataError, match=rf"^--data: {missing}: missing, the watershed mask of frame "):
        load_probe_data(ProbeSettings(data=str(broken), label_format="cholecseg8k"))


def test_miou_agrees_with_scikit_learn_and_the_probe_is_deterministic(seg_dir):
    settings = ProbeSettings(data=str(seg_dir), label_format="cholecseg8k", seg_classes=13)
    data = load_probe_data(settings)
    torch.manual_seed(0)
    features = {"patch": torch.randn(len(data.frames), 3, 5, 16) + torch.as_tensor(
        data.labels.values[:, ::16, ::16][:, :3, :5, None] % 13, dtype=torch.float32)}
    scores, pred = segmentation_probe(features, data, settings)
    again, pred_again = segmentation_probe(features, data, settings)
    assert torch.equal(pred, pred_again) and json.dumps(scores) == json.dumps(again)
    target = data.labels.values[data.num_train:].ravel()
    valid = target != IGNORE
    truth, guess = target[valid], pred.numpy().ravel()[valid]
    seen = np.union1d(truth, guess)  # a class in neither has no IoU, in both implementations
    assert scores["miou"] == pytest.approx(jaccard_score(truth, guess, labels=seen, average="macro"), abs=1e-12)
    assert len(seen) < 13 and np.isnan([scores[f"iou/{data.labels.names[c]}"] for c in set(range(13)) - set(seen)]
                                       ).all()
    assert scores["acc"] == pytest.approx(accuracy_score(truth, guess), abs=1e-12)
    assert 0 < scores["miou"] < 1
    small = segmentation_scores(np.array([0, 1, 1, 2]), np.array([0, 1, IGNORE, 1]), ["a", "b", "c", "d"])
    assert json.dumps(small) == json.dumps({"miou": 0.5, "acc": 2 / 3, "iou/a": 1.0, "iou/b": 0.5, "iou/c": 0.0,
                                            "iou/d": float("nan")})


def test_evaluate_scores_random_inits_by_miou(seg_dir, tmp_path):
    out = tmp_path / "probe.json"
    result = run("scripts/evaluate.py", "--weights", "random", "random:1", "--model", "mae_vit_tiny_patch16",
                 "--img_size", "32", "--num_workers", "0", "--data", str(seg_dir), "--label_format", "cholecseg8k",
                 "--output", str(out))
    summary = json.loads(out.read_text())
    assert summary["classes"][-1] == "Instrument" and summary["videos"]["test"] == ["video12", "video27"]
    mious = {name: r["metrics"]["seg"]["miou"] for name, r in summary["results"].items()}
    assert sorted(mious) == ["random", "random:1"] and mious["random"] != mious["random:1"]
    assert "miou" in result.stdout and "Instrument" in result.stdout
    with pytest.raises(RecipeError, match=r"^--seg_classes 9: choose 8 \(EndoViT's merged classes\) or 13"):
        ProbeSettings(data=str(seg_dir), label_format="cholecseg8k", seg_classes=9).validate()


def test_pretraining_probes_segmentation_keeps_the_best_by_miou_and_trains_the_same(seg_dir, tmp_path, frames_dir):
    plain = run("scripts/pretrain.py", *TINY, "--train_data", str(frames_dir), "--output_dir", str(tmp_path / "p"))
    probed = run("scripts/pretrain.py", *TINY, "--train_data", str(frames_dir), "--output_dir", str(tmp_path / "q"),
                 "--probe_data", str(seg_dir), "--probe_label_format", "cholecseg8k", "--probe_every_steps", "2",
                 "--probe_best_metric", "seg_miou")
    assert "probe_seg" not in plain.stdout
    assert "probe_seg_miou=" in probed.stdout and "_iou_" not in probed.stdout, probed.stdout
    events = EventAccumulator(str(next((tmp_path / "q" / "tensorboard").rglob("*tfevents*")).parent)).Reload()
    steps = [e.step for e in events.Scalars("probe/seg_miou")]
    assert steps[0] == 0 and len(steps) >= 3 and "probe/seg_iou/Liver" in events.Tags()["scalars"]
    assert "probe/seg_picture" in events.Tags()["images"]
    picture = Image.open(tmp_path / "q" / "probe_segmentation.png")
    assert picture.width == 3 * round(80 * 160 / 48) and picture.height > 2 * 160  # frame | truth | prediction
    info = json.loads((tmp_path / "q" / "best_probe" / "endovit_config.json").read_text())
    assert "probe_seg_miou" in info and info["step"] in steps[1:]
    a, b = load_file(tmp_path / "p" / "model.safetensors"), load_file(tmp_path / "q" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
