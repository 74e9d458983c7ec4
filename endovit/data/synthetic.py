"""Synthetic endoscopy-like frames in the Cholec80 layout (``frames/videoNN/videoNN_NNNNNN.png``).

Each frame: reddish tissue texture with folds, a dark circular vignette, specular highlights and
one or two grey instrument shafts entering from the border. Frames of one video drift smoothly so
neighbouring frames look alike, as in real video. Deterministic for a given seed.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["synth_frame", "write_sample_frames"]


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
            (rng.uniform(-np.pi, np.pi), rng.uniform(0.04, 0.08) * width, rng.uniform(0.3, 0.7))
            for _ in range(int(rng.integers(1, 3)))
        ]
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.yy, self.xx = yy, xx
        radius = np.hypot((yy - height / 2) / (height / 2), (xx - width / 2) / (width * 0.42))
        self.vignette = np.clip(1.25 - radius, 0, 1)[..., None] ** 1.5

    def frame(self, t: int) -> np.ndarray:
        pad_h, pad_w = self.pad
        dy = int(np.clip(pad_h + self.drift[0] * t, 0, 2 * pad_h))
        dx = int(np.clip(pad_w + self.drift[1] * t, 0, 2 * pad_w))
        img = self.tissue[dy:dy + self.height, dx:dx + self.width].copy()
        for gy, gx in self.glints:
            dist2 = (self.yy - (gy - dy)) ** 2 + (self.xx - (gx - dx)) ** 2
            img += np.exp(-dist2 / 150.0)[..., None] * 0.9
        for angle, thickness, reach in self.tools:
            wobble = angle + 0.05 * np.sin(t / 5.0)
            ox = self.width / 2 + np.cos(wobble) * self.width * 0.6
            oy = self.height / 2 + np.sin(wobble) * self.height * 0.6
            direction = np.array([np.cos(wobble + np.pi), np.sin(wobble + np.pi)])
            rel_x, rel_y = self.xx - ox, self.yy - oy
            along = rel_x * direction[0] + rel_y * direction[1]
            across = np.abs(-rel_x * direction[1] + rel_y * direction[0])
            shaft = (across < thickness) & (along > 0) & (along < reach * self.width)
            shade = 0.45 + 0.25 * (1 - across / thickness)
            img = np.where(shaft[..., None], shade[..., None] * np.array([0.85, 0.87, 0.9]), img)
        return (np.clip(img * self.vignette, 0, 1) * 255).astype(np.uint8)


def synth_frame(seed: int, height: int = 480, width: int = 854, t: int = 0) -> np.ndarray:
    """One synthetic frame (H, W, 3) uint8."""
    return _VideoScene(np.random.default_rng(seed), height, width).frame(t)


def write_sample_frames(out_dir: str | os.PathLike, videos: int = 4, frames: int = 50, height: int = 480,
                        width: int = 854, seed: int = 0, first_video: int = 1) -> list[Path]:
    """Write ``videos`` x ``frames`` PNGs under ``out_dir/frames/videoNN/`` (files renamed into place)."""
    root = Path(out_dir) / "frames"
    written = []
    for video in range(first_video, first_video + videos):
        scene = _VideoScene(np.random.default_rng([seed, video]), height, width)
        folder = root / f"video{video:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for t in range(frames):
            path = folder / f"video{video:02d}_{t:06d}.png"
            tmp = folder / f".{path.name}.tmp"
            Image.fromarray(scene.frame(t)).save(tmp, format="PNG", compress_level=1)
            os.replace(tmp, path)
            written.append(path)
    return written
