"""Resuming never runs code from a checkpoint folder: whoever can write one (a colleague's shared folder, a
SageMaker job's checkpoint S3 prefix) must not get code execution on the next resume."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from endovit.checkpoint import (
    CHECKPOINT_MANIFEST,
    TrainProgress,
    is_complete_checkpoint,
    load_training_state,
    save_training_state,
)
from endovit.errors import CheckpointError


class RunsCode:
    """A pickle payload: unpickling it creates ``marker`` (a stand-in for any command)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture()
def checkpoint(tmp_path):
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    model, optimizer = accelerator.prepare(model, optimizer)
    model(torch.ones(1, 3)).sum().backward()
    optimizer.step()
    progress = TrainProgress()
    progress.step = 7
    folder = save_training_state(accelerator, tmp_path / "checkpoints", 7, keep=1, run={"seed": 1},
                                 write_extra=progress.save)
    return accelerator, folder


def plant(folder: Path, name: str, marker: Path) -> None:
    """Replace (or add) ``name`` with a code-running pickle and rewrite the manifest to match, as an attacker would."""
    torch.save(RunsCode(marker), folder / name)
    manifest = json.loads((folder / CHECKPOINT_MANIFEST).read_text())
    manifest["files"][name] = (folder / name).stat().st_size
    (folder / CHECKPOINT_MANIFEST).write_text(json.dumps(manifest))


def test_a_clean_checkpoint_loads(checkpoint):
    accelerator, folder = checkpoint
    progress = TrainProgress()
    load_training_state(accelerator, folder, progress)
    assert progress.step == 7


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.bin", "random_states_0.pkl", "progress.json",
                                  "custom_checkpoint_0.pkl", "custom_checkpoint_1.pkl", "sampler.bin"])
def test_a_planted_pickle_never_runs(checkpoint, tmp_path, name):
    accelerator, folder = checkpoint
    marker = tmp_path / "pwned"
    plant(folder, name, marker)
    assert is_complete_checkpoint(folder), "the attacker's manifest matches, so only loading can refuse"
    with pytest.raises(CheckpointError) as err:
        load_training_state(accelerator, folder, TrainProgress())
    assert not marker.exists(), f"unpickling {name} ran code"
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


class Counter:
    """An object registered for checkpointing: accelerate pickles its state to ``custom_checkpoint_0.pkl``."""

    def __init__(self):
        self.count = 0

    def state_dict(self) -> dict:
        return {"count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]


def test_a_registered_objects_pickle_is_refused_where_accelerate_would_unpickle_it(tmp_path):
    """With an object registered, accelerate itself would load ``custom_checkpoint_0.pkl`` without weights_only."""
    accelerator = Accelerator(cpu=True)
    model = torch.nn.Linear(3, 2)
    accelerator.prepare(model, torch.optim.AdamW(model.parameters()))
    accelerator.register_for_checkpointing(Counter())
    folder = save_training_state(accelerator, tmp_path / "checkpoints", 7, keep=1, run={"seed": 1},
                                 write_extra=TrainProgress().save)
    marker = tmp_path / "pwned"
    plant(folder, "custom_checkpoint_0.pkl", marker)
    with pytest.raises(CheckpointError, match=r"holds custom_checkpoint_0\.pkl, which an endovit checkpoint never"):
        load_training_state(accelerator, folder, TrainProgress())
    assert not marker.exists()


def test_a_scaler_file_is_read_only_as_weights(checkpoint, tmp_path):
    """``scaler.pt`` (fp16 runs) is read by accelerate with weights_only=True; in this fp32 run it is not read."""
    accelerator, folder = checkpoint
    marker = tmp_path / "pwned"
    plant(folder, "scaler.pt", marker)
    load_training_state(accelerator, folder, TrainProgress())
    assert not marker.exists()
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(folder / "scaler.pt", weights_only=True)
    assert not marker.exists()


def test_a_manifest_that_lists_nothing_is_no_checkpoint(checkpoint):
    _, folder = checkpoint
    (folder / CHECKPOINT_MANIFEST).write_text(json.dumps({"files": {}, "run": {"seed": 1}}))
    assert not is_complete_checkpoint(folder)
