"""Validation loss with fixed masks, and reconstruction pictures (what ``scripts/evaluate.py`` does is probing:
``endovit.probes``)."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from endovit.data.transforms import EvalTransform, denormalize, normalize, sample_seed

__all__ = ["fixed_noise", "validate", "picture_batch", "reconstruction_grid", "PICTURE_COLUMNS", "PICTURE_HEADER"]

PICTURE_COLUMNS = ("original", "masked", "reconstruction", "reconstruction + visible")  # MAE's demo's four
PICTURE_MIN_SIDE = 192  # smaller frames (the demo's 96 px) are enlarged by a whole factor, so patches stay sharp
PICTURE_HEADER = 22  # pixels of the band with the column names


def fixed_noise(indices, num_patches: int, seed: int, device) -> torch.Tensor:
    """Masking noise that depends only on (seed, sample index): the same mask for an image at every validation."""
    rows = [
        torch.rand(num_patches, generator=torch.Generator().manual_seed(sample_seed(seed, 7919, int(i))))
        for i in indices
    ]
    return torch.stack(rows).to(device)


@torch.no_grad()
def validate(model, *, mae, loader, accelerator, mean, std, mask_ratio: float, seed: int) -> float:
    """Mean per-image masked-patch loss over the whole validation set, across all processes.

    ``model`` is what runs the forward (possibly wrapped); ``mae`` the plain module with
    ``forward_loss``. Duplicated samples that pad the last batch are dropped (``gather_for_metrics``).
    """
    was_training = model.training
    model.eval()
    total = torch.zeros((), device=accelerator.device, dtype=torch.float64)
    count = 0
    for batch in loader:
        images = normalize(batch["pixels"], mean, std)
        noise = fixed_noise(batch["index"].tolist(), mae.num_patches, seed, accelerator.device)
        with accelerator.autocast():
            _, pred, mask = model(images, mask_ratio, noise)
        per_image = accelerator.gather_for_metrics(mae.forward_loss(images, pred, mask, reduction="none"))
        total += per_image.double().sum()
        count += per_image.numel()
    model.train(was_training)
    return (total / max(count, 1)).item()


def picture_batch(frames, *, count: int, img_size, mean, std, seed: int, num_patches: int, device):
    """``count`` frames spread over ``frames``, normalised on ``device``, with their fixed masking noise
    (the validation rule); None when ``count`` is 0."""
    from endovit.data.frames import decode_image  # needs datasets, which the step alone does not

    count = min(count, len(frames))
    if count == 0:
        return None
    ids = [i * len(frames) // count for i in range(count)]
    resize = EvalTransform(tuple(img_size))
    pixels = torch.stack([resize(decode_image(frames[i]["image"])) for i in ids])
    return normalize(pixels.to(device), mean, std), fixed_noise(ids, num_patches, seed, device)


@torch.no_grad()
def reconstruction_grid(mae, images: torch.Tensor, noise: torch.Tensor, *, mean, std, mask_ratio: float) -> np.ndarray:
    """One row per image: original | masked | reconstruction | reconstruction + visible, under a header naming
    the columns; frames smaller than ``PICTURE_MIN_SIDE`` enlarged by a whole factor (nearest). HWC uint8."""
    was_training = mae.training
    mae.eval()
    _, pred, mask = mae(images, mask_ratio, noise)
    mae.train(was_training)
    pred = pred.float()
    if mae.norm_pix_loss:
        target = mae.patchify(images)
        pred = pred * (target.var(dim=-1, keepdim=True) + 1.0e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
    recon = mae.unpatchify(pred)
    mask_img = mae.unpatchify(mask.unsqueeze(-1).expand(-1, -1, mae.patch_size**2 * mae.in_chans))
    original = denormalize(images, mean, std)
    masked = original * (1 - mask_img) + 0.15 * mask_img
    reconstruction = denormalize(recon, mean, std)
    pasted = original * (1 - mask_img) + reconstruction * mask_img
    rows = [torch.cat(list(cols), dim=-1) for cols in zip(original, masked, reconstruction, pasted, strict=True)]
    grid = (torch.cat(rows, dim=-2).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    height, width = images.shape[-2:]
    scale = -(-PICTURE_MIN_SIDE // min(height, width))
    return _with_header(grid.repeat(scale, axis=0).repeat(scale, axis=1), PICTURE_COLUMNS)


def _with_header(grid: np.ndarray, columns: tuple[str, ...]) -> np.ndarray:
    """``grid`` under a white band with each column's name centred over it."""
    font = ImageFont.load_default(size=14)
    header = Image.new("RGB", (grid.shape[1], PICTURE_HEADER), (255, 255, 255))
    draw = ImageDraw.Draw(header)
    column = grid.shape[1] / len(columns)
    for i, name in enumerate(columns):
        draw.text(((i + 0.5) * column, PICTURE_HEADER / 2), name, fill=(0, 0, 0), font=font, anchor="mm")
    return np.concatenate([np.asarray(header), grid], axis=0)
