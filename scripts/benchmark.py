"""Time the real MAE training step (the one pretrain.py runs) and compare with EndoViT's settings.

    python scripts/benchmark.py --model mae_vit_base_patch16 --batch_size 8 --configs endovit,endovit_fp32,baseline

Configurations: ``endovit`` (our defaults: precision as ``auto`` picks it (on CPUs measured), fused AdamW,
torch.compile on CUDA, no per-step host sync), ``endovit_fp32`` / ``endovit_bf16`` (the same in fp32 / bf16),
``endovit_compiled`` (compile forced on), ``endovit_official`` (our defaults without the exact levers: eager
normalize before the forward, the forward returning pred, every patch embedded, scatter-add unshuffle),
``baseline`` (EndoViT's settings on current timm: every optimisation off: fp16 + GradScaler on CUDA / fp32 on
CPU, eager, unfused AdamW, loss.item(), grad norm and synchronize every step, and with --frames, torchvision
ImageFolder loading), ``endovit_as_ran`` (the baseline with EndoViT's explicit attention as timm 0.4.5 computes
it). Prints a table, the ratio of each configuration to each baseline, and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

import torch

from endovit import benchmark as bench
from endovit.benchmark import BenchConfig, baseline_of, endovit_as_ran_of, endovit_batches, our_batches, run_benchmark
from endovit.cli import exit_script
from endovit.models.attention import SDPA_BACKENDS

COLUMNS = [("name", "config", 28), ("precision", "prec", 5), ("compiled", "compiled", 8),
           ("images_per_sec", "img/s", 9), ("ms_per_step", "ms/step", 9), ("data_wait_ms_per_step", "data ms", 8),
           ("compute_ms_per_step", "compute ms", 10), ("achieved_tflops", "TFLOP/s", 8), ("mfu", "MFU", 6),
           ("peak_host_rss_mb", "RSS MB", 8), ("peak_device_mem_mb", "dev MB", 8)]


def build_configs(names: list[str], base: BenchConfig) -> list[BenchConfig]:
    variants = {
        "endovit": base,
        "endovit_fp32": replace(base, name="endovit_fp32", mixed_precision="no"),
        "endovit_bf16": replace(base, name="endovit_bf16", mixed_precision="bf16"),
        "endovit_compiled": replace(base, name="endovit_compiled", torch_compile=True),
        "endovit_official": replace(base, name="endovit_official", **dict.fromkeys(bench.EXACT_LEVERS, False)),
        "baseline": baseline_of(base),
        "endovit_as_ran": endovit_as_ran_of(base),
    }
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise SystemExit(f"error: --configs {','.join(unknown)}: unknown; choose from {', '.join(variants)}")
    return [variants[n] for n in names]


def format_table(results: list[dict]) -> str:
    header = " ".join(f"{title:>{width}}" for _, title, width in COLUMNS)
    rows = [" ".join(f"{'-' if r[key] is None else r[key]!s:>{width}}" for key, _, width in COLUMNS)
            for r in results]
    return "\n".join([header, *rows])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="mae_vit_base_patch16", help="architecture (EndoViT: mae_vit_base_patch16)")
    parser.add_argument("--img_size", type=int, nargs="+", default=[224], help="H [W]")
    parser.add_argument("--batch_size", type=int, default=8, help="images per step")
    parser.add_argument("--mixed_precision", default="auto", choices=["auto", "no", "bf16", "fp16"],
                        help="for the endovit configuration (auto = what pretrain.py picks on this machine)")
    parser.add_argument("--torch_compile", default="auto", choices=["auto", "true", "false"],
                        help="for the endovit configuration (auto = on for CUDA)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--steps", type=int, default=0, help="timed optimizer steps (0: 100 on CUDA, 10 on CPUs)")
    parser.add_argument("--compile_mode", default="default",
                        choices=["default", "max-autotune-no-cudagraphs", "max-autotune", "reduce-overhead"],
                        help="torch.compile mode for compiled configurations")
    parser.add_argument("--coordinate_descent", action="store_true", help="inductor's coordinate-descent tuning")
    parser.add_argument("--sdpa_backend", default="auto", choices=SDPA_BACKENDS,
                        help="scaled_dot_product_attention backend for our configurations (auto: PyTorch picks)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile happens before)")
    parser.add_argument("--configs", default="endovit,baseline", help="comma-separated, run in this order")
    parser.add_argument("--frames", default="", help="time the data pipelines too, on these frames")
    parser.add_argument("--num_workers", type=int, default=4, help="DataLoader workers with --frames")
    parser.add_argument("--peak_tflops", type=float, default=None, help="device peak for MFU (known GPUs: auto)")
    parser.add_argument("--json", default="benchmark.json", help="where to write the results")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0 = torch's default)")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    img_size = args.img_size * 2 if len(args.img_size) == 1 else args.img_size[:2]
    steps = args.steps or (100 if device.type == "cuda" else 10)
    base = BenchConfig(model=args.model, img_size=img_size, batch_size=args.batch_size,
                       mixed_precision=args.mixed_precision, steps=steps, warmup=args.warmup,
                       torch_compile=args.torch_compile == "true" or (args.torch_compile == "auto"
                                                                        and device.type == "cuda"),
                       compile_mode=None if args.compile_mode == "default" else args.compile_mode,
                       coordinate_descent=args.coordinate_descent, sdpa_backend=args.sdpa_backend)
    results = []
    for config in build_configs(args.configs.split(","), base):
        batches = None
        if args.frames:
            make = endovit_batches if config.sync_every_step else our_batches
            batches = make(args.frames, img_size, args.batch_size, args.num_workers)
        result = run_benchmark(config, device, batches, args.peak_tflops)
        results.append(result)
        print(f"{config.name}: {result['images_per_sec']} images/s", file=sys.stderr, flush=True)

    print(format_table(results))
    for baseline in (r for r in results if r["sync_every_step"]):
        label = "baseline" if baseline["attention"] == "timm" else "as ran"
        for r in results:
            if r is not baseline:
                print(f"{r['name']} / {label}: {r['images_per_sec'] / baseline['images_per_sec']:.2f}x images/s")
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    exit_script(main())
