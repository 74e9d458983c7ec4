"""Checkpoint folders: only complete ones are ever resumed from."""
from __future__ import annotations

import errno
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from endovit.checkpoint import (
    CheckpointError,
    TrainProgress,
    check_resumable,
    checkpoint_dirs,
    latest_checkpoint,
    resolve_resume,
    save_training_state,
)


@pytest.fixture()
def saved(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = accelerator.prepare(torch.nn.Linear(3, 2))
    for step in (2, 4, 6):
        with torch.no_grad():
            model.weight.fill_(step)
        save_training_state(accelerator, tmp_path, step, keep=2, run={"seed": 1})
    return tmp_path


def test_keeps_the_newest_and_resumes_from_the_last_complete(saved):
    assert [p.name for p in checkpoint_dirs(saved)] == ["step_00000004", "step_00000006"]
    assert resolve_resume("auto", saved) == saved / "step_00000006"
    assert resolve_resume("none", saved) is None


def test_interrupted_save_and_partial_copy_are_never_picked(saved):
    (saved / ".tmp-step_00000008").mkdir()
    (saved / ".tmp-step_00000008" / "model.safetensors").write_bytes(b"half")
    truncated = saved / "step_00000006" / "model.safetensors"
    truncated.write_bytes(truncated.read_bytes()[:10])
    assert latest_checkpoint(saved) == saved / "step_00000004"
    with pytest.raises(CheckpointError, match="not a complete checkpoint folder"):
        resolve_resume(str(saved / "step_00000006"), saved)


def test_resuming_an_older_checkpoint_beside_newer_ones_is_refused(saved, tmp_path_factory):
    """Its run would prune the newer ones, and ``auto`` would later take them instead of its own."""
    with pytest.raises(CheckpointError, match=rf"^--resume {saved / 'step_00000004'}: {saved} holds newer "
                                              r"checkpoints \(step_00000006\), which the resumed run would prune"):
        resolve_resume(str(saved / "step_00000004"), saved)
    assert resolve_resume(str(saved / "step_00000006"), saved) == saved / "step_00000006"
    elsewhere = tmp_path_factory.mktemp("new_output") / "checkpoints"
    assert resolve_resume(str(saved / "step_00000004"), elsewhere) == saved / "step_00000004"


def test_a_full_disk_is_one_error_and_leaves_no_half_checkpoint(saved, monkeypatch):
    accelerator = Accelerator(cpu=True)
    accelerator.prepare(torch.nn.Linear(3, 2))

    def disk_full(folder):
        Path(folder).mkdir()
        (Path(folder) / "model.safetensors").write_bytes(b"the first half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(accelerator, "save_state", disk_full)
    with pytest.raises(CheckpointError, match=rf"^cannot save checkpoint step_00000008 in {saved}: No space left on "
                                              r"device; 2 checkpoints of 0\.0 GB plus the one being written must "
                                              r"fit .*then --resume auto$"):
        save_training_state(accelerator, saved, 8, keep=2, run={"seed": 1})
    assert not list(saved.glob(".tmp-*"))
    assert [p.name for p in checkpoint_dirs(saved)] == ["step_00000004", "step_00000006"]


def test_resuming_a_run_with_different_settings_is_refused(saved):
    check_resumable(saved / "step_00000006", {"seed": 1})
    with pytest.raises(CheckpointError, match="the run changed \\(seed: 1 then, 2 now\\)"):
        check_resumable(saved / "step_00000006", {"seed": 2})


def test_progress_keeps_both_bests_and_reads_files_from_before_best_probe(tmp_path):
    progress = TrainProgress()
    progress.step, progress.best_val_loss, progress.best_probe = 12, 0.25, 0.625
    progress.save(tmp_path)
    again = TrainProgress()
    again.load(tmp_path)
    assert (again.step, again.best_val_loss, again.best_probe) == (12, 0.25, 0.625)
    (tmp_path / TrainProgress.FILE).write_text('{"step": 3, "best_val_loss": null}\n')
    again.load(tmp_path)
    assert (again.step, again.best_val_loss, again.best_probe) == (3, float("inf"), float("-inf"))
