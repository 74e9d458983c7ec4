"""The step loop (``endovit.engine.train``) checked against the recipe, in-process on one CPU process: the lr
applied at every optimizer step is the schedule's (warmup, cosine, SWA anneal), SWA averages exactly at the steps
the recipe implies, and a run stopped mid-epoch and resumed with gradient accumulation ends bit for bit where an
unbroken one does."""
from __future__ import annotations

import pytest
import torch
from helpers.scripts import TINY_TRAINING

from endovit.engine import train
from endovit.optim import lr_at_step
from endovit.recipe import parse_recipe
from endovit.trainer import build_run

IN_PROCESS = [*TINY_TRAINING, "--report_to", "none", "--num_recon_images", "0", "--num_workers", "0"]

# 16 frames, batch 4 = 2 accumulation x micro-batch 2: 4 steps/epoch, 12 steps; warmup one epoch, SWA from epoch 1
# every 3 steps and at each epoch's end, annealing to swa_lr over epoch 1
LOOP = ["--batch_size", "4", "--grad_accum_steps", "2", "--epochs", "3", "--warmup_epochs", "1", "--lr", "1e-3",
        "--min_lr", "1e-4", "--layer_decay", "0.75", "--swa", "true", "--swa_start_epoch", "1",
        "--swa_every_steps", "3", "--swa_lr", "5e-4", "--log_every_steps", "5", "--save_every_steps", "100"]


def build(frames_dir, out, *flags):
    return build_run(parse_recipe([*IN_PROCESS, "--train_data", str(frames_dir), "--output_dir", str(out), *flags]))


def record(run) -> dict:
    """Hooks that note, per optimizer step, the base lr of every group (lr / lr_scale) and the step SWA averages at."""
    seen = {"lr": [], "swa": [], "micro_batches": [], "noise": []}
    inner = run.optimizer.optimizer  # accelerate's wrapper steps it only when gradients are synchronised

    def before_step(optimizer, args, kwargs):
        seen["lr"].append((run.progress.step, [g["lr"] / g["lr_scale"] for g in optimizer.param_groups]))

    inner.register_step_pre_hook(before_step)
    average = run.swa_model.update_parameters

    def update_parameters(model):
        seen["swa"].append(run.progress.step)
        average(model)

    run.swa_model.update_parameters = update_parameters

    def before_forward(module, args):
        seen["micro_batches"].append(args[0].shape[0])
        seen["noise"].append(args[2].clone())

    run.mae.register_forward_pre_hook(before_forward)
    return seen


def weights(run) -> dict[str, torch.Tensor]:
    state = {f"mae.{k}": v.detach().clone() for k, v in run.mae.state_dict().items()}
    state.update({f"swa.{k}": v.detach().clone() for k, v in run.swa_model.state_dict().items()})
    return state


@pytest.fixture(scope="module")
def unbroken(tmp_path_factory, frames_dir):
    run = build(frames_dir, tmp_path_factory.mktemp("loop") / "unbroken", *LOOP)
    seen = record(run)
    step = train(run)
    return {"run": run, "step": step, "seen": seen, "weights": weights(run)}


def test_split_of_the_batch_and_the_schedule_length(unbroken):
    run, seen = unbroken["run"], unbroken["seen"]
    assert (run.schedule.steps_per_epoch, run.schedule.total_steps, unbroken["step"]) == (4, 12, 12)
    assert seen["micro_batches"] == [2] * 24  # 12 steps x 2 accumulated micro-batches of 2 images
    assert [step for step, _ in seen["lr"]] == list(range(12))  # one optimizer step per 2 micro-batches


def test_every_micro_batch_draws_its_own_masks(unbroken):
    noise = unbroken["seen"]["noise"]
    assert len(noise) == 24
    rows = {tuple(row.tolist()) for batch in noise for row in batch}
    assert len(rows) == 48  # one draw per image of every micro-batch (micro-steps of a step included)


def test_lr_applied_at_every_step_is_the_schedules(unbroken):
    seen = unbroken["seen"]
    expected = [lr_at_step(s, 4, 1e-3, 1e-4, 3, 1.0, swa=True, swa_start_epoch=1, swa_lr=5e-4) for s in range(12)]
    for (step, group_lrs), lr in zip(seen["lr"], expected, strict=True):
        assert group_lrs == pytest.approx([lr] * len(group_lrs), rel=1e-9, abs=1e-15), f"step {step}"
    # by hand: warmup 0 -> 1e-3 over epoch 0; at epoch 1 (warmup's end, cosine at its peak) the SWA anneal starts
    # from 1e-3 and reaches swa_lr 5e-4 one epoch later, then holds
    by_hand = {0: 0.0, 1: 2.5e-4, 2: 5e-4, 3: 7.5e-4, 4: 1e-3, 6: 7.5e-4, 8: 5e-4, 9: 5e-4, 11: 5e-4}
    applied = {step: group_lrs[0] for step, group_lrs in seen["lr"]}
    for step, lr in by_hand.items():
        assert applied[step] == pytest.approx(lr, rel=1e-9, abs=1e-15), f"step {step}"


def test_swa_averages_at_the_steps_the_recipe_implies(unbroken):
    run, seen = unbroken["run"], unbroken["seen"]
    # from epoch 1 (steps 5..12): every 3rd step of an epoch (steps 7, 11) and each epoch's end (8, 12)
    assert seen["swa"] == [7, 8, 11, 12]
    assert run.swa_model.n_averaged.item() == 4


def test_resume_mid_epoch_with_accumulation_equals_the_unbroken_run(unbroken, tmp_path, frames_dir):
    out = tmp_path / "broken"
    first = build(frames_dir, out, *LOOP, "--stop_at_step", "6")  # epoch 1, 2 of its 4 steps (4 micro-batches) done
    assert train(first) == 6
    resumed = build(frames_dir, out, *LOOP, "--resume", "auto")
    assert resumed.progress.step == 6
    seen = record(resumed)
    assert train(resumed) == 12
    assert [step for step, _ in seen["lr"]] == list(range(6, 12)) and seen["swa"] == [7, 8, 11, 12]
    assert seen["micro_batches"] == [2] * 12
    expected = unbroken["weights"]
    got = weights(resumed)
    assert got.keys() == expected.keys()
    different = [key for key in expected if not torch.equal(expected[key], got[key])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"
