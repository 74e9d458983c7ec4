"""Synthetic surgery *videos* in Cholec80's release layout: ``videos/videoNN.mp4`` (H.264, 25 fps) with
``phase_annotations/videoNN-phase.txt`` (every frame) and ``tool_annotations/videoNN-tool.txt`` (every 25th).

The scenes, phases and instruments are ``synthetic.py``'s labelled frames: its time step ``t`` is second ``t``
of the video, held for the second's 25 frames, so annotation frame ``25 t + i`` describes what frame
``25 t + i`` shows, exactly as ``synthetic.write_annotations`` numbers them. Deterministic for a given seed.
"""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

# the labelled scene model itself (one definition), not its PNG writer
from endovit.data.parallel import worker_pool
from endovit.data.synthetic import DEMO_SIZE, _Surgery, _VideoScene
from endovit.errors import DataError

__all__ = ["FPS", "DEMO_VIDEOS", "write_sample_videos", "write_demo_videos"]

FPS = 25  # Cholec80's frame rate
# the demo's labelled videos: folder -> (videos, seconds per video, first video); at 1 fps a second is a frame. The
# probe's 64 held-out videos follow Cholec80's split (9-40 fit the probe, 41-72 score it): 256 scored frames keep the
# mAP of one encoder steady enough to compare encoders (on 128, two probe sets put the same encoder 18 points apart).
DEMO_VIDEOS = {"train": (4, 60, 1), "val": (1, 24, 5), "probe": (64, 8, 9)}


def write_sample_videos(out_dir: str | os.PathLike, *, videos: int = 4, seconds: int = 8, height: int = 240,
                        width: int = 426, seed: int = 0, first_video: int = 1, crf: int = 18,
                        num_proc: int = 1) -> list[Path]:
    """Write ``videos`` labelled videos of ``seconds`` s under ``out_dir/videos/`` (each renamed into place) and
    their annotations beside them, ``num_proc`` videos at a time; returns the video paths."""
    try:
        import av  # noqa: F401
    except ImportError:
        raise DataError("writing sample videos needs PyAV: pip install 'endovit[video]'") from None
    (Path(out_dir) / "videos").mkdir(parents=True, exist_ok=True)
    jobs = [(str(out_dir), video, seconds, height // 2 * 2, width // 2 * 2, seed, crf)  # 4:2:0 needs even sizes
            for video in range(first_video, first_video + videos)]
    with worker_pool(min(num_proc, len(jobs))) as pool:
        return list(pool.map(_write_video, jobs) if pool else map(_write_video, jobs))


def _write_video(job: tuple) -> Path:
    import av

    out_dir, video, seconds, height, width, seed, crf = job
    root, name = Path(out_dir), f"video{video:02d}"
    scene = _VideoScene(np.random.default_rng([seed, video]), height, width)
    surgery = _Surgery(np.random.default_rng([seed, video, 1]), seconds, height, width)
    path = root / "videos" / f"{name}.mp4"
    tmp = path.with_name(f".{path.name}.tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf), "preset": "ultrafast", "g": str(2 * FPS)}
        for t in range(seconds):
            pixels = surgery.noisy(scene.frame(t, *surgery.overlay(t)), np.random.default_rng([seed, video, 2, t]))
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format="yuv420p")  # once a second
            for i in range(FPS):
                frame.pts, frame.time_base = t * FPS + i, Fraction(1, FPS)
                for packet in stream.encode(frame):
                    container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)
    surgery.write_annotations(root, name, FPS)
    return path


def write_demo_videos(out_dir: str | os.PathLike, *, seed: int = 0, num_proc: int = 1) -> dict[str, list[Path]]:
    """The demo's labelled videos: ``DEMO_VIDEOS``' videos x seconds at ``DEMO_SIZE`` under ``out_dir/train``,
    ``val`` and ``probe`` (each ``videos/videoNN.mp4`` + Cholec80 annotations)."""
    height, width = DEMO_SIZE
    return {name: write_sample_videos(Path(out_dir) / name, videos=videos, seconds=seconds, height=height,
                                      width=width, seed=seed, first_video=first, num_proc=num_proc)
            for name, (videos, seconds, first) in DEMO_VIDEOS.items()}
