"""Video files as a frame source: find them, plan them in chunks of time, decode one chunk's sampled frames.

Decoding uses PyAV (``pip install endovit[video]``), which bundles its own FFmpeg: no system FFmpeg and no tie
to the torch version (torchcodec has both), and its filter graph runs FFmpeg's own ``fps`` filter, which the
tests compare against.

Sampling at ``fps`` is by presentation time: tick ``n`` is at ``n / fps`` seconds after the stream's start,
and takes the frame on screen then (the latest frame whose presentation time is <= the tick). That is
exactly ``ffmpeg -vf fps=FPS:round=up``; plain ``-vf fps=FPS`` (``round=near``) takes the frame on screen
half a tick later (frame 12, 37, ... of a 25 fps video at 1 fps), which falls between Cholec80's tool
annotations (every 25th frame), so we keep frame 0, 25, 50, ... Ticks run while ``n / fps`` is before the
end of the last frame. ``fps == 0`` keeps every frame.

A row's ``time`` is its frame's presentation time in seconds from the stream's start; its ``frame_index``
is ``round(time * nominal frame rate)``: the frame's number in the video (exact for constant-rate video such
as Cholec80, where it is the row number of ``phase_annotations/videoNN-phase.txt``).
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

from PIL import Image

from endovit.errors import DataError

__all__ = ["VIDEO_EXTENSIONS", "VideoInfo", "NotAVideo", "probe_video", "chunk_ticks", "decode_chunk",
           "is_video_file"]

VIDEO_EXTENSIONS = {".mp4", ".m4v", ".mkv", ".webm", ".avi", ".mov", ".mpg", ".mpeg", ".ts", ".mts", ".m2ts",
                    ".wmv", ".flv", ".ogv", ".3gp"}


def is_video_file(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


class NotAVideo(DataError):
    """A file with a video name that FFmpeg cannot open as video (no video stream, not a container)."""


def _av():
    try:
        import av
    except ImportError:
        raise DataError("reading video needs PyAV: pip install 'endovit[video]' (or pip install av)") from None
    av.logging.set_level(av.logging.PANIC)  # damaged files are reported by us, once, not per packet by FFmpeg
    return av


@dataclass(frozen=True)
class VideoInfo:
    """What the plan needs of a video: its length (from the container; a truncated file may claim more) and
    nominal frame rate."""

    duration: float  # seconds
    rate: float  # nominal frames per second


def probe_video(path: str | Path) -> VideoInfo:
    """The video's length and rate from its header, or ``NotAVideo`` naming why it cannot be read."""
    av = _av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise NotAVideo(f"{path}: no video stream")
            stream = container.streams.video[0]
            rate = float(stream.average_rate or stream.guessed_rate or stream.base_rate or 25)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1e6
            else:  # no length in the header (some avi, mkv): demux the packets, no decoding
                last = max((p.pts for p in container.demux(stream) if p.pts is not None), default=None)
                start = stream.start_time or 0
                duration = 0.0 if last is None else float((last - start) * stream.time_base) + 1 / rate
    except NotAVideo:
        raise
    except (av.FFmpegError, OSError, ValueError) as err:
        raise NotAVideo(f"{path}: not a readable video ({getattr(err, 'strerror', None) or err})") from None
    return VideoInfo(duration=max(duration, 0.0), rate=rate)


def _ticks(seconds: float, fps: float, rate: float) -> int:
    """How many sampling ticks a stretch of ``seconds`` holds (every-frame sampling ticks at the nominal rate)."""
    return max(1, math.ceil(seconds * (fps or rate) - 1e-9))


def chunk_ticks(info: VideoInfo, fps: float, chunk: int) -> list[tuple[int, int]]:
    """The video's ticks ``[first, end)`` in chunks of ``chunk`` ticks: the units of work (and shards)."""
    total = _ticks(info.duration, fps, info.rate)
    return [(a, min(a + chunk, total)) for a in range(0, total, chunk)]


@dataclass
class DecodedFrame:
    image: Image.Image  # upright RGB at the decoded size
    time: float
    frame_index: int


def _upright(frame) -> Image.Image:
    """The frame as 8-bit RGB, turned as its display matrix says (as ffmpeg's autorotate does)."""
    image = frame.to_image()  # swscale to rgb24 from any pixel format (4:2:2, 4:4:4, 10-bit, grey, odd sizes)
    turn = round(-(frame.rotation or 0)) % 360  # PyAV gives the matrix's counter-clockwise angle
    transpose = {90: Image.Transpose.ROTATE_270, 180: Image.Transpose.ROTATE_180, 270: Image.Transpose.ROTATE_90}
    return image.transpose(transpose[turn]) if turn in transpose else image


def decode_chunk(path: str | Path, *, fps: float, first: int, end: int, rate: float,
                 errors: list[str]) -> Iterator[DecodedFrame]:
    """The sampled frames of ticks ``[first, end)`` (see the module docstring), in order.

    Seeks to the keyframe before the chunk (further back if the container's seek lands late), so a chunk
    decodes only its own stretch and gives the same frames as an unbroken pass. A decode error ends the
    chunk: its message goes to ``errors`` and the frames before it are kept."""
    av = _av()
    step = Fraction(1) / (Fraction(fps).limit_denominator(1_000_000) if fps else
                          Fraction(rate).limit_denominator(1_000_000))
    start_tick = first * step
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as err:
        errors.append(f"cannot open: {err}")
        return
    with container:
        stream = container.streams.video[0]
        stream.thread_type = "SLICE"  # one process per core already; slice threads never change the pixels
        base = stream.time_base
        origin = stream.start_time or 0
        back = 0
        while True:
            frames = _frames_from(container, stream, start_tick - back, origin, base, errors)
            first_frame = next(frames, None)
            if first_frame is None or first_frame[0] <= start_tick or start_tick - back <= 0:
                break
            back = max(2 * back, 1)  # the seek landed after the chunk's first tick: go further back
        if first_frame is None:
            errors.append(f"no decodable frame from {float(start_tick):.2f} s on (truncated?)")
            return
        yield from _sample(_chain(first_frame, frames), fps=fps, step=step, first=first, end=end, rate=rate,
                           errors=errors)


def _chain(head, rest):
    yield head
    yield from rest


def _frames_from(container, stream, seconds: Fraction, origin: int, base: Fraction, errors: list[str]):
    """(presentation time from the stream start, duration, frame) from the keyframe before ``seconds``."""
    import av
    try:
        if seconds > 0:
            container.seek(origin + math.floor(seconds / base), stream=stream, backward=True, any_frame=False)
        else:
            container.seek(origin, stream=stream, backward=True, any_frame=False) if origin else None
        for packet in container.demux(stream):
            for frame in packet.decode():
                if frame.pts is None:
                    continue
                duration = frame.duration * base if frame.duration else None
                yield (frame.pts - origin) * base, duration, frame
    except av.FFmpegError as err:
        errors.append(f"{type(err).__name__}: {err}")


def _sample(frames, *, fps: float, step: Fraction, first: int, end: int, rate: float,
            errors: list[str]) -> Iterator[DecodedFrame]:
    def row(time: Fraction, frame) -> DecodedFrame:
        return DecodedFrame(_upright(frame), float(time), round(float(time) * rate))

    def ended_early(stop: Fraction) -> None:  # the frames ran out clearly before the header's length
        if end * step - stop > Fraction(1, 2):
            errors.append(f"the video ends at {float(stop):.2f} s, before {float(end * step):.2f} s as its header "
                          "says (truncated?)")

    if not fps:  # every frame whose presentation time falls in this chunk's stretch
        last = first * step
        for time, duration, frame in frames:
            if time >= end * step:
                return
            if time >= first * step:
                yield row(time, frame)
            last = time + (duration or step)
        ended_early(last)
        return
    tick, previous = first, None
    for time, duration, frame in frames:
        while tick < end and tick * step < time:  # the previous frame is on screen at this tick
            if previous is not None:
                yield row(previous[0], previous[2])
            tick += 1
        if tick >= end:
            return
        previous = time, duration, frame
    if previous is not None:  # after the last frame: ticks until it ends (its duration, else one nominal frame)
        stop = previous[0] + (previous[1] or Fraction(1) / Fraction(rate).limit_denominator(1_000_000))
        while tick < end and tick * step < stop:
            yield row(previous[0], previous[2])
            tick += 1
        ended_early(stop)
