"""Shared fixtures: tiny generated frames, a fresh accelerate state per test (helpers live in tests/helpers/)."""
from __future__ import annotations

from pathlib import Path

import pytest

from endovit.data.synthetic import write_sample_frames


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state (device, precision); tests that build accelerators in this process
    each start from none."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def frames_dir(tmp_path_factory) -> Path:
    """2 videos x 8 frames of 48x64 synthetic endoscopy, Cholec80 layout."""
    root = tmp_path_factory.mktemp("frames")
    write_sample_frames(root, videos=2, frames=8, height=48, width=64, seed=3)
    return root / "frames"


@pytest.fixture(scope="session")
def val_frames_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("val_frames")
    write_sample_frames(root, videos=1, frames=6, height=48, width=64, seed=4, first_video=9)
    return root / "frames"
