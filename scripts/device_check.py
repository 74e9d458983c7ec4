"""GPU check for the README's performance table, in one run (about 7 minutes on one H200).

    bash scripts/device_check.sh                    # on the GPU machine (installs carried wheels first)
    bash scripts/device_check.sh --skip_step        # a rerun of parts 2-4 alone (about 6 minutes)
    python scripts/device_check.py --cpu_rehearsal  # the same code paths on a CPU, tiny sizes, in seconds

1. Step benchmark (no ``datasets`` needed): MAE ViT-B/16, 224 px, batch 256 on one GPU, our defaults (bf16 +
   torch.compile, fused AdamW) against EndoViT's settings (fp16 + GradScaler, eager, per-step sync), with
   recompiles after the compile trial and host synchronisations per step counted.
2. End to end: ``scripts/pretrain.py`` itself on prepared synthetic frames (2,048, repeated to 150 steps an
   epoch; bf16 + compile, DataLoader workers auto) for a few hundred steps: images/s, share of step time waiting
   for data, MFU, peak GPU memory, time to the first step, time to save a checkpoint.
3. fp16 path: the same run forced to ``--mixed_precision fp16``: its loss curve against bf16's, no NaN.
4. Probe cost: one in-training probe (features, k-NN, linear probe) of the model on 10,000 frames on the GPU.
5. Segmentation probe cost: features, fit, prediction at CholecSeg8k's 480x854 and scores, on 256 frames.

Writes ``device_check.json`` and prints a table; exits non-zero when a check fails (a recompile after the
trial, a host sync in our step, a NaN, or an fp16 loss curve off bf16's).

The speed check of the step (``endovit.speedcheck``), two calls of under 8 minutes each on one H200:

    bash scripts/device_check.sh --part a   # versions, SDPA choice, profile table, SDPA backends
    bash scripts/device_check.sh --part b   # compile modes + loss traces, side-stream copy, baselines, timm anchor
    python scripts/device_check.py --cpu_rehearsal --part ab   # both, tiny, on a CPU

They write ``speed_a.json`` / ``speed_b.json``; a part fails on a NaN loss, a recompile after the compile trial
or a compile mode whose loss trace leaves the default's by more than 2% (relative).
"""
from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from endovit.benchmark import (  # noqa: E402
    BenchConfig,
    baseline_of,
    run_benchmark,
    run_probe_benchmark,
    run_segmentation_probe_benchmark,
)
from endovit.cli import exit_script  # noqa: E402
from endovit.hardware import cpu_name  # noqa: E402

FULL = {"model": "mae_vit_base_patch16", "img_size": 224, "batch_size": 256, "bench_steps": 20, "videos": 16,
        "frames": 128, "height": 256, "width": 455, "epoch_frames": 38400, "steps": 300, "fp16_steps": 100,
        "log_every": 20, "probe_frames": 10000, "seg_frames": 256, "mask_size": (480, 854)}
REHEARSAL = {"model": "mae_vit_tiny_patch16", "img_size": 32, "batch_size": 8, "bench_steps": 3, "videos": 2,
             "frames": 16, "height": 48, "width": 64, "epoch_frames": 64, "steps": 8, "fp16_steps": 6,
             "log_every": 2, "probe_frames": 64, "seg_frames": 8, "mask_size": (48, 64)}
STEP_LINE = re.compile(r"^step=(\d+) .*?loss=(\S+) .*?images_per_sec=(\S+)(.*)$", re.M)


def _frames_of_video(args: tuple) -> None:
    from endovit.data.synthetic import write_sample_frames

    out, video, sizes = args
    write_sample_frames(out, videos=1, frames=sizes["frames"], height=sizes["height"], width=sizes["width"],
                        first_video=video)


def prepare_frames(work: Path, sizes: dict) -> Path:
    """Synthetic frames, one process per video, then prepared as JPEG shards (what a real run trains on), repeated
    through hard links to ``epoch_frames`` rows: an epoch of a few steps would measure the loader's restart at
    every epoch (its workers idle until the next epoch's iterator exists), not its steady state."""
    from endovit.data import PrepareSettings
    from endovit.data import prepare_frames as prepare
    from endovit.data.store import repeat_prepared

    raw, prepared = work / "raw", work / "prepared"
    with multiprocessing.get_context("spawn").Pool(min(sizes["videos"], os.cpu_count() or 1)) as pool:
        pool.map(_frames_of_video, [(raw, v, sizes) for v in range(1, sizes["videos"] + 1)])
    prepare(raw / "frames", prepared, PrepareSettings(short_side=min(sizes["height"], 256), image_format="jpeg"),
            num_proc=1, progress=False)
    return repeat_prepared(prepared, sizes["epoch_frames"], work / "repeated")


def pretrain(data: Path, out: Path, sizes: dict, steps: int, *extra: str) -> dict:
    """Run scripts/pretrain.py; returns its step lines and timings parsed from the output."""
    cmd = [sys.executable, str(REPO / "scripts" / "pretrain.py"), "--recipe", "endovit_seg", "--init_from", "",
           "--model", sizes["model"], "--img_size", str(sizes["img_size"]), "--batch_size", str(sizes["batch_size"]),
           "--train_data", str(data), "--output_dir", str(out), "--epochs", "1000", "--warmup_epochs", "1",
           "--stop_at_step", str(steps), "--swa", "false", "--log_every_steps", str(sizes["log_every"]),
           "--save_every_steps", str(steps // 2), "--val_every_steps", str(10 * steps), "--num_recon_images", "0",
           "--report_to", "none", *extra]
    start = time.perf_counter()
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)
    result = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=path))
    wall = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"pretrain.py failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    rows = []
    for match in STEP_LINE.finditer(result.stdout):
        extras = dict(kv.split("=") for kv in match.group(4).split())
        rows.append({"step": int(match.group(1)), "loss": float(match.group(2)),
                     "images_per_sec": float(match.group(3)), **{k: float(v) for k, v in extras.items()}})
    steady = rows[1:] or rows  # the first window holds compiling and the workers' start
    first = re.search(r"first step done (\S+)s after start-up began \(compiling took (\S+)s\)", result.stdout)
    saves = [float(s) for s in re.findall(r"checkpoint step_\d+ saved in (\S+)s", result.stdout)]
    recompiles = re.search(r"torch.compile: (\d+) recompile", result.stdout)

    def mean(key: str) -> float | None:
        values = [r[key] for r in steady if key in r]
        return round(sum(values) / len(values), 4) if values else None

    return {"flags": " ".join(extra), "wall_seconds": round(wall, 1), "log": rows,
            "settings": next((line for line in result.stdout.splitlines() if "process(es) x" in line), ""),
            "images_per_sec": mean("images_per_sec"), "data_wait": mean("data_wait"), "mfu": mean("mfu"),
            "max_memory_gb": max((r.get("max_memory_gb", 0) for r in rows), default=None),
            "first_step_seconds": float(first.group(1)) if first else None,
            "compile_seconds": float(first.group(2)) if first else None,
            "checkpoint_seconds": max(saves) if saves else None,
            "recompiles_after_trial": int(recompiles.group(1)) if recompiles else None,
            "final_loss": rows[-1]["loss"] if rows else None}


def step_check(sizes: dict, device: torch.device, rehearsal: bool, report: dict) -> list[str]:
    """1. The step alone: ours against EndoViT's settings; fills ``report``, returns the failures."""
    failures = []
    base = BenchConfig(model=sizes["model"], img_size=[sizes["img_size"]] * 2, batch_size=sizes["batch_size"],
                       mixed_precision="auto", torch_compile=True, steps=sizes["bench_steps"], warmup=2,
                       compile_backend="eager" if rehearsal else "inductor")
    report["step_benchmark"] = [run_benchmark(config, device) for config in (base, baseline_of(base))]
    ours, baseline = report["step_benchmark"]
    report["speedup_vs_endovit_settings"] = round(ours["images_per_sec"] / baseline["images_per_sec"], 2)
    print(f"step: ours {ours['images_per_sec']} img/s (mfu {ours['mfu']}, {ours['peak_device_mem_mb']} MB, compiled "
          f"{ours['compiled']}, recompiles {ours['recompiles_after_trial']}, host syncs/step "
          f"{ours['host_syncs_per_step']}) vs EndoViT settings {baseline['images_per_sec']} img/s: "
          f"{report['speedup_vs_endovit_settings']}x", flush=True)
    if ours["recompiles_after_trial"]:
        failures.append(f"{ours['recompiles_after_trial']} recompile(s) after the compile trial")
    if ours["host_syncs_per_step"]:
        failures.append(f"{ours['host_syncs_per_step']} host synchronisation(s) per step")
    return failures


def speed_parts(args) -> int:
    """``--part a|b|ab``: ``endovit.speedcheck``'s parts; writes speed_<part>.json, returns the exit code."""
    from endovit import speedcheck

    sizes = speedcheck.REHEARSAL if args.cpu_rehearsal else speedcheck.FULL
    device = torch.device("cpu" if args.cpu_rehearsal or not torch.cuda.is_available() else "cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failures = []
    for part in args.part:
        began = time.perf_counter()
        report = getattr(speedcheck, f"part_{part}")(sizes, device)
        report["seconds"] = round(time.perf_counter() - began, 1)
        rows = report.get("runs", []) + report.get("backend_ab", [])
        failures += [f"{r['name']}: loss {r['loss_last']}" for r in rows
                     if "loss_last" in r and not math.isfinite(r["loss_last"])]
        failures += [f"{r['name']}: {r['recompiles_after_trial']} recompile(s) after the trial" for r in rows
                     if r.get("recompiles_after_trial")]
        failures += [f"{r['name']}: loss trace off the default's by {r['loss_trace_worst_relative_gap_vs_default']}"
                     for r in report.get("runs", []) if "mode=" in r["name"]
                     and not r["loss_trace_worst_relative_gap_vs_default"] <= 0.02]
        report["failures"] = failures
        (out / f"speed_{part}.json").write_text(json.dumps(report, indent=2) + "\n")
        print(f"part {part}: {report['seconds']}s; results: {out / f'speed_{part}.json'}", flush=True)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu_rehearsal", action="store_true", help="tiny sizes on the CPU: checks the paths only")
    parser.add_argument("--out", default=os.environ.get("OUT") or "outputs/device_check", help="results folder")
    parser.add_argument("--skip_e2e", action="store_true", help="step benchmark only (no datasets needed)")
    parser.add_argument("--skip_step", action="store_true", help="end to end only (a rerun after the step benchmark)")
    parser.add_argument("--part", default="classic", choices=["classic", "a", "b", "ab"],
                        help="classic: the checks above; a / b: the step's speed check (see the docstring)")
    args = parser.parse_args(argv)
    if args.part != "classic":
        return speed_parts(args)
    sizes = REHEARSAL if args.cpu_rehearsal else FULL
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cpu" if args.cpu_rehearsal or not torch.cuda.is_available() else "cuda")
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "cpu": cpu_name(),
              "cores": os.cpu_count(), "torch": torch.__version__, "sizes": sizes}
    print(f"device {report['device']}; CPU {report['cpu']}; {report['cores']} cores; torch {torch.__version__}",
          flush=True)
    failures = []

    if not args.skip_step:
        failures += step_check(sizes, device, args.cpu_rehearsal, report)
    (out / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")  # partial results survive a crash

    # 2. and 3. pretrain.py end to end, bf16 (+ compile on GPUs), then fp16
    if not args.skip_e2e:
        data = prepare_frames(out / "work", sizes)
        common = ["--num_workers", "auto"] + (["--torch_compile", "false"] if args.cpu_rehearsal else [])
        bf16 = pretrain(data, out / "work" / "bf16", sizes, sizes["steps"], "--mixed_precision", "auto", *common)
        precision_flag = ["--mixed_precision", "bf16" if args.cpu_rehearsal else "fp16", "--torch_compile", "false"]
        fp16 = pretrain(data, out / "work" / "fp16", sizes, sizes["fp16_steps"], *precision_flag,
                        "--num_workers", "auto")
        report["pretrain"], report["pretrain_fp16"] = bf16, fp16
        pairs = [(a["loss"], b["loss"]) for a in bf16["log"] for b in fp16["log"] if a["step"] == b["step"]]
        worst = max((abs(a - b) / abs(a) for a, b in pairs), default=float("nan"))
        report["fp16_vs_bf16_worst_relative_loss_gap"] = round(worst, 4)
        print(f"pretrain.py: {bf16['images_per_sec']} img/s, data wait {bf16['data_wait']}, mfu {bf16['mfu']}, "
              f"{bf16['max_memory_gb']} GB, first step after {bf16['first_step_seconds']}s (compile "
              f"{bf16['compile_seconds']}s), checkpoint {bf16['checkpoint_seconds']}s, recompiles "
              f"{bf16['recompiles_after_trial']}; fp16 vs bf16 worst loss gap {worst:.3f}", flush=True)
        if any(not torch.isfinite(torch.tensor(r["loss"])) for r in bf16["log"] + fp16["log"]):
            failures.append("a NaN or infinite loss")
        if bf16["recompiles_after_trial"]:
            failures.append(f"pretrain.py recompiled {bf16['recompiles_after_trial']} time(s) after the trial")
        if not args.cpu_rehearsal and not worst < 0.1:
            failures.append(f"fp16 loss curve off bf16's by {worst:.3f} (relative)")

        # 4. what probing during pretraining costs
        probe = run_probe_benchmark(sizes["model"], sizes["img_size"], sizes["probe_frames"], device)
        report["probe"] = probe
        print(f"probe of {probe['frames']} frames ({probe['pixels_gb']} GB on the device): features "
              f"{probe['features_seconds']}s, k-NN + linear {probe['classifiers_seconds']}s", flush=True)

        # 5. what the segmentation probe costs, at CholecSeg8k's mask size
        seg = run_segmentation_probe_benchmark(sizes["model"], sizes["img_size"], sizes["seg_frames"], device,
                                               mask_size=sizes["mask_size"])
        report["segmentation_probe"] = seg
        print(f"segmentation probe of {seg['frames']} frames, masks {seg['mask_size'][0]}x{seg['mask_size'][1]}: "
              f"features {seg['features_s']}s, fit {seg['fit_s']}s, predict {seg['predict_s']}s, scores "
              f"{seg['scores_s']}s", flush=True)
    report["failures"] = failures
    (out / "device_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {out / 'device_check.json'}")
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    exit_script(main())
