"""``--recipe endovit_seg`` runs EndoViT's SWA phase as EndoViT's code does: EndoViT's epoch loop is written out here
(its ``adjust_learning_rate`` and the SWA calls of ``engine_pretrain.py`` / ``main_pretrain.py``, with torch's real
``AveragedModel`` and ``SWALR``) and compared, per parameter group and step over whole schedules, with the recipe's
schedule and with the step loop itself; ``best_swa/`` (EndoViT's released weights) is exported from
``best_swa_from_epoch`` on and comes back after a stop and a resume into an emptied output folder."""
from __future__ import annotations

import json
import math
import shutil
import warnings
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file
from torch.optim.swa_utils import SWALR, AveragedModel

import endovit.engine
from endovit.engine import train
from endovit.recipe import parse_recipe
from endovit.trainer import Schedule, build_run

# ViT-B/16 MAE with layer decay 0.75 (EndoViT's): the 14 distinct lr scales of its 28 groups
VIT_B_SCALES = [0.75 ** (13 - layer) for layer in range(14)]


def endovit_loop(*, scales, steps_per_epoch, epochs, warmup_epochs, lr, min_lr, swa_start, swa_every, swa_lr):
    """EndoViT's training loop reduced to what moves the lr and the average: per optimizer step, the lr of every group
    as the step uses it; the steps done when each ``update_parameters`` ran; the ``AveragedModel``."""
    args = SimpleNamespace(lr=lr, min_lr=min_lr, warmup_epochs=warmup_epochs, epochs=epochs, do_swa=False)

    def adjust_learning_rate(optimizer, epoch):  # util/lr_sched.py, both branches
        if not args.do_swa:
            if epoch < args.warmup_epochs:
                value = args.lr * epoch / args.warmup_epochs
            else:
                value = args.min_lr + (args.lr - args.min_lr) * 0.5 * (
                    1.0 + math.cos(math.pi * (epoch - args.warmup_epochs) / (args.epochs - args.warmup_epochs)))
            for group in optimizer.param_groups:
                group["lr"] = value * group["lr_scale"]
        else:
            for group in optimizer.param_groups:
                group["lr"] = group["lr"] * group["lr_scale"]

    counter = torch.nn.Linear(1, 1, bias=False)  # its weight counts the optimizer steps done
    with torch.no_grad():
        counter.weight.zero_()
    optimizer = torch.optim.AdamW([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr_scale": s} for s in scales],
                                  lr=lr, betas=(0.9, 0.95))
    swa_model = swa_scheduler = None
    lrs, averaged = [], []
    for epoch in range(epochs):
        args.do_swa = swa_start <= epoch
        if args.do_swa and swa_model is None:  # main_pretrain.py: created at the start of epoch swa_start
            swa_model = AveragedModel(counter)
            swa_scheduler = SWALR(optimizer, anneal_strategy="cos", swa_lr=swa_lr,
                                  anneal_epochs=math.ceil(steps_per_epoch / swa_every))
        for i in range(steps_per_epoch):
            if args.do_swa:
                if (i + 1) % swa_every == 0 or (i + 1) == steps_per_epoch:
                    swa_model.update_parameters(counter)
                    averaged.append(int(counter.weight.item()))
                    swa_scheduler.step()
                    adjust_learning_rate(optimizer, i / steps_per_epoch + epoch)
            else:
                adjust_learning_rate(optimizer, i / steps_per_epoch + epoch)
            lrs.append([group["lr"] for group in optimizer.param_groups])
            with torch.no_grad():
                counter.weight += 1  # the optimizer step
    return lrs, averaged, swa_model


def reference(scales, steps_per_epoch, recipe):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # SWALR stepped without optimizer.step: nothing is trained here
        return endovit_loop(scales=scales, steps_per_epoch=steps_per_epoch, epochs=recipe.epochs,
                            warmup_epochs=recipe.warmup_epochs, lr=recipe.peak_lr, min_lr=recipe.min_lr,
                            swa_start=recipe.swa_start_epoch, swa_every=recipe.swa_every_steps, swa_lr=recipe.swa_lr)


def worst_relative(expected, got) -> float:
    return max(abs(g - e) / abs(e) if e else abs(g) for row_e, row_g in zip(expected, got, strict=True)
               for e, g in zip(row_e, row_g, strict=True))


@pytest.mark.parametrize("steps_per_epoch", [10, 695])  # 695 = Cholec80_for_Segmentation, 178,054 frames / 256
def test_recipe_lr_of_every_group_and_the_averaged_steps_are_endovits(steps_per_epoch):
    recipe = parse_recipe(["--recipe", "endovit_seg", "--train_data", "unused"])
    if steps_per_epoch == 10:  # the same rule with the anneal over 3 averaging steps: every 4 steps and at 9
        recipe = parse_recipe(["--recipe", "endovit_seg", "--train_data", "unused", "--swa_every_steps", "4"])
    schedule = Schedule(recipe, steps_per_epoch)
    expected, averaged, swa_model = reference(VIT_B_SCALES, steps_per_epoch, recipe)
    assert len(expected) == schedule.total_steps == 15 * steps_per_epoch
    got = [[schedule.lr_at(step, scale) for scale in VIT_B_SCALES] for step in range(schedule.total_steps)]
    assert worst_relative(expected, got) <= 1e-9
    # the weights after these many steps are averaged: before the averaging iteration's own step
    assert [step for step in range(schedule.total_steps) if schedule.swa_average_before(step)] == averaged
    assert not any(schedule.swa_average_after(step) for step in range(1, schedule.total_steps + 1))
    assert swa_model.n_averaged.item() == len(averaged) and averaged[-1] == schedule.total_steps - 1
    if steps_per_epoch == 695:  # EndoViT validates at steps 500 and 695 of each epoch: 30 times (every 500: 21)
        validations = [step for step in range(1, schedule.total_steps + 1) if schedule.val_due(step)]
        assert len(validations) == 30 and validations[:3] == [500, 695, 1195]
    # the test tells the rules apart: the smooth schedule is not EndoViT's
    smooth = Schedule(parse_recipe(["--recipe", "endovit_seg", "--train_data", "unused", "--swa_schedule", "smooth",
                                    "--swa_every_steps", str(recipe.swa_every_steps)]), steps_per_epoch)
    assert worst_relative(expected, [[smooth.lr_at(s, c) for c in VIT_B_SCALES]
                                     for s in range(schedule.total_steps)]) > 0.1


# 16 frames, batch 2: 8 steps/epoch, 24 steps; SWA from epoch 1 every 3 steps (epoch steps 3, 6 and the 8th);
# validation every 3 steps of each epoch and at its end; best_swa/ from epoch 2 (steps 17..24)
FLAGS = ["--recipe", "demo", "--model", "mae_vit_tiny_patch16", "--img_size", "32", "--num_workers", "0",
         "--mixed_precision", "no", "--report_to", "none", "--num_recon_images", "0", "--batch_size", "2",
         "--epochs", "3", "--warmup_epochs", "1", "--lr", "1e-3", "--min_lr", "1e-4", "--layer_decay", "0.75",
         "--swa", "true", "--swa_start_epoch", "1", "--swa_every_steps", "3", "--swa_lr", "5e-4",
         "--swa_schedule", "endovit", "--val_every_steps", "3", "--val_schedule", "epoch",
         "--best_swa_from_epoch", "2", "--save_every_steps", "100", "--log_every_steps", "100", "--seed", "5"]


def build(frames_dir, val_frames_dir, out, *flags):
    return build_run(parse_recipe([*FLAGS, "--train_data", str(frames_dir), "--val_data", str(val_frames_dir),
                                   "--output_dir", str(out), *flags]))


def record(run, monkeypatch) -> dict:
    """Per optimizer step the lr of every group; the steps done at each SWA update; each validation's losses."""
    seen = {"lr": [], "swa": [], "val": []}
    run.optimizer.optimizer.register_step_pre_hook(
        lambda optimizer, args, kwargs: seen["lr"].append([g["lr"] for g in optimizer.param_groups]))
    average = run.swa_model.update_parameters

    def update_parameters(model):
        seen["swa"].append(run.progress.step)
        average(model)

    run.swa_model.update_parameters = update_parameters
    validate_run = endovit.engine.validate_run

    def validated(run_, step, write):
        losses = validate_run(run_, step, write)
        seen["val"].append((step, *losses))
        return losses

    monkeypatch.setattr(endovit.engine, "validate_run", validated)
    return seen


def test_step_loop_runs_endovits_swa_and_best_swa_survives_a_restart(tmp_path, frames_dir, val_frames_dir,
                                                                      monkeypatch):
    unbroken = build(frames_dir, val_frames_dir, tmp_path / "unbroken")
    seen = record(unbroken, monkeypatch)
    assert train(unbroken) == 24 and unbroken.schedule.steps_per_epoch == 8
    recipe = unbroken.recipe
    scales = [g["lr_scale"] for g in unbroken.optimizer.param_groups]
    expected_lr, averaged, _ = reference(scales, 8, recipe)
    assert len(set(scales)) > 5 and worst_relative(expected_lr, seen["lr"]) <= 1e-9
    assert seen["swa"] == averaged == [10, 13, 15, 18, 21, 23]
    # validation: epoch steps 3, 6 and 8 of every epoch; the SWA average's from its first update on
    assert [step for step, *_ in seen["val"]] == [3, 6, 8, 11, 14, 16, 19, 22, 24]
    assert [step for step, _, swa in seen["val"] if swa is not None] == [11, 14, 16, 19, 22, 24]
    counted = [(swa, step) for step, _, swa in seen["val"] if step > 16]
    best_loss, best_step = min(counted)
    info = json.loads((tmp_path / "unbroken" / "best_swa" / "endovit_config.json").read_text())
    assert (info["step"], info["val_loss"]) == (best_step, pytest.approx(best_loss, rel=1e-12))
    swa_weights = {k.removeprefix("module."): v for k, v in unbroken.swa_model.state_dict().items()
                   if k.startswith("module.")}
    best_swa = load_file(tmp_path / "unbroken" / "best_swa" / "model.safetensors")
    assert best_swa.keys() <= swa_weights.keys()

    # stopped in epoch 2 before its first validation: no best_swa/ yet (epoch 1's SWA validations do not count)
    out = tmp_path / "restarted"
    assert train(build(frames_dir, val_frames_dir, out, "--stop_at_step", "18")) == 18
    assert (out / "best").is_dir() and not (out / "checkpoints" / "best_swa").exists()
    resumed = build(frames_dir, val_frames_dir, out, "--resume", "auto", "--stop_at_step", "22")
    assert train(resumed) == 22 and (out / "best_swa" / "model.safetensors").is_file()
    # a restart into an emptied output folder (a new SageMaker instance) gets best_swa/ back, then goes on
    shutil.rmtree(out / "best_swa")
    resumed = build(frames_dir, val_frames_dir, out, "--resume", "auto")
    assert (out / "best_swa" / "model.safetensors").is_file()
    assert train(resumed) == 24
    again = load_file(out / "best_swa" / "model.safetensors")
    assert json.loads((out / "best_swa" / "endovit_config.json").read_text())["step"] == best_step
    assert again.keys() == best_swa.keys() and all(torch.equal(again[k], best_swa[k]) for k in best_swa)
