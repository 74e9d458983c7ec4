"""Run under `accelerate launch --num_processes 2` by tests/test_distributed.py; writes what it saw as JSON.

    two_processes.py SPEC_JSON

SPEC: {"flags": [...pretrain flags without --output_dir...], "val_data": frames, "val_batch_size": per process,
"work": folder, "one_process_run": output folder of a one-process run with the same flags (holds a checkpoint),
"stop_at_step": where the broken runs stop, "variants": {name: extra flags} of the resume checks (the first,
no extra flags, reuses the recorded run), "out": JSON path}. In one process group, one after the
other: resuming the one-process checkpoint (must be refused: processes changed), an unbroken run (recording every
micro-batch's frames, masking noise and size on each process, then validating its final weights, saved for the test),
probe features of its final weights (both ways a probe embeds frames, gathered across processes), and runs stopped
mid-epoch and resumed (their weights compared with unbroken runs' on each process).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate.utils import gather_object
from safetensors.torch import save_file

from endovit.checkpoint import CheckpointError
from endovit.data import build_val_loader, load_frames
from endovit.data.loader import TrainFrames
from endovit.engine import train
from endovit.probes.features import features_from_loader, features_from_pixels
from endovit.probes.probe import decode_frames
from endovit.recipe import parse_recipe
from endovit.trainer import build_run
from endovit.validation import validate

FETCHED: list[list[int]] = []  # frame indices of each micro-batch this process loaded, in order
_getitems = TrainFrames.__getitems__


def _recording_getitems(self, keys):
    FETCHED.append([index for _, index, _ in keys])
    return _getitems(self, keys)


TrainFrames.__getitems__ = _recording_getitems  # num_workers 0: loaded in this process


def state_of(run) -> dict[str, torch.Tensor]:
    state = {f"mae.{k}": v.detach().cpu().clone() for k, v in run.mae.state_dict().items()}
    if run.swa_model is not None:
        state.update({f"swa.{k}": v.detach().cpu().clone() for k, v in run.swa_model.state_dict().items()})
    return state


def resume_check(flags: list[str], work: Path, stop_at_step: int, unbroken: dict | None) -> dict:
    """A run stopped at ``stop_at_step`` and resumed against an unbroken one (``unbroken``: its weights, else
    trained here): the steps reached, the tensors that differ on each process, or the error resuming raised."""
    if unbroken is None:
        reference = build_run(parse_recipe([*flags, "--output_dir", str(work / "unbroken")]))
        train(reference)
        unbroken = state_of(reference)
    broken = build_run(parse_recipe([*flags, "--output_dir", str(work / "broken"), "--stop_at_step",
                                     str(stop_at_step)]))
    found = {"stopped_at": train(broken)}
    try:
        resumed = build_run(parse_recipe([*flags, "--output_dir", str(work / "broken"), "--resume", "auto"]))
    except Exception as err:  # noqa: BLE001 - reported to the test, which names the bug
        found["error"] = gather_object([f"{type(err).__name__}: {err}"])
        return found
    found["resumed_from"] = resumed.progress.step
    found["resumed_to"] = train(resumed)
    got = state_of(resumed)
    found["differences"] = gather_object([sorted(k for k in unbroken if k not in got or
                                                 not torch.equal(unbroken[k], got[k]))])
    return found


def main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    flags, work = spec["flags"], Path(spec["work"])
    result: dict = {}

    # a one-process checkpoint: refused, the number of processes changed
    try:
        build_run(parse_recipe([*flags, "--output_dir", spec["one_process_run"], "--resume", "auto"]))
        refusals = ["not refused"]
    except CheckpointError as err:
        refusals = [str(err)]
    result["refusals"] = gather_object(refusals)

    # unbroken run: frames, noise and size of every micro-batch on each process; validation of its final weights
    run = build_run(parse_recipe([*flags, "--output_dir", str(work / "unbroken")]))
    accelerator = run.accelerator
    forwards: list[dict] = []
    run.mae.register_forward_pre_hook(lambda module, args: forwards.append(
        {"images": args[0].shape[0], "noise": args[2].cpu().tolist()}) if module.training else None)
    FETCHED.clear()
    result["steps"] = train(run)
    result["summary"] = run.summary()
    result["num_processes"] = accelerator.num_processes
    result["fetched"] = gather_object([list(FETCHED)])
    result["forwards"] = gather_object([forwards])
    # prepared as build_run prepares --val_data's loader (kept out of the runs: a new best/ is not what is tested)
    recipe = run.recipe
    val_loader = accelerator.prepare(build_val_loader(load_frames(spec["val_data"]), recipe.img_size,
                                                      spec["val_batch_size"], num_workers=0))
    result["val_loss"] = validate(run.model, mae=run.mae, loader=val_loader, accelerator=accelerator, mean=run.mean,
                                  std=run.std, mask_ratio=recipe.mask_ratio, seed=recipe.seed)
    result["val"] = {"mean": recipe.mean, "std": recipe.std, "mask_ratio": recipe.mask_ratio, "seed": recipe.seed,
                     "batch_size": spec["val_batch_size"], "img_size": recipe.img_size}
    unbroken = state_of(run)
    if accelerator.is_main_process:
        save_file({k[4:]: v for k, v in unbroken.items() if k.startswith("mae.")}, str(work / "unbroken.safetensors"))

    # probe features: 5 decoded frames split 3 + 3 (the last a repeat) in batches of 2, and the validation loader
    # (6 frames in batches of 4 per process, the last padded); the test compares them with one process's
    run.mae.eval()
    pixels = decode_frames(load_frames(spec["val_data"]), recipe.img_size)[:5]
    features = {f"pixels.{pool}": value for pool, value in
                features_from_pixels(run.mae, pixels, accelerator, mean=run.mean, std=run.std, batch_size=2).items()}
    features.update({f"loader.{pool}": value for pool, value in
                     features_from_loader(run.mae, val_loader, accelerator, mean=run.mean, std=run.std).items()})
    if accelerator.is_main_process:
        save_file({k: v.cpu().contiguous() for k, v in features.items()}, str(work / "probe_features.safetensors"))

    # stopped mid-epoch, then resumed: the same weights (and SWA average) as the unbroken run, on every process;
    # for each variant of the flags (e.g. with and without SWA)
    result["resumes"] = {}
    for name, variant in spec["variants"].items():
        result["resumes"][name] = resume_check(flags + variant, work / name, spec["stop_at_step"],
                                               unbroken if not variant else None)
    if accelerator.is_main_process:
        Path(spec["out"]).write_text(json.dumps(result))
    accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()  # a gloo group left to the interpreter's exit can abort a process


if __name__ == "__main__":
    main(sys.argv[1])
