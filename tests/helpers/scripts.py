"""What several test modules share: the repository, the tiny training flags, scripts run the way a user runs them,
a moto server on loopback, and dataset comparisons (test modules import these, never each other)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

TINY_TRAINING = [
    "--recipe", "demo", "--model", "mae_vit_tiny_patch16", "--img_size", "32", "--num_workers", "0",
    "--mixed_precision", "no", "--report_to", "tensorboard",
]


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


def rows_of(frames) -> dict[tuple[str, int], bytes]:
    """(video, frame_index) -> stored image bytes, for comparing datasets."""
    table = frames.select_columns(["video", "frame_index", "image"])
    return {(r["video"], r["frame_index"]): r["image"]["bytes"] for r in table}
