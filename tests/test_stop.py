"""A polite stop loses nothing: SIGTERM (SageMaker's stop, spot interruption, max_run) and SIGINT (Ctrl-C) finish
the step in flight, save a complete checkpoint at that step, export the weights and exit 143/130 without a
traceback; the continued run ends where an unbroken one does. And one output folder serves one run at a time."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from filelock import FileLock
from helpers.scripts import REPO, TINY_TRAINING, run_script, script_env
from safetensors.torch import load_file

from endovit.checkpoint import CHECKPOINT_MANIFEST, checkpoint_dirs, is_complete_checkpoint
from endovit.weights import exported_step

COMMON = [*TINY_TRAINING, "--batch_size", "4", "--epochs", "30", "--warmup_epochs", "1", "--num_workers", "2",
          "--log_every_steps", "1", "--save_every_steps", "1000", "--val_every_steps", "1000", "--swa", "false"]


def run_until_signalled(cmd: list[str], signum: int, after_step: int, env: dict | None = None,
                        timeout: float = 240, leader_only: bool = False) -> tuple[int, str, str]:
    """Start ``cmd`` in its own process group, send ``signum`` to the whole group (or only to ``cmd``'s own
    process) once a ``step=N`` line with N >= ``after_step`` (or, for 1, the first step's line) appears; returns
    (exit code, stdout, stderr) once every process of the group has closed its output."""
    env = dict(env or script_env(), PYTHONUNBUFFERED="1")
    process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines, signalled = [], threading.Event()

    def read() -> None:
        for line in process.stdout:
            lines.append(line)
            steps = [int(n) for n in re.findall(r"step=(\d+) ", line)] + [1] * line.startswith("first step done")
            if steps and max(steps) >= after_step and not signalled.is_set():
                signalled.set()
                (os.kill if leader_only else os.killpg)(process.pid, signum)

    errors: list[str] = []
    readers = [threading.Thread(target=read), threading.Thread(target=lambda: errors.extend(process.stderr))]
    for reader in readers:
        reader.start()
    start = time.monotonic()
    try:
        process.wait(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    for reader in readers:
        reader.join()
    stderr = "".join(errors)
    assert signalled.is_set(), "".join(lines) + stderr
    assert time.monotonic() - start < timeout
    return process.returncode, "".join(lines), stderr


def interrupted_step(stdout: str) -> int:
    return int(re.search(r"interrupted at step (\d+)/", stdout).group(1))


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, frames_dir):
    out = tmp_path_factory.mktemp("unbroken")
    run_script("scripts/pretrain.py", *COMMON, "--train_data", str(frames_dir), "--output_dir", str(out))
    return out


@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_the_step_it_reached_and_resumes_exactly(tmp_path, frames_dir, unbroken, signum, code):
    out = tmp_path / "run"
    cmd = [sys.executable, "scripts/pretrain.py", *COMMON, "--train_data", str(frames_dir), "--output_dir", str(out)]
    returncode, stdout, stderr = run_until_signalled(cmd, signum, after_step=3)
    assert returncode == code, stdout + stderr
    assert "Traceback" not in stderr and "Error" not in stderr, stderr
    step = interrupted_step(stdout)
    assert 3 <= step < 120
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == [f"step_{step:08d}"]
    assert (out / "model.safetensors").is_file() and (out / "encoder.safetensors").is_file()
    if signum == signal.SIGTERM:
        resumed = run_script("scripts/pretrain.py", *COMMON, "--train_data", str(frames_dir), "--output_dir",
                             str(out), "--resume", "auto")
        assert f"at step {step}" in resumed.stdout and "done at step 120/120" in resumed.stdout
        expected, got = load_file(unbroken / "model.safetensors"), load_file(out / "model.safetensors")
        assert all(torch.equal(expected[k], got[k]) for k in expected)


def test_two_processes_stop_at_the_same_step(tmp_path, frames_dir):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
           "scripts/pretrain.py", *COMMON, "--batch_size", "8", "--train_data", str(frames_dir),
           "--output_dir", str(out)]
    returncode, stdout, stderr = run_until_signalled(cmd, signal.SIGTERM, after_step=2)
    assert "2 process(es)" in stdout, stdout + stderr
    step = interrupted_step(stdout)
    folder = out / "checkpoints" / f"step_{step:08d}"
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == [folder.name], stdout + stderr
    assert (folder / "random_states_0.pkl").is_file() and (folder / "random_states_1.pkl").is_file()
    assert not re.search(r"File \".*endovit", stderr), stderr
    resumed = run_script("scripts/pretrain.py", *COMMON, "--batch_size", "8", "--train_data", str(frames_dir),
                         "--output_dir", str(out), "--resume", "auto", "--stop_at_step", str(step + 1),
                         launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                   "--master_port", "29562"))
    assert f"at step {step}" in resumed.stdout and f"done at step {step + 1}/" in resumed.stdout


def test_sigterm_to_accelerates_one_process_launcher_still_stops_the_run_with_a_checkpoint(tmp_path, frames_dir):
    """The launcher exits on SIGTERM without passing it on (a container's stop, ``kill`` of the launcher)."""
    out = tmp_path / "run"
    cmd = [str(Path(sys.executable).parent / "accelerate"), "launch", "--config_file", "accelerate_configs/cpu.yaml",
           "--num_cpu_threads_per_process", "1", "scripts/pretrain.py", *COMMON, "--train_data", str(frames_dir),
           "--output_dir", str(out)]
    _, stdout, stderr = run_until_signalled(cmd, signal.SIGTERM, after_step=3, leader_only=True)
    step = interrupted_step(stdout)
    assert 3 <= step < 120 and [p.name for p in checkpoint_dirs(out / "checkpoints")] == [f"step_{step:08d}"]
    assert "SIGTERM: stopping after this step" in stderr


def test_two_processes_agree_on_a_stop_long_before_the_next_log_step(tmp_path, frames_dir):
    """torchrun kills its workers 30 s after passing SIGTERM on: the stop cannot wait for a log step 1000 away."""
    out = tmp_path / "run"
    flags = [*COMMON, "--batch_size", "8", "--epochs", "1000", "--log_every_steps", "1000", "--train_data",
             str(frames_dir), "--output_dir", str(out)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29563",
           "scripts/pretrain.py", *flags]
    start = time.monotonic()
    returncode, stdout, stderr = run_until_signalled(cmd, signal.SIGTERM, after_step=1, leader_only=True)
    assert returncode != 0 and time.monotonic() - start < 90, stdout + stderr
    step = interrupted_step(stdout)
    assert step < 1000 and [p.name for p in checkpoint_dirs(out / "checkpoints")] == [f"step_{step:08d}"]
    assert "forcefully exiting via" not in stderr, stderr


def test_sagemaker_stop_leaves_the_model_and_a_spot_restart_brings_best_back(tmp_path, frames_dir, val_frames_dir):
    ml = tmp_path / "opt_ml"
    env = dict(script_env(), SM_MODEL_DIR=str(ml / "model"), SM_OUTPUT_DIR=str(ml / "output"),
               SM_CHANNEL_TRAIN=str(frames_dir), SM_CHANNEL_VALIDATION=str(val_frames_dir))
    flags = [*COMMON, "--val_every_steps", "2"]
    cmd = [sys.executable, "scripts/pretrain.py", *flags]
    returncode, stdout, stderr = run_until_signalled(cmd, signal.SIGTERM, after_step=4, env=env)
    assert returncode == 143, stdout + stderr
    step = interrupted_step(stdout)
    for name in ("model.safetensors", "encoder.safetensors", "endovit_config.json", "best/model.safetensors"):
        assert (ml / "model" / name).is_file(), name
    best = load_file(ml / "model" / "best" / "model.safetensors")
    shutil.rmtree(ml / "model")  # a restarted spot instance starts with an empty /opt/ml/model
    result = subprocess.run([sys.executable, "scripts/pretrain.py", *COMMON, "--stop_at_step", str(step + 1)],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0 and f"at step {step}" in result.stdout, result.stdout + result.stderr
    restored = load_file(ml / "model" / "best" / "model.safetensors")
    assert all(torch.equal(best[k], restored[k]) for k in best)


def test_a_killed_run_resumed_shows_each_step_once_in_tensorboard(tmp_path, frames_dir, val_frames_dir):
    """Killed after logging steps past its checkpoint: TensorBoard drops the lost steps instead of drawing both."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    flags = [*COMMON, "--val_data", str(val_frames_dir), "--val_every_steps", "3", "--save_every_steps", "4",
             "--train_data", str(frames_dir), "--output_dir", str(out)]
    run_until_signalled([sys.executable, "scripts/pretrain.py", *flags], signal.SIGKILL, after_step=7)
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == ["step_00000004"]
    run_script("scripts/pretrain.py", *flags, "--resume", "auto", "--stop_at_step", "9")
    (events,) = {path.parent for path in (out / "tensorboard").rglob("events.out.tfevents.*")}
    scalars = EventAccumulator(str(events)).Reload()
    steps = {tag: [event.step for event in scalars.Scalars(tag)] for tag in ("train/loss", "val/loss")}
    assert steps == {"train/loss": list(range(1, 10)), "val/loss": [3, 6, 9]}


def test_a_stop_during_the_final_export_is_mended_by_the_next_run(tmp_path, frames_dir, pretrain_main):
    """The last checkpoint was saved, then the process died while exporting: the next run exports again."""
    out = tmp_path / "run"
    flags = [*COMMON, "--epochs", "2", "--swa", "true", "--swa_start_epoch", "1", "--swa_every_steps", "1",
             "--train_data", str(frames_dir), "--output_dir", str(out), "--resume", "auto"]
    assert "done at step 8/8" in run_script("scripts/pretrain.py", *flags).stdout
    expected = load_file(out / "swa" / "model.safetensors")
    (out / "swa" / "model.safetensors").unlink()  # the export is renamed into place file by file: model.* last
    (out / "swa" / ".model.safetensors.0123456789ab.tmp").write_bytes(b"half a file")
    again = run_script("scripts/pretrain.py", *flags)
    assert "is at step 8, the last, but the export of its weights is missing or incomplete" in again.stdout
    assert "done at step 8/8" in again.stdout and exported_step(out / "swa") == exported_step(out) == 8
    got = load_file(out / "swa" / "model.safetensors")
    assert all(torch.equal(expected[k], got[k]) for k in expected)
    assert not list((out / "swa").glob(".*.tmp"))
    code, stdout, _ = pretrain_main(*flags)
    assert code == 0 and "nothing to do" in stdout


def test_a_second_run_on_the_same_output_folder_is_refused(tmp_path, frames_dir, pretrain_main):
    out = tmp_path / "run"
    out.mkdir()
    with FileLock(str(out / ".endovit.lock")):
        code, _, stderr = pretrain_main(*COMMON, "--train_data", frames_dir, "--output_dir", out)
    assert code == 2
    assert f"error: --output_dir {out} is in use by another run" in stderr
    assert not (out / "checkpoints").exists() and not (out / "config.yaml").exists()


def test_machines_with_their_own_disks_each_keep_a_whole_checkpoint(tmp_path, frames_dir):
    """Two simulated machines (torchrun --nnodes 2 on one host), each with its own checkpoint folder, as
    SageMaker instances have: each folder gets the whole state and its own manifest, so both resume, and the
    two folders synced into one prefix (S3) stay complete for both."""
    def launch(node: int, port: int, *extra: str) -> subprocess.Popen:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(node),
               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
               "scripts/pretrain.py", *COMMON, "--batch_size", "8", "--train_data", str(frames_dir),
               "--output_dir", str(tmp_path / f"node{node}"), *extra]
        return subprocess.Popen(cmd, cwd=REPO, env=script_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)

    def both(port: int, *extra: str) -> list[str]:
        processes = [launch(node, port, *extra) for node in (0, 1)]
        outputs = [p.communicate(timeout=300) for p in processes]
        assert all(p.returncode == 0 for p in processes), outputs
        return [out for out, _ in outputs]

    both(29571, "--stop_at_step", "3")
    folders = [tmp_path / f"node{node}" / "checkpoints" / "step_00000003" for node in (0, 1)]
    assert (folders[0] / CHECKPOINT_MANIFEST).is_file() and (folders[1] / "endovit_checkpoint.rank1.json").is_file()
    for folder, rank in zip(folders, (0, 1), strict=True):
        names = {p.name for p in folder.iterdir()}
        assert {"model.safetensors", "optimizer.bin", "progress.json", f"random_states_{rank}.pkl"} <= names
    synced = tmp_path / "s3" / "step_00000003"
    for folder in folders:
        shutil.copytree(folder, synced, dirs_exist_ok=True)
    assert is_complete_checkpoint(synced) and is_complete_checkpoint(synced, "endovit_checkpoint.rank1.json")
    resumed = both(29572, "--resume", "auto", "--stop_at_step", "4")
    assert "resumed from" in resumed[0] and "at step 3" in resumed[0]
