"""The probe during pretraining: its metrics (from step 0, the init, and of the SWA average) reach the log lines and
TensorBoard, ``best_probe/`` follows the chosen metric, and probing changes nothing about the training itself (the
weights after N steps equal those of a run without probes)."""
from __future__ import annotations

import json
import re

import pytest
import torch
from helpers.scripts import TINY_TRAINING, run_script
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from endovit.data.synthetic import write_sample_frames

RUN = [*TINY_TRAINING, "--batch_size", "4", "--epochs", "2", "--warmup_epochs", "1", "--swa", "true",
       "--swa_start_epoch", "1", "--swa_every_steps", "2", "--log_every_steps", "2"]


def test_probing_is_logged_and_leaves_the_weights_as_they_were(tmp_path, frames_dir):
    probe = tmp_path / "probe"
    write_sample_frames(probe, videos=2, frames=6, height=48, width=64, first_video=41, labelled=True)
    plain = run_script("scripts/pretrain.py", *RUN, "--train_data", str(frames_dir), "--output_dir",
                       str(tmp_path / "plain"))
    probed = run_script("scripts/pretrain.py", *RUN, "--train_data", str(frames_dir), "--output_dir",
                        str(tmp_path / "probed"), "--probe_data", str(probe), "--probe_label_format",
                        "cholec80_tool", "--probe_every_steps", "3", "--probe_train_videos", "[41]",
                        "--probe_test_videos", "[42]", "--probe_best_metric", "knn_cls_map")
    assert "probe" not in plain.stdout
    lines = re.findall(r"step=(\d+) probe_knn_cls_map=([0-9.]+)", probed.stdout)
    assert [int(step) for step, _ in lines] == [0, 3, 6, 8], probed.stdout
    assert re.findall(r"step=(\d+) .*probe_swa_knn_cls_map=", probed.stdout) == ["6", "8"], "SWA averages from step 6"
    assert "_ap_" not in probed.stdout, "per-class APs go to TensorBoard only"
    runs = [p for p in (tmp_path / "probed" / "tensorboard").rglob("*tfevents*")]
    events = EventAccumulator(str(runs[0].parent)).Reload()
    assert [e.step for e in events.Scalars("probe/knn_cls_map")] == [0, 3, 6, 8]
    assert [e.step for e in events.Scalars("probe_swa/knn_cls_map")] == [6, 8]
    assert "probe/knn_cls_ap/Grasper" in events.Tags()["scalars"]
    with_probe, without = load_file(tmp_path / "probed" / "model.safetensors"), load_file(
        tmp_path / "plain" / "model.safetensors")
    assert all(torch.equal(with_probe[k], without[k]) for k in without)
    # best_probe/: the trained step (never the init at step 0) with the highest value, as logged
    scores = {int(step): float(value) for step, value in lines if step != "0"}
    best_step = max(scores, key=lambda step: (scores[step], -step))
    info = json.loads((tmp_path / "probed" / "best_probe" / "endovit_config.json").read_text())
    assert info["step"] == best_step and info["probe_knn_cls_map"] == pytest.approx(scores[best_step], abs=1e-4)
    assert (tmp_path / "probed" / "checkpoints" / "best_probe" / "encoder.safetensors").is_file()
    assert f"best by probe:  {tmp_path / 'probed' / 'best_probe'} (knn_cls_map)" in probed.stdout


def test_best_probe_metric_must_be_one_the_labels_are_scored_by(tmp_path, frames_dir, pretrain_main):
    probe = tmp_path / "probe"
    write_sample_frames(probe, videos=2, frames=2, height=48, width=64, first_video=41, labelled=True)
    code, _, stderr = pretrain_main(*RUN, "--train_data", frames_dir, "--output_dir", tmp_path / "out",
                                    "--probe_data", probe, "--probe_label_format", "cholec80_tool",
                                    "--probe_best_metric", "knn_avg_acc")
    assert code == 2
    assert "--probe_best_metric knn_avg_acc: these labels are scored by map, e.g. knn_avg_map" in stderr
    assert not (tmp_path / "out" / "checkpoints").exists()
