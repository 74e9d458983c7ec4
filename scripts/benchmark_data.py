"""Input-pipeline speed: EndoViT's (ImageFolder of 854x480 PNGs + torchvision transforms) against ours
(prepared dataset, uint8 until the device), on the same generated Cholec80-like frames.

    python scripts/benchmark_data.py                                  # about a minute on 2 cores
    python scripts/benchmark_data.py --rss_sizes 10000,100000          # plus host memory as the dataset grows

Prints frames/s in total and per worker, peak RSS (main process + workers), the output shape and the
per-channel mean/std of the normalised outputs of both pipelines, and the speed ratio. With
``--rss_sizes`` both pipelines are also run over datasets of those sizes (hard links to the generated
PNGs for EndoViT; prepared shards repeated through hard links for ours) and their peak RSS is printed.
Everything runs in this one process, one pipeline after the other; a pipeline's memory is what its
DataLoader workers hold plus what the main process grew by while it ran (``PeakMemory``), so the
interpreter's own footprint, printed once, is not counted again for each run.
Not a test: the figures depend on the machine and its load.
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import torch
from torch.utils.data import DataLoader

from endovit.benchmark import endovit_loader
from endovit.cli import exit_script
from endovit.data import PrepareSettings, build_train_loader, load_frames, normalize, prepare_frames
from endovit.data.store import repeat_prepared
from endovit.data.synthetic import write_sample_frames
from endovit.recipes import ENDOVIT_MEAN, ENDOVIT_STD

RSS_BATCHES = 40


def _memory(proc: psutil.Process) -> tuple[int, int]:
    """(RSS, proportional anonymous memory) of one process in bytes; the second from smaps_rollup on Linux."""
    rss = proc.memory_info().rss
    try:
        with open(f"/proc/{proc.pid}/smaps_rollup") as rollup:
            fields = dict(line.split(":", 1) for line in rollup if line.startswith(("Pss_Anon:", "Pss_Shmem:")))
        return rss, sum(int(v.split()[0]) * 1024 for v in fields.values())
    except (OSError, ValueError):
        return rss, rss


class PeakMemory:
    """Samples this process and its children every 50 ms; peaks in MiB of what the pipeline added.

    ``rss`` sums RSS as ``top`` shows it (it counts pages shared between the forked workers once per
    process, and memory-mapped shard pages, which are reclaimable page cache). ``anon`` sums the
    proportional share of anonymous and shared-memory pages (PSS): the host memory the pipeline holds.
    Both count the workers in full and the main process by its growth since ``__enter__``.
    """

    def __init__(self):
        self.rss = self.anon = 0.0
        self.base = _memory(psutil.Process())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            rss, anon = (now - before for now, before in zip(_memory(me), self.base, strict=True))
            for proc in me.children(recursive=True):
                try:
                    proc_rss, proc_anon = _memory(proc)
                except psutil.Error:
                    continue
                rss += proc_rss
                anon += proc_anon
            self.rss = max(self.rss, rss / 2**20)
            self.anon = max(self.anon, anon / 2**20)
            self._stop.wait(0.05)

    def __enter__(self) -> PeakMemory:
        self.base = _memory(psutil.Process())
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def our_loader(prepared: Path, img_size: int, batch_size: int, workers: int) -> DataLoader:
    frames = load_frames(prepared)
    return build_train_loader(frames, img_size=[img_size, img_size], crop_scale=[0.6, 1.0],
                              batch_size=batch_size, seed=0, num_workers=workers,
                              fast_decode=True)


def normalised(images: torch.Tensor, ours: bool) -> torch.Tensor:
    """Our loader yields uint8 and normalises on the device; here (CPU) only for the batches compared."""
    return normalize(images, ENDOVIT_MEAN, ENDOVIT_STD) if ours else images


def measure(make_loader: Callable[[], DataLoader], ours: bool, seconds: float, max_batches: int | None = None
            ) -> dict:
    """Frames/s after the first batch (workers started), peak memory from building the loader on, output
    shape and channel stats."""
    frames, batches, start, shape = 0, 0, None, None
    channel_sum = torch.zeros(3, dtype=torch.float64)
    channel_sq = torch.zeros(3, dtype=torch.float64)
    pixels = 0
    with PeakMemory() as memory:
        loader = make_loader()
        epoch = 0
        while True:
            if ours:
                loader.sampler.set_epoch(epoch)
            for batch in loader:
                images = batch["pixels"] if ours else batch[0]
                if start is None:
                    start, shape = time.perf_counter(), tuple(images.shape)
                else:
                    frames += images.shape[0]
                if batches < 8:
                    flat = normalised(images, ours).transpose(0, 1).reshape(3, -1).double()
                    channel_sum += flat.sum(1)
                    channel_sq += (flat * flat).sum(1)
                    pixels += flat.shape[1]
                batches += 1
                if time.perf_counter() - start >= seconds or (max_batches and batches >= max_batches):
                    break
            else:
                epoch += 1
                continue
            break
        elapsed = time.perf_counter() - start
        del loader  # its workers end here, inside the measurement
    mean = channel_sum / pixels
    std = (channel_sq / pixels - mean**2).sqrt()
    return {"fps": frames / elapsed, "rss": memory.rss, "anon": memory.anon, "shape": shape, "mean": mean.tolist(),
            "std": std.tolist()}


def linked_frames(frames_dir: Path, size: int, out: Path) -> Path:
    """An ImageFolder tree of ``size`` hard links to the generated PNGs, in their video folders."""
    files = sorted(frames_dir.rglob("*.png"))
    for i in range(size):
        source = files[i % len(files)]
        target = out / source.parent.name / f"{i:07d}.png"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(source, target)
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=256, help="generated frames (4 videos)")
    parser.add_argument("--height", type=int, default=480, help="generated frame height (Cholec80: 480)")
    parser.add_argument("--width", type=int, default=854, help="generated frame width (Cholec80: 854)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers for both pipelines")
    parser.add_argument("--batch_size", type=int, default=32, help="images per batch")
    parser.add_argument("--img_size", type=int, default=224, help="training crop size, square")
    parser.add_argument("--seconds", type=float, default=10.0, help="measuring time per pipeline")
    parser.add_argument("--short_side", type=int, default=256, help="prepare: short side of the stored frames")
    parser.add_argument("--rss_sizes", default="", help="comma-separated dataset sizes for the RSS check")
    parser.add_argument("--work_dir", default=os.path.join(tempfile.gettempdir(), "endovit-benchmark-data"),
                        help="generated frames and prepared data (reused between runs)")
    return parser.parse_args(argv)


def make_data(args: argparse.Namespace) -> tuple[Path, Path]:
    """The generated PNG frames and their prepared dataset (both reused when already there)."""
    work = Path(args.work_dir)
    raw = work / f"raw_{args.frames}_{args.width}x{args.height}"
    if not (raw / "frames").is_dir():
        start = time.perf_counter()
        write_sample_frames(raw, videos=4, frames=args.frames // 4, height=args.height, width=args.width)
        print(f"generated {args.frames} frames in {time.perf_counter() - start:.1f}s")
    prepared = work / f"prepared_{args.frames}_{args.width}x{args.height}_s{args.short_side}"
    start = time.perf_counter()
    prepare_frames(raw / "frames", prepared, PrepareSettings(short_side=args.short_side), num_proc=os.cpu_count() or 1,
                   progress=False, log=lambda _: None)
    print(f"prepared (or reused) in {time.perf_counter() - start:.1f}s")
    return raw / "frames", prepared


def print_speed(results: dict[str, dict], workers: int) -> None:
    print(f"{'pipeline':<28} {'frames/s':>9} {'per worker':>11} {'peak MiB RSS (anon)':>20}  output shape        "
          "channel mean / std (normalised)")
    for name, r in results.items():
        stats = " ".join(f"{m:+.3f}/{s:.3f}" for m, s in zip(r["mean"], r["std"], strict=True))
        memory = f"{r['rss']:.0f} ({r['anon']:.0f})"
        print(f"{name:<28} {r['fps']:>9.1f} {r['fps'] / max(workers, 1):>11.1f} {memory:>20}  "
              f"{str(r['shape']):<19} {stats}")
    base, ours = results.values()
    print(f"speed ratio ours / EndoViT: {ours['fps'] / base['fps']:.1f}x")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    frames_dir, prepared = make_data(args)
    rss, anon = (value / 2**20 for value in _memory(psutil.Process()))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch "
          f"{torch.__version__}, {args.workers} workers, batch {args.batch_size}, {args.frames} frames "
          f"{args.width}x{args.height}; this interpreter before any pipeline: {rss:.0f} MiB RSS ({anon:.0f} anon)")

    def endovit(data: Path) -> Callable[[], DataLoader]:
        return lambda: endovit_loader(data, [args.img_size] * 2, args.batch_size, args.workers)

    def ours(data: Path) -> Callable[[], DataLoader]:
        return lambda: our_loader(data, args.img_size, args.batch_size, args.workers)

    print_speed({"EndoViT (ImageFolder PNG)": measure(endovit(frames_dir), False, args.seconds),
                 f"ours (prepared JPEG {args.short_side})": measure(ours(prepared), True, args.seconds)}, args.workers)
    work = Path(args.work_dir)
    for count in [int(s) for s in args.rss_sizes.split(",") if s.strip()]:
        linked = linked_frames(frames_dir, count, work / f"linked_{count}")
        scaled = repeat_prepared(prepared, count, work / f"scaled_{count}")
        base = measure(endovit(linked), False, float("inf"), RSS_BATCHES)
        mine = measure(ours(scaled), True, float("inf"), RSS_BATCHES)
        print(f"{count:>7} frames, {RSS_BATCHES} batches: peak MiB RSS (anon) EndoViT {base['rss']:.0f} "
              f"({base['anon']:.0f}), ours {mine['rss']:.0f} ({mine['anon']:.0f})")


if __name__ == "__main__":
    exit_script(main())
