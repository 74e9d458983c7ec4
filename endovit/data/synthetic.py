"""Synthetic endoscopy-like frames in the Cholec80 layout (``frames/videoNN/videoNN_NNNNNN.png``).

Each frame: reddish tissue texture with folds, a dark circular vignette, specular highlights and
one or two grey instrument shafts entering from the border. Frames of one video drift smoothly so
neighbouring frames look alike, as in real video. Deterministic for a given seed.

With ``labelled=True`` the frames carry what Cholec80's annotations describe, and the annotations are written
in Cholec80's format: each video runs through the seven surgical phases in order (segments of random length),
the phase shows in the scene (an organ whose colour and size change per phase) and decides which instruments
are in use; each of the seven instrument kinds has its own colour and thickness and is drawn only while present.
Labelled frames also carry sensor noise (Gaussian, ``SENSOR_NOISE``): content a model must learn to see past. Its
grains are a fixed fraction of the frame (``NOISE_GRAINS_ACROSS``), like every other size here, so a model sees the
same noise whatever size the frames were rendered at: per-pixel noise on a 426-px frame would mostly average away
in the resize to a 96-px model input.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from endovit.data.cholec80 import PHASES, TOOLS
from endovit.io import atomic_write_text

__all__ = ["DEMO_SIZE", "synth_frame", "write_sample_frames"]

SHAFT_TINT = np.array([0.85, 0.87, 0.9])
SENSOR_NOISE = 0.25  # std of the noise of labelled frames, in [0, 1] units
NOISE_GRAINS_ACROSS = 128  # noise grains across a labelled frame's width (one per pixel in narrower frames)
DEMO_SIZE = (240, 426)  # the demo's frames (height, width)
# instrument kind (TOOLS order) -> (tint, thickness as a fraction of the width)
TOOL_LOOKS = [((0.85, 0.87, 0.9), 0.05), ((0.35, 0.45, 0.95), 0.04), ((0.55, 0.55, 0.55), 0.06),
              ((0.95, 0.8, 0.35), 0.05), ((0.9, 0.9, 0.9), 0.09), ((0.98, 0.98, 0.98), 0.03),
              ((0.95, 0.95, 0.75), 0.12)]
# phase (PHASES order) -> instruments in use, organ colour and organ radius (fraction of the height)
PHASE_LOOKS = [(("Grasper", "Hook"), (0.85, 0.8, 0.35), 0.35),
               (("Grasper", "Hook"), (0.55, 0.75, 0.3), 0.32),
               (("Grasper", "Clipper", "Scissors"), (0.45, 0.6, 0.3), 0.28),
               (("Grasper", "Hook"), (0.3, 0.55, 0.35), 0.22),
               (("Grasper", "SpecimenBag"), (0.9, 0.9, 0.85), 0.18),
               (("Irrigator", "Bipolar", "Grasper"), (0.35, 0.05, 0.05), 0.3),
               (("Grasper", "SpecimenBag"), (0.95, 0.95, 0.9), 0.1)]


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
    """Low-frequency noise in [0, 1]: a coarse random grid upsampled bicubically."""
    grid = rng.random((cells, max(2, cells * width // height))).astype(np.float32)
    img = Image.fromarray((grid * 255).astype(np.uint8)).resize((width, height), Image.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


class _VideoScene:
    """The fixed content of one synthetic video; ``frame(t)`` renders time step t."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.height, self.width = height, width
        pad_h, pad_w = height // 4, width // 4
        self.pad = (pad_h, pad_w)
        big_h, big_w = height + 2 * pad_h, width + 2 * pad_w
        folds = 0.6 * _smooth_noise(rng, big_h, big_w, 4) + 0.4 * _smooth_noise(rng, big_h, big_w, 12)
        fine = _smooth_noise(rng, big_h, big_w, 48)
        base = np.array([0.72, 0.22, 0.18]) + rng.uniform(-0.05, 0.05, 3)
        tissue = base[None, None, :] * (0.55 + 0.6 * folds[..., None]) + 0.08 * (fine[..., None] - 0.5)
        vessels = (np.abs(_smooth_noise(rng, big_h, big_w, 20) - 0.5) < 0.015)[..., None]
        self.tissue = np.clip(np.where(vessels, tissue * np.array([0.7, 0.35, 0.35]), tissue), 0, 1)
        self.glints = rng.uniform([0, 0], [big_h, big_w], size=(int(rng.integers(3, 7)), 2))
        self.drift = rng.normal(0, 1.5, size=2)
        self.tools = [
            (rng.uniform(-np.pi, np.pi), rng.uniform(0.04, 0.08) * width, rng.uniform(0.3, 0.7), SHAFT_TINT)
            for _ in range(int(rng.integers(1, 3)))
        ]
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.yy, self.xx = yy, xx
        radius = np.hypot((yy - height / 2) / (height / 2), (xx - width / 2) / (width * 0.42))
        self.vignette = np.clip(1.25 - radius, 0, 1)[..., None] ** 1.5

    def frame(self, t: int, tools: list | None = None, organ: tuple | None = None) -> np.ndarray:
        """Time step ``t``; ``tools`` (angle, thickness, reach, tint) replace the scene's own, ``organ``
        ((y, x) centre, radius, colour) is drawn under them."""
        pad_h, pad_w = self.pad
        dy = int(np.clip(pad_h + self.drift[0] * t, 0, 2 * pad_h))
        dx = int(np.clip(pad_w + self.drift[1] * t, 0, 2 * pad_w))
        img = self.tissue[dy:dy + self.height, dx:dx + self.width].copy()
        for gy, gx in self.glints:
            dist2 = (self.yy - (gy - dy)) ** 2 + (self.xx - (gx - dx)) ** 2
            img += np.exp(-dist2 / 150.0)[..., None] * 0.9
        if organ is not None:
            (cy, cx), radius, colour = organ
            blob = ((self.yy - cy) / radius) ** 2 + ((self.xx - cx) / (1.3 * radius)) ** 2 < 1
            img = np.where(blob[..., None], np.asarray(colour) * (0.8 + 0.2 * img), img)
        for angle, thickness, reach, tint in self.tools if tools is None else tools:
            wobble = angle + 0.05 * np.sin(t / 5.0)
            ox = self.width / 2 + np.cos(wobble) * self.width * 0.6
            oy = self.height / 2 + np.sin(wobble) * self.height * 0.6
            direction = np.array([np.cos(wobble + np.pi), np.sin(wobble + np.pi)])
            rel_x, rel_y = self.xx - ox, self.yy - oy
            along = rel_x * direction[0] + rel_y * direction[1]
            across = np.abs(-rel_x * direction[1] + rel_y * direction[0])
            shaft = (across < thickness) & (along > 0) & (along < reach * self.width)
            shade = 0.45 + 0.25 * (1 - across / thickness)
            img = np.where(shaft[..., None], shade[..., None] * tint, img)
        return (np.clip(img * self.vignette, 0, 1) * 255).astype(np.uint8)


class _Surgery:
    """The phases and instruments of one labelled video over ``frames`` time steps, and how they look."""

    def __init__(self, rng: np.random.Generator, frames: int, height: int, width: int):
        lengths = rng.uniform(0.5, 1.5, len(PHASES))
        ends = np.cumsum(lengths) / lengths.sum() * frames
        self.phases = np.searchsorted(ends, np.arange(frames), side="right").clip(max=len(PHASES) - 1)
        self.tools = np.zeros((frames, len(TOOLS)), dtype=np.int64)
        for t, phase in enumerate(self.phases):
            for name in PHASE_LOOKS[phase][0]:
                self.tools[t, TOOLS.index(name)] = rng.random() < 0.75
        self.angles = rng.uniform(-np.pi, np.pi, len(TOOLS))
        self.reaches = rng.uniform(0.35, 0.6, len(TOOLS))
        self.centre = rng.uniform([0.3 * height, 0.3 * width], [0.7 * height, 0.7 * width])
        self.height, self.width = height, width

    def noisy(self, pixels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """``pixels`` (uint8) plus Gaussian sensor noise, constant over each grain."""
        height, width, _ = pixels.shape
        across = min(width, NOISE_GRAINS_ACROSS)
        down = max(1, round(height * across / width))
        grains = rng.normal(0.0, SENSOR_NOISE * 255, (down, across, 3))
        noise = grains[np.arange(height) * down // height][:, np.arange(width) * across // width]
        return np.clip(pixels + noise, 0, 255).astype(np.uint8)

    def overlay(self, t: int) -> tuple[list, tuple]:
        """``frame``'s tools and organ at time step ``t``."""
        tools = [(self.angles[k], TOOL_LOOKS[k][1] * self.width, self.reaches[k], np.array(TOOL_LOOKS[k][0]))
                 for k in np.flatnonzero(self.tools[t])]
        _, colour, radius = PHASE_LOOKS[self.phases[t]]
        return tools, (self.centre, radius * self.height, colour)

    def write_annotations(self, out_dir: Path, video: str, fps: int = 25) -> None:
        """Cholec80's ``phase_annotations/<video>-phase.txt`` (every frame at ``fps``) and
        ``tool_annotations/<video>-tool.txt`` (every ``fps``-th frame); time step t is second t."""
        phase_rows = [f"{t * fps + i}\t{PHASES[p]}" for t, p in enumerate(self.phases) for i in range(fps)]
        tool_rows = [f"{t * fps}\t" + "\t".join(map(str, row)) for t, row in enumerate(self.tools)]
        atomic_write_text(out_dir / "phase_annotations" / f"{video}-phase.txt",
                          "\n".join(["Frame\tPhase", *phase_rows]) + "\n")
        atomic_write_text(out_dir / "tool_annotations" / f"{video}-tool.txt",
                          "\n".join(["Frame\t" + "\t".join(TOOLS), *tool_rows]) + "\n")


def synth_frame(seed: int, height: int = 480, width: int = 854, t: int = 0) -> np.ndarray:
    """One synthetic frame (H, W, 3) uint8."""
    return _VideoScene(np.random.default_rng(seed), height, width).frame(t)


def write_sample_frames(out_dir: str | os.PathLike, *, videos: int = 4, frames: int = 50, height: int = 480,
                        width: int = 854, seed: int = 0, first_video: int = 1, labelled: bool = False) -> list[Path]:
    """Write ``videos`` x ``frames`` PNGs under ``out_dir/frames/videoNN/`` (files renamed into place).

    ``labelled`` draws phases and instruments into the frames and writes their annotations to
    ``out_dir/phase_annotations/`` and ``out_dir/tool_annotations/`` (module docstring).
    """
    root = Path(out_dir) / "frames"
    written = []
    for video in range(first_video, first_video + videos):
        scene = _VideoScene(np.random.default_rng([seed, video]), height, width)
        surgery = _Surgery(np.random.default_rng([seed, video, 1]), frames, height, width) if labelled else None
        folder = root / f"video{video:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for t in range(frames):
            path = folder / f"video{video:02d}_{t:06d}.png"
            tmp = folder / f".{path.name}.tmp"
            if surgery:
                pixels = surgery.noisy(scene.frame(t, *surgery.overlay(t)), np.random.default_rng([seed, video, 2, t]))
            else:
                pixels = scene.frame(t)
            Image.fromarray(pixels).save(tmp, format="PNG", compress_level=1)
            os.replace(tmp, path)
            written.append(path)
        if surgery:
            surgery.write_annotations(Path(out_dir), f"video{video:02d}")
    return written
