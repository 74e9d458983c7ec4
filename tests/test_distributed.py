"""Two processes (the shipped multi-GPU config, on this CPU-only machine a gloo group), one launch of
tests/helpers/two_processes.py: every process masks differently, the batch is split as the recipe says, the
validation loss and the probe features are the one-process values for the same weights and frames, a run stopped
mid-epoch and resumed with accumulation equals the unbroken one bit for bit, and a one-process checkpoint is
refused."""
from __future__ import annotations

import json
import socket

import pytest
import torch
from accelerate import Accelerator
from helpers.scripts import TINY_TRAINING, accelerate_launch, run_script
from safetensors.torch import load_file

from endovit.data import build_val_loader, load_frames
from endovit.engine import train
from endovit.models.mae import create_mae
from endovit.probes.features import features_from_loader, features_from_pixels
from endovit.probes.probe import decode_frames
from endovit.recipe import parse_recipe
from endovit.trainer import build_run
from endovit.validation import validate


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def two(tmp_path_factory, frames_dir, val_frames_dir):
    """16 frames, batch 8 = 2 processes x 2 accumulation x 2: 2 steps/epoch, 6 steps; 6 validation frames in
    batches of 4 per process (the second process's last batch is padded with repeats)."""
    work = tmp_path_factory.mktemp("two_processes")
    flags = [*TINY_TRAINING, "--report_to", "none", "--num_recon_images", "0", "--num_workers", "0",
             "--train_data", str(frames_dir), "--batch_size", "8", "--grad_accum_steps", "2", "--epochs", "3",
             "--warmup_epochs", "1", "--swa", "false", "--swa_start_epoch", "1", "--swa_every_steps", "1",
             "--log_every_steps", "2", "--save_every_steps", "100", "--dist_timeout", "120"]
    one_process = build_run(parse_recipe([*flags, "--output_dir", str(work / "one_process"), "--stop_at_step", "1"]))
    assert train(one_process) == 1
    one_process.close()  # its output folder is free for the two-process job below
    spec = {"flags": flags, "val_data": str(val_frames_dir), "val_batch_size": 4, "work": str(work),
            "one_process_run": str(work / "one_process"), "stop_at_step": 3,
            "variants": {"plain": [], "swa": ["--swa", "true"]}, "out": str(work / "seen.json")}
    (work / "spec.json").write_text(json.dumps(spec))
    run_script("tests/helpers/two_processes.py", str(work / "spec.json"), timeout=400,
               launcher=accelerate_launch("--config_file", "accelerate_configs/multi_gpu.yaml", "--num_processes",
                                          "2", "--main_process_port", str(free_port())))
    seen = json.loads((work / "seen.json").read_text())
    assert seen["num_processes"] == 2  # else nothing below is about two processes
    return seen, work, val_frames_dir


def test_batch_is_split_over_processes_and_accumulation(two):
    seen, _, _ = two
    assert "2 process(es) x 2 accumulation x 2 = batch 8; 2 steps/epoch, 6 steps" in seen["summary"]
    assert seen["steps"] == 6
    forwards = seen["forwards"]
    assert [[f["images"] for f in rank] for rank in forwards] == [[2] * 12, [2] * 12]
    first, second = seen["fetched"]
    assert len(first) == len(second) == 12 and all(len(b) == 2 for b in first + second)
    for step in range(6):  # each step: 8 different frames, 4 from each process
        frames = [i for rank in (first, second) for batch in rank[2 * step:2 * step + 2] for i in batch]
        assert len(set(frames)) == 8, (step, frames)
    orders = []
    for epoch in range(3):  # each epoch: all 16 frames once, in an order of its own
        frames = [i for rank in (first, second) for batch in rank[4 * epoch:4 * epoch + 4] for i in batch]
        assert sorted(frames) == list(range(16)), (epoch, frames)
        orders.append(frames)
    assert len({tuple(order) for order in orders}) == 3, orders


def test_every_process_masks_differently(two):
    seen, _, _ = two
    first, second = seen["forwards"]
    for micro_step, (a, b) in enumerate(zip(first, second, strict=True)):
        assert a["noise"] != b["noise"], f"micro-step {micro_step}: both processes drew the same masking noise"
    masks = [[torch.tensor(f["noise"]).argsort(dim=1)[:, :1].tolist() for f in rank] for rank in (first, second)]
    assert masks[0] != masks[1]


def test_two_process_validation_loss_equals_the_one_process_value(two):
    seen, work, val_frames_dir = two
    val = seen["val"]
    mae = create_mae("mae_vit_tiny_patch16", img_size=tuple(val["img_size"]))
    mae.load_state_dict(load_file(work / "unbroken.safetensors"))
    # other batches than the two processes' (5 + 1 frames): each frame's mask must follow the frame, not its place
    loader = build_val_loader(load_frames(val_frames_dir), val["img_size"], 5, num_workers=0)
    mean = torch.tensor(val["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(val["std"]).view(1, -1, 1, 1)
    one_process = validate(mae, mae=mae, loader=loader, accelerator=Accelerator(cpu=True), mean=mean, std=std,
                           mask_ratio=val["mask_ratio"], seed=val["seed"])
    assert seen["val_loss"] == pytest.approx(one_process, rel=1e-6)


def test_two_process_probe_features_equal_the_one_process_features_in_frame_order(two):
    seen, work, val_frames_dir = two
    val = seen["val"]
    mae = create_mae("mae_vit_tiny_patch16", img_size=tuple(val["img_size"]))
    mae.load_state_dict(load_file(work / "unbroken.safetensors"))
    mae.eval()
    mean = torch.tensor(val["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(val["std"]).view(1, -1, 1, 1)
    accelerator = Accelerator(cpu=True)
    frames = load_frames(val_frames_dir)
    one_process = {f"pixels.{pool}": value for pool, value in features_from_pixels(
        mae, decode_frames(frames, val["img_size"])[:5], accelerator, mean=mean, std=std, batch_size=5).items()}
    loader = build_val_loader(frames, val["img_size"], 5, num_workers=0)
    one_process.update({f"loader.{pool}": value for pool, value in
                        features_from_loader(mae, loader, accelerator, mean=mean, std=std).items()})
    two_processes = load_file(work / "probe_features.safetensors")
    assert {k: v.shape[0] for k, v in two_processes.items()} == {"pixels.cls": 5, "pixels.avg": 5, "loader.cls": 6,
                                                                 "loader.avg": 6}
    for key, value in one_process.items():
        torch.testing.assert_close(two_processes[key], value, rtol=1e-5, atol=1e-5, msg=key)


def check_resume(found: dict) -> None:
    assert "error" not in found, found["error"]
    assert (found["stopped_at"], found["resumed_from"], found["resumed_to"]) == (3, 3, 6)
    assert found["differences"] == [[], []]


def test_resume_with_two_processes_and_accumulation_equals_the_unbroken_run(two):
    check_resume(two[0]["resumes"]["plain"])


def test_resume_with_two_processes_and_swa_equals_the_unbroken_run(two):
    check_resume(two[0]["resumes"]["swa"])


def test_one_process_checkpoint_is_refused_by_two_processes(two):
    seen, _, _ = two
    for message in seen["refusals"]:
        assert "the run changed (processes: 1 then, 2 now)" in message, message
