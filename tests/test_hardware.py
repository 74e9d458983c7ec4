"""What is fast on this machine, decided right: every auto setting, the compile trial, the GPU-only switches that a
CPU can still check, and the step free of host synchronisation."""
from __future__ import annotations

import sys
import traceback

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from helpers.scripts import run_script

from endovit import hardware
from endovit.engine import compile_model, compile_trial, compiled_graphs, train_step
from endovit.models.mae import create_mae
from endovit.optim import build_optimizer, param_groups


def test_bf16_is_chosen_on_a_cpu_only_when_clearly_faster():
    assert hardware.faster_precision({"no": 1.0, "bf16": 0.58}) == "bf16"  # AMX: 1.7x
    assert hardware.faster_precision({"no": 1.0, "bf16": 1.8}) == "no"  # AVX512-BF16 alone: 1.8x slower
    assert hardware.faster_precision({"no": 1.0, "bf16": 0.95}) == "no"  # within noise: keep fp32 numerics


def test_cpu_precision_is_measured_once_per_machine_model_and_size(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    calls = []

    def fake_timing(model, img_size, batch):
        calls.append((model, tuple(img_size), batch))
        return {"no": 2.0, "bf16": 1.0}

    monkeypatch.setattr(hardware, "time_cpu_precisions", fake_timing)
    first = hardware.measured_cpu_precision("mae_vit_tiny_patch16", [32, 32], 64)
    again = hardware.measured_cpu_precision("mae_vit_tiny_patch16", [32, 32], 64)
    other = hardware.measured_cpu_precision("mae_vit_tiny_patch16", [64, 64], 64)
    assert first[0] == again[0] == other[0] == "bf16" and "measured on this CPU" in first[1]
    assert calls == [("mae_vit_tiny_patch16", (32, 32), 4), ("mae_vit_tiny_patch16", (64, 64), 4)]


def test_measuring_leaves_the_random_state_alone():
    torch.manual_seed(3)
    before = torch.get_rng_state()
    seconds = hardware.time_cpu_precisions("mae_vit_tiny_patch16", [32, 32], 1, rounds=1)
    assert torch.equal(before, torch.get_rng_state()) and seconds["no"] > 0 and seconds["bf16"] > 0


def test_gpu_precision_without_native_bf16_is_fp16(monkeypatch):
    monkeypatch.setattr(hardware, "bf16_supported", lambda device: False)
    assert hardware.resolve_mixed_precision("auto", torch.device("cuda"))[0] == "fp16"
    monkeypatch.setattr(hardware, "bf16_supported", lambda device: True)
    assert hardware.resolve_mixed_precision("auto", torch.device("cuda"))[0] == "bf16"
    assert hardware.resolve_mixed_precision("no", torch.device("cuda"), origin="from the command line") == (
        "no", "from the command line")


def test_tf32_switch_sets_and_clears_the_matmul_precision():
    hardware.apply_tf32(True, torch.device("cuda"))
    assert torch.backends.cuda.matmul.fp32_precision == "tf32"
    hardware.apply_tf32(False, torch.device("cuda"))
    assert torch.backends.cuda.matmul.fp32_precision == "ieee"


def test_workers_and_compile_threads_share_the_cores(monkeypatch):
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: None)
    assert hardware.resolve_num_workers("auto", 8)[0] == 1 and hardware.resolve_num_workers(3, 8)[0] == 3
    assert hardware.resolve_num_workers("auto", 1)[0] == 15 and hardware.compile_threads(8) == 2
    monkeypatch.setattr(hardware.os, "sched_getaffinity", lambda pid: set(range(64)))
    assert hardware.resolve_num_workers("auto", 2)[0] == 16, "at most 16 workers a process"
    monkeypatch.setattr(hardware, "cgroup_cpu_limit", lambda: 5)
    assert hardware.available_cores() == 5 and hardware.resolve_num_workers("auto", 1)[0] == 4


@pytest.mark.parametrize("files, expected", [
    ({"cpu.max": "250000 100000\n"}, 3),
    ({"cpu.max": "max 100000\n"}, None),
    ({"cpu/cpu.cfs_quota_us": "400000\n", "cpu/cpu.cfs_period_us": "100000\n"}, 4),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, None),
    ({}, None),
])
def test_cgroup_quota_is_read_from_v2_and_v1_files(tmp_path, files, expected):
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    assert hardware.cgroup_cpu_limit(tmp_path) == expected


def test_unfused_adamw_is_torchs_default_implementation():
    mae = create_mae("mae_vit_tiny_patch16", img_size=32, depth=1)
    optimizer = build_optimizer(param_groups(mae, 0.05, 0.75), 1e-3, False, torch.device("cpu"))
    assert optimizer.defaults["foreach"] is None and not optimizer.defaults["fused"]


@pytest.fixture()
def bf16_accelerator():
    """A bf16 CPU accelerator; accelerate's process-wide state is reset around it for the tests that follow."""
    AcceleratorState._reset_state(reset_partial_state=True)
    yield Accelerator(cpu=True, mixed_precision="bf16")
    AcceleratorState._reset_state(reset_partial_state=True)


def test_the_compile_trial_leaves_nothing_to_recompile_at_the_first_real_step(bf16_accelerator):
    """Dynamo guards on the autocast state and the call: the trial must make the very graph the step uses."""
    accelerator = bf16_accelerator
    torch.manual_seed(0)
    mae = create_mae("mae_vit_tiny_patch16", img_size=32, depth=1, decoder_depth=1)
    optimizer = build_optimizer(param_groups(mae, 0.05, 0.75), 1e-3, True, accelerator.device)
    model, optimizer = accelerator.prepare(mae, optimizer)
    trial = compile_trial(accelerator, model, num_patches=mae.num_patches, batch_size=2, img_size=[32, 32],
                          mask_ratio=0.75)
    compiled, seconds = compile_model(model, trial, enabled=True, backend="eager")
    assert compiled is not model and seconds > 0
    after_trial = compiled_graphs()
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, mae.num_patches)
    for _ in range(2):
        with accelerator.accumulate(compiled):
            train_step(accelerator, compiled, optimizer, images, noise, mask_ratio=0.75, clip_grad=None)
    assert compiled_graphs() == after_trial


def test_the_process_group_gets_the_recipes_timeout():
    """The timeout must reach the first PartialState: an InitProcessGroupKwargs given later is ignored."""
    result = run_script("tests/helpers/process_group_timeout.py", "4321",
                        launcher=(sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                                  "--master_port", "29581"))
    assert "timeout=4321" in result.stdout, result.stdout + result.stderr


def test_the_step_loop_makes_no_tensors_from_python_lists(tmp_path, frames_dir, monkeypatch):
    """``torch.tensor([..], device=cuda)`` copies from pageable memory and blocks: the loop must build what it
    needs (mean/std, ...) once on the device. Counted on the CPU by watching tensor creation during training."""
    from endovit import engine
    from endovit.recipe import parse_recipe
    from endovit.trainer import build_run

    AcceleratorState._reset_state(reset_partial_state=True)
    run = build_run(parse_recipe(["--recipe", "demo", "--model", "mae_vit_tiny_patch16", "--img_size", "32",
                                  "--train_data", str(frames_dir), "--output_dir", str(tmp_path / "run"),
                                  "--batch_size", "4", "--epochs", "1", "--warmup_epochs", "0", "--num_workers", "0",
                                  "--mixed_precision", "no", "--report_to", "none", "--num_recon_images", "0"]))
    from_lists = []
    for name in ("tensor", "as_tensor"):
        original = getattr(torch, name)

        def watched(data, *args, _original=original, **kwargs):
            if isinstance(data, (list, tuple)):
                from_lists.append(traceback.extract_stack(limit=3)[0])
            return _original(data, *args, **kwargs)

        monkeypatch.setattr(torch, name, watched)
    try:
        assert engine.train(run) == 4
    finally:
        run.close()
        AcceleratorState._reset_state(reset_partial_state=True)
    ours = [f for f in from_lists if "/endovit/" in f.filename and "checkpoint" not in f.filename]
    assert not ours, ours


@pytest.mark.parametrize("error, expected", [
    (torch.OutOfMemoryError("CUDA out of memory"), "out of memory with a micro-batch of 4 images of 32x32 per process:"
                                                   " raise --grad_accum_steps"),
    (RuntimeError("DataLoader worker (pid 7) is killed by signal: Bus error. It is possible that dataloader's "
                  "workers are out of shared memory."), "ran out of shared memory (/dev/shm): give the container"),
])
def test_a_batch_or_workers_that_do_not_fit_say_what_to_change(tmp_path, frames_dir, monkeypatch, error, expected):
    """A V100 running batch 256 in fp32, or a container's 64 MB /dev/shm: one line naming the setting to change."""
    from endovit import engine
    from endovit.errors import EndovitError
    from endovit.recipe import parse_recipe
    from endovit.trainer import build_run

    run = build_run(parse_recipe(["--recipe", "demo", "--model", "mae_vit_tiny_patch16", "--img_size", "32",
                                  "--train_data", str(frames_dir), "--output_dir", str(tmp_path / "run"),
                                  "--batch_size", "4", "--epochs", "1", "--warmup_epochs", "0", "--num_workers", "0",
                                  "--mixed_precision", "no", "--report_to", "none", "--num_recon_images", "0"]))

    def fails(*args, **kwargs):
        raise error

    monkeypatch.setattr(engine, "train_step", fails)
    try:
        with pytest.raises(EndovitError) as raised:
            engine.train(run)
    finally:
        run.close()
    assert expected in str(raised.value) and "\n" not in str(raised.value)


def test_trackers_accelerate_cannot_use_are_refused_instead_of_logging_nothing(monkeypatch):
    import accelerate.utils

    from endovit.errors import RecipeError

    assert hardware.resolve_trackers("tensorboard, none") == ["tensorboard"] and hardware.resolve_trackers("none") == []
    with pytest.raises(RecipeError, match=r"^--report_to tensorbord: unknown tracker 'tensorbord' \(did you mean "
                                          r"tensorboard\?\); choose from none, .*wandb"):
        hardware.resolve_trackers("tensorbord")
    monkeypatch.setattr(accelerate.utils, "is_wandb_available", lambda: False)
    with pytest.raises(RecipeError, match=r"^--report_to tensorboard,wandb: wandb is not installed here; pip install "
                                          r"wandb, or log to tensorboard$"):
        hardware.resolve_trackers("tensorboard,wandb")
