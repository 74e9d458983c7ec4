"""Tiny test videos written with PyAV: any codec / pixel format / container, chosen timestamps, rotation, audio,
and FFmpeg's own ``fps`` filter as the reference a prepared video must equal."""
from __future__ import annotations

import struct
from fractions import Fraction
from pathlib import Path

import numpy as np


def noise_frames(count: int, height: int = 48, width: int = 64, seed: int = 0) -> list[np.ndarray]:
    """Distinct frames: coarse random blocks (they survive lossy coding), a different pattern per frame."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        blocks = rng.integers(0, 256, (max(1, height // 8), max(1, width // 8), 3), dtype=np.uint8)
        out.append(np.kron(blocks, np.ones((8, 8, 1), dtype=np.uint8))[:height, :width].copy())
    return out


def write_video(path: Path, frames: list[np.ndarray], *, rate: int = 25, codec: str = "libx264",
                pix_fmt: str = "yuv420p", times_ms: list[int] | None = None, audio: bool = False,
                options: dict | None = None, container_options: dict | None = None) -> Path:
    """``frames`` (RGB uint8) as a video; ``times_ms`` gives each frame's presentation time (variable rate)."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    height, width, _ = frames[0].shape
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, pix_fmt
        stream.options = options if options is not None else ({"crf": "0", "g": "10"} if codec == "libx264" else {})
        if times_ms is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        sound = container.add_stream("aac", rate=8000) if audio else None
        for i, pixels in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(pixels, format="rgb24")
            if times_ms is not None:
                frame.pts, frame.time_base = times_ms[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
        if sound is not None:
            samples = np.zeros((1, 8000 * len(frames) // rate), dtype=np.float32)
            chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            chunk.sample_rate = 8000
            for packet in sound.encode(chunk):
                container.mux(packet)
            for packet in sound.encode():
                container.mux(packet)
    return path


def set_mp4_rotation(path: Path, clockwise: int) -> None:
    """Rewrite an mp4's track matrix (``tkhd``) so players show it turned ``clockwise`` degrees, as phones do."""
    a, b = {90: (0, 1), 180: (-1, 0), 270: (0, -1)}[clockwise]
    data = bytearray(path.read_bytes())
    at = data.index(b"tkhd") + 4 + 40  # version 0 tkhd: flags, 2 times, track id, reserved, duration, 8+8 bytes
    fixed = lambda v: v * 65536 & 0xFFFFFFFF  # noqa: E731  16.16 fixed point
    data[at:at + 36] = struct.pack(">9I", fixed(a), fixed(b), 0, fixed(-b), fixed(a), 0, 0, 0, 0x40000000)
    path.write_bytes(bytes(data))


def ffmpeg_fps_frames(path: Path, fps: float, extra: str = "") -> list[np.ndarray]:
    """What ``ffmpeg -vf fps=FPS:round=up[,extra]`` gives, as RGB arrays: FFmpeg's own filter, run through PyAV."""
    import av

    out = []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        graph = av.filter.Graph()
        chain = [graph.add_buffer(template=stream)]
        if fps:
            chain.append(graph.add("fps", f"fps={fps}:round=up"))
        for spec in filter(None, extra.split(",")):
            name, _, args = spec.partition("=")
            chain.append(graph.add(name, args or None))
        chain.append(graph.add("buffersink"))
        for a, b in zip(chain, chain[1:], strict=False):
            a.link_to(b)
        graph.configure()

        def drain():
            while True:
                try:
                    out.append(graph.pull().to_ndarray(format="rgb24"))
                except (av.BlockingIOError, av.EOFError):
                    return

        for frame in container.decode(stream):
            graph.push(frame)
            drain()
        graph.push(None)
        drain()
    return out
