"""The probe during pretraining: its metrics reach the log lines and TensorBoard, and probing changes nothing
about the training itself (the weights after N steps equal those of a run without probes)."""
from __future__ import annotations

import re

import torch
from conftest import TINY_TRAINING, run_script
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from endovit.data.synthetic import write_sample_frames

RUN = [*TINY_TRAINING, "--batch_size", "4", "--epochs", "2", "--warmup_epochs", "1", "--swa", "false",
       "--log_every_steps", "2"]


def test_probing_is_logged_and_leaves_the_weights_as_they_were(tmp_path, frames_dir):
    probe = tmp_path / "probe"
    write_sample_frames(probe, videos=2, frames=6, height=48, width=64, first_video=41, labelled=True)
    plain = run_script("scripts/pretrain.py", *RUN, "--train_data", str(frames_dir), "--output_dir",
                       str(tmp_path / "plain"))
    probed = run_script("scripts/pretrain.py", *RUN, "--train_data", str(frames_dir), "--output_dir",
                        str(tmp_path / "probed"), "--probe_data", str(probe), "--probe_label_format",
                        "cholec80_tool", "--probe_every_steps", "3", "--probe_train_videos", "[41]",
                        "--probe_test_videos", "[42]")
    assert "probe" not in plain.stdout
    lines = re.findall(r"step=(\d+) probe_knn_cls_map=([0-9.]+)", probed.stdout)
    assert [int(step) for step, _ in lines] == [3, 6, 8], probed.stdout
    assert "_ap_" not in probed.stdout, "per-class APs go to TensorBoard only"
    runs = [p for p in (tmp_path / "probed" / "tensorboard").rglob("*tfevents*")]
    events = EventAccumulator(str(runs[0].parent)).Reload()
    assert [e.step for e in events.Scalars("probe/knn_cls_map")] == [3, 6, 8]
    assert "probe/knn_cls_ap/Grasper" in events.Tags()["scalars"]
    with_probe, without = load_file(tmp_path / "probed" / "model.safetensors"), load_file(
        tmp_path / "plain" / "model.safetensors")
    assert all(torch.equal(with_probe[k], without[k]) for k in without)
