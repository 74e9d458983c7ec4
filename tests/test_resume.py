"""Resuming is refused when anything it depends on changed, one case per setting, with the signature the trainer
really builds (``build_run`` -> ``check_resumable``), in-process on one CPU process. The number of processes is
checked in tests/test_distributed.py (a two-process run resuming a one-process checkpoint), the end-to-end refusal
through scripts/pretrain.py in tests/test_pretrain_e2e.py."""
from __future__ import annotations

import pytest
import yaml
from helpers.scripts import TINY_TRAINING

from endovit.checkpoint import CheckpointError, latest_checkpoint
from endovit.data.synthetic import write_sample_frames
from endovit.engine import train
from endovit.recipe import parse_recipe
from endovit.trainer import build_run, start_logging

# 16 frames, batch 8: 2 steps/epoch
BASE = [*TINY_TRAINING, "--report_to", "none", "--num_recon_images", "0", "--num_workers", "0", "--batch_size", "8",
        "--epochs", "2", "--warmup_epochs", "1", "--swa", "false", "--save_every_steps", "100", "--seed", "7"]


def build(frames_dir, out, *flags):
    return build_run(parse_recipe([*BASE, "--train_data", str(frames_dir), "--output_dir", str(out), *flags]))


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, frames_dir):
    """A run stopped at step 1 (checkpoint step_00000001)."""
    out = tmp_path_factory.mktemp("resume") / "run"
    assert train(build(frames_dir, out, "--stop_at_step", "1")) == 1
    assert latest_checkpoint(out / "checkpoints").name == "step_00000001"
    return out


@pytest.fixture(scope="module")
def half_the_frames(tmp_path_factory):
    root = tmp_path_factory.mktemp("half")
    write_sample_frames(root, videos=1, frames=8, height=48, width=64, seed=3)
    return root / "frames"


def test_same_recipe_resumes_and_settings_resuming_does_not_depend_on_may_change(stopped, frames_dir):
    run = build(frames_dir, stopped, "--resume", "auto", "--log_every_steps", "3", "--val_every_steps", "7",
                "--stop_at_step", "3")
    assert run.progress.step == 1


@pytest.mark.parametrize("flags, changed", [
    (["--batch_size", "4"], r"steps_per_epoch: 2 then, 4 now"),  # 16 frames: 4 steps/epoch instead of 2
    (["--img_size", "48"], r"img_size: \[32, 32\] then, \[48, 48\] now"),
    (["--swa", "true"], r"swa: False then, True now"),
    (["--seed", "8"], r"seed: 7 then, 8 now"),
    (["--train_data", "{half}"], r"steps_per_epoch: 2 then, 1 now"),  # other frames, another schedule
    (["--batch_size", "7"], r"batch_size: 8 then, 7 now"),  # 16 frames in batches of 7 also make 2 steps/epoch
    (["--grad_accum_steps", "2"], r"grad_accum_steps: 1 then, 2 now"),  # 2 x 4 images: the same 2 steps/epoch
], ids=["batch_size", "img_size", "swa", "seed", "train_data", "batch_size-same-steps", "grad_accum_steps"])
def test_changed_setting_is_refused(stopped, frames_dir, half_the_frames, flags, changed):
    flags = [f.format(half=half_the_frames) for f in flags]
    with pytest.raises(CheckpointError, match=rf"cannot resume from .*step_00000001: the run changed \(.*{changed}"):
        build(frames_dir, stopped, "--resume", "auto", *flags)


def test_continuing_with_changed_settings_says_so_and_keeps_the_earlier_config(stopped, frames_dir, capsys):
    start_logging(build(frames_dir, stopped, "--resume", "auto"))  # the same settings: config.yaml, no note
    assert "note: continuing" not in capsys.readouterr().out
    start_logging(build(frames_dir, stopped, "--resume", "auto", "--lr", "3e-3", "--mask_ratio", "0.5"))
    assert ("note: continuing from step 1 with changed settings (mask_ratio 0.75 -> 0.5; lr 0.001 -> 0.003); the "
            f"earlier ones are in {stopped / 'config.until_step_1.yaml'}") in capsys.readouterr().out
    assert yaml.safe_load((stopped / "config.until_step_1.yaml").read_text())["mask_ratio"] == 0.75
    assert yaml.safe_load((stopped / "config.yaml").read_text())["mask_ratio"] == 0.5
