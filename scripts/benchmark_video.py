"""Prepare from video vs. "extract PNGs at 1 fps, then prepare the PNGs", end to end on the same videos and cores.

    python scripts/benchmark_video.py --videos 4 --seconds 60 --out /tmp/bench_video

Prints both wall times and their ratio, frames/s per core, where one process's time goes (demux + decode of
every frame, RGB conversion of the sampled ones, resize, JPEG encode), and the CPU's flags. Not a test.
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import time
from pathlib import Path

from endovit.cli import exit_script
from endovit.data import PrepareSettings, prepare_frames
from endovit.data.parallel import worker_pool
from endovit.data.prepare import encode_rgb
from endovit.data.synthetic_video import write_sample_videos


def _then_none(frames):
    yield from frames
    yield None  # flushes the filter graph


def _extract_pngs(job: tuple[str, str, float]) -> int:
    """What ``ffmpeg -i V -vf fps=FPS:round=up frames/V/V_%06d.png`` writes: FFmpeg's fps filter and PNG encoder,
    run through PyAV (the same libraries as the ffmpeg command line)."""
    import av

    video, out, fps = job
    folder = Path(out) / Path(video).stem
    folder.mkdir(parents=True, exist_ok=True)
    count, encoder = 0, None
    with av.open(video) as container:
        stream = container.streams.video[0]
        graph = av.filter.Graph()
        source, sampler, sink = graph.add_buffer(template=stream), graph.add("fps", f"fps={fps}:round=up"), \
            graph.add("buffersink")
        source.link_to(sampler)
        sampler.link_to(sink)
        graph.configure()
        for frame in _then_none(container.decode(stream)):
            graph.push(frame)
            while True:
                try:
                    picked = graph.pull()
                except (av.BlockingIOError, av.EOFError):
                    break
                rgb = picked.reformat(format="rgb24")
                if encoder is None:  # FFmpeg's own PNG encoder, as the ffmpeg command line writes PNGs
                    encoder = av.CodecContext.create("png", "w")
                    encoder.width, encoder.height, encoder.pix_fmt = rgb.width, rgb.height, "rgb24"
                data = b"".join(bytes(packet) for packet in encoder.encode(rgb))
                (folder / f"{folder.name}_{count:06d}.png").write_bytes(data)
                count += 1
    return count


def _profile(video: Path, settings: PrepareSettings) -> dict[str, float]:
    """One process, one video: seconds in demux + decode, RGB conversion, resize, encode."""
    import av

    spent = dict.fromkeys(("demux + decode (every frame)", "RGB conversion (sampled)", "resize + JPEG encode"), 0.0)
    step = 1 / settings.fps
    with av.open(str(video)) as container:
        stream = container.streams.video[0]
        next_tick, clock = 0.0, time.perf_counter()
        for frame in container.decode(stream):
            now = time.perf_counter()
            spent["demux + decode (every frame)"] += now - clock
            if frame.time + 1e-9 >= next_tick:
                image = frame.to_image()
                mid = time.perf_counter()
                spent["RGB conversion (sampled)"] += mid - now
                encode_rgb(image, settings)
                now = time.perf_counter()
                spent["resize + JPEG encode"] += now - mid
                next_tick += step
            clock = time.perf_counter()
    return spent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--seconds", type=int, default=60)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--num_proc", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--out", default="outputs/benchmark_video")
    args = parser.parse_args(argv)
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    flags = sorted(set(re.findall(r"\b(avx2|avx512f|avx512_bf16|amx_bf16|amx_tile)\b",
                                  Path("/proc/cpuinfo").read_text()))) if Path("/proc/cpuinfo").exists() else []
    print(f"CPU flags: {' '.join(flags) or 'none of avx2/avx512f/avx512_bf16/amx_bf16/amx_tile'}; "
          f"{args.num_proc} processes")
    start = time.perf_counter()
    videos = write_sample_videos(out / "cholec80", videos=args.videos, seconds=args.seconds, height=args.height,
                                 width=args.width)
    print(f"wrote {args.videos} x {args.seconds} s synthetic videos ({args.width}x{args.height}, 25 fps) in "
          f"{time.perf_counter() - start:.1f}s")
    settings = PrepareSettings(short_side=256, fps=1.0)

    start = time.perf_counter()
    result = prepare_frames(out / "cholec80", out / "from_video", settings, num_proc=args.num_proc, progress=False,
                            log=lambda _: None)
    direct = time.perf_counter() - start

    start = time.perf_counter()
    with worker_pool(min(args.num_proc, len(videos))) as pool:
        jobs = [(str(v), str(out / "frames"), settings.fps) for v in videos]
        pngs = sum(pool.map(_extract_pngs, jobs) if pool else map(_extract_pngs, jobs))
    extract = time.perf_counter() - start
    png_bytes = sum(p.stat().st_size for p in (out / "frames").rglob("*.png"))
    start = time.perf_counter()
    prepare_frames(out / "frames", out / "from_png", settings, num_proc=args.num_proc, progress=False,
                   log=lambda _: None)
    from_png = time.perf_counter() - start
    two_pass = extract + from_png

    frames = result.frames
    print(f"from video:     {direct:7.1f}s  {frames} frames, {frames / direct / args.num_proc:.1f} frames/s per core, "
          "no intermediate")
    print(f"PNGs then prep: {two_pass:7.1f}s  (extract {extract:.1f}s -> {pngs} PNGs, {png_bytes / 1e6:.0f} MB on "
          f"disk; prepare {from_png:.1f}s), {frames / two_pass / args.num_proc:.1f} frames/s per core")
    print(f"ratio: {two_pass / direct:.2f}x faster end to end from video")
    spent = _profile(videos[0], settings)
    total = sum(spent.values())
    print(f"where one process's time goes ({videos[0].name}):")
    for name, seconds in spent.items():
        print(f"  {name:32s} {seconds:6.2f}s  {100 * seconds / total:4.0f}%")
    return 0


if __name__ == "__main__":
    exit_script(main())
