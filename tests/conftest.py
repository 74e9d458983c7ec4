"""Shared fixtures: tiny generated frames and a helper that runs scripts the way a user does."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from endovit.data.synthetic import write_sample_frames

REPO = Path(__file__).resolve().parents[1]

TINY_TRAINING = [
    "--recipe", "demo", "--model", "mae_vit_tiny_patch16", "--img_size", "32", "--num_workers", "0",
    "--mixed_precision", "no", "--report_to", "tensorboard",
]


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


@contextlib.contextmanager
def moto_server_url():
    """A moto server (S3, SageMaker, ...) on a free loopback port for the block; yields its URL."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait()


def script_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    env["CUDA_VISIBLE_DEVICES"] = ""  # the suite is about CPU behaviour (bit-exact resume needs deterministic kernels)
    return env


def run_script(*args: str, launcher: tuple[str, ...] = (), check: bool = True,
               timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``args`` (a script path and its flags) with this interpreter, optionally under a launcher."""
    cmd = [*launcher, *args] if launcher else [sys.executable, *args]
    result = subprocess.run(cmd, cwd=REPO, env=script_env(), capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def accelerate_launch(*extra: str) -> tuple[str, ...]:
    return (sys.executable, "-m", "accelerate.commands.launch", *extra)
