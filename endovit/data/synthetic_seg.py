"""Synthetic CholecSeg8k: endoscopy-like frames with their masks in CholecSeg8k's layout and colour coding.

``videoNN/videoNN_SSSSS/frame_K_endo.png`` with ``frame_K_endo_watershed_mask.png`` (each class's watershed value
in all three channels), ``frame_K_endo_color_mask.png`` (the classes' colours) and ``frame_K_endo_mask.png`` (the
annotation mask; here the watershed values again), one clip per video, for CholecSeg8k's 17 video numbers. Each
frame: the tissue, glints and vignette of ``synthetic._VideoScene`` as abdominal wall, organs as irregular blobs of
their own colour and texture (liver, gallbladder, fat, gastrointestinal tract, connective tissue, cystic duct),
one or two instruments (grasper, L-hook) entering from the border, black background outside the scope's circle;
as in the real masks, white 1-pixel edges between regions and a few pixels nobody labelled (black in the watershed
mask, white in the colour mask). Objects drift over a clip. Deterministic for a given seed.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from endovit.data.cholecseg8k import CLASSES_13, COLOURS_13, VIDEOS, WATERSHED
from endovit.data.synthetic import DEMO_SIZE, TOOL_LOOKS, _smooth_noise, _VideoScene

__all__ = ["SEG_DEMO", "write_seg_frames", "write_demo_seg_frames"]

# the demo's: 17 videos (2 held out, EndoViT's) x 6 frames, at half the demo's frame size (its model sees 96x96)
SEG_DEMO = {"videos": VIDEOS, "frames": 6, "size": (DEMO_SIZE[0] // 2, DEMO_SIZE[1] // 2)}
_ID = {name: i for i, name in enumerate(CLASSES_13)}
# organ -> (colour, radius as a fraction of the height), drawn in this order (later ones on top)
ORGANS = [("Liver", (0.45, 0.12, 0.10), 0.45), ("Gastrointestinal Tract", (0.80, 0.45, 0.50), 0.30),
          ("Fat", (0.85, 0.80, 0.35), 0.28), ("Gallbladder", (0.55, 0.75, 0.30), 0.22),
          ("Connective Tissue", (0.90, 0.85, 0.80), 0.12), ("Cystic Duct", (0.95, 0.90, 0.55), 0.07)]
INSTRUMENTS = [("Grasper", TOOL_LOOKS[0][0], 0.05), ("L-hook Electrocautery", TOOL_LOOKS[2][0], 0.035)]
BACKGROUND_BELOW = 0.08  # vignette brightness under which a pixel is the black background outside the scope


class _SegScene:
    """The organs and instruments of one video; ``frame(t)`` renders time step t and its 13-class ids."""

    def __init__(self, rng: np.random.Generator, height: int, width: int):
        self.scene = _VideoScene(rng, height, width)
        self.height, self.width = height, width
        self.organs = []
        for name, colour, radius in ORGANS:
            if rng.random() < 0.8:
                centre = rng.uniform([0.15 * height, 0.15 * width], [0.85 * height, 0.85 * width])
                self.organs.append((_ID[name], np.array(colour) + rng.uniform(-0.04, 0.04, 3), radius * height,
                                    centre, rng.normal(0, 1.0, 2), _smooth_noise(rng, height, width, 6),
                                    _smooth_noise(rng, height, width, 24)))
        kinds = rng.permutation(len(INSTRUMENTS))[:int(rng.integers(1, len(INSTRUMENTS) + 1))]
        self.tools = [(INSTRUMENTS[k], rng.uniform(-np.pi, np.pi), rng.uniform(0.35, 0.6)) for k in kinds]

    def frame(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) uint8 pixels and (H, W) class ids of time step ``t``."""
        scene = self.scene
        yy, xx, vignette = scene.yy, scene.xx, scene.vignette
        img = scene.frame(t, tools=[]).astype(np.float32) / 255.0
        ids = np.full((self.height, self.width), _ID["Abdominal Wall"], dtype=np.uint8)
        for cls, colour, radius, centre, drift, shape, texture in self.organs:
            cy, cx = centre + drift * t
            blob = ((yy - cy) / radius) ** 2 + ((xx - cx) / (1.3 * radius)) ** 2 + 0.8 * (shape - 0.5) < 1
            ids[blob] = cls
            img = np.where(blob[..., None], colour * (0.75 + 0.4 * texture[..., None]) * vignette, img)
        for (name, tint, thickness), angle, reach in self.tools:
            wobble = angle + 0.05 * np.sin(t / 5.0)
            ox = self.width / 2 + np.cos(wobble) * self.width * 0.6
            oy = self.height / 2 + np.sin(wobble) * self.height * 0.6
            rel_x, rel_y = xx - ox, yy - oy
            along = -(rel_x * np.cos(wobble) + rel_y * np.sin(wobble))
            across = np.abs(rel_x * np.sin(wobble) - rel_y * np.cos(wobble))
            width = thickness * self.width
            shaft = (across < width) & (along > 0) & (along < reach * self.width)
            ids[shaft] = _ID[name]
            shade = 0.45 + 0.25 * (1 - across / width)
            img = np.where(shaft[..., None], shade[..., None] * np.asarray(tint) * vignette, img)
        ids[vignette[..., 0] < BACKGROUND_BELOW] = _ID["Black Background"]
        return (np.clip(img, 0, 1) * 255).astype(np.uint8), ids


def _masks(ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Watershed (H, W, 3) and colour (H, W, 3) masks of class ids, with CholecSeg8k's white 1-px edges between
    regions and one small patch of unlabelled pixels (black in the watershed mask, white in the colour mask)."""
    watershed = np.asarray(WATERSHED, dtype=np.uint8)[ids]
    colour = np.asarray(COLOURS_13, dtype=np.uint8)[ids]
    edge = np.zeros(ids.shape, dtype=bool)
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[1:, :] |= ids[1:, :] != ids[:-1, :]
    h, w = ids.shape
    y, x = int(rng.integers(0, h - 4)), int(rng.integers(0, w - 6))
    unlabelled = np.zeros(ids.shape, dtype=bool)
    unlabelled[y:y + 4, x:x + 6] = True
    watershed = np.where(edge, 255, np.where(unlabelled, 0, watershed))
    colour = np.where((edge | unlabelled)[..., None], 255, colour)
    return np.repeat(watershed[..., None], 3, axis=2).astype(np.uint8), colour.astype(np.uint8)


def _save(pixels: np.ndarray, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    Image.fromarray(pixels).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp, path)


def write_seg_frames(out_dir: str | os.PathLike, *, videos=VIDEOS, frames: int = 6, height: int = 480,
                     width: int = 854, seed: int = 0) -> list[Path]:
    """Write ``frames`` frames of each of ``videos`` (numbers) with their three masks under ``out_dir`` in
    CholecSeg8k's layout (module docstring); returns the frame paths."""
    written = []
    for video in videos:
        scene = _SegScene(np.random.default_rng([seed, video, 7]), height, width)
        start = 80 * int(np.random.default_rng([seed, video, 8]).integers(0, 20))
        clip = Path(out_dir) / f"video{video:02d}" / f"video{video:02d}_{start:05d}"
        clip.mkdir(parents=True, exist_ok=True)
        for t in range(frames):
            pixels, ids = scene.frame(3 * t)
            watershed, colour = _masks(ids, np.random.default_rng([seed, video, 9, t]))
            stem = f"frame_{start + t}_endo"
            _save(watershed, clip / f"{stem}_watershed_mask.png")
            _save(colour, clip / f"{stem}_color_mask.png")
            _save(watershed, clip / f"{stem}_mask.png")
            _save(pixels, clip / f"{stem}.png")  # last: a frame never lacks its masks
            written.append(clip / f"{stem}.png")
    return written


def write_demo_seg_frames(out_dir: str | os.PathLike, seed: int = 0) -> list[Path]:
    """The demo's segmentation frames (``SEG_DEMO``) under ``out_dir``."""
    height, width = SEG_DEMO["size"]
    return write_seg_frames(out_dir, videos=SEG_DEMO["videos"], frames=SEG_DEMO["frames"], height=height, width=width,
                            seed=seed)
