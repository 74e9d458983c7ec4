"""Analytic FLOPs of the MAE training step and GPU peaks, for MFU in the training log and the benchmarks.

FLOPs of one image's forward pass (multiply-adds count 2; norms, softmax, GELU ignored), with L
patches, K = int(L * (1 - mask_ratio)) kept, encoder width D and depth B, decoder width d and depth b,
MLP ratio m, patch p and C channels:

    patch embedding   2 * L * C p^2 * D                    (the official order: every patch, then masking)
    encoder blocks    B * (2 (K+1) D^2 (4 + 2m) + 4 (K+1)^2 D)
    decoder embed     2 * (K+1) * D * d
    decoder blocks    b * (2 (L+1) d^2 (4 + 2m) + 4 (L+1)^2 d)
    prediction head   2 * (L+1) * d * C p^2

A training step costs 3x the forward (the backward pass is twice the forward). The count stays the official
algorithm's when the model embeds the kept patches only (``kept_patch_embed``, 1/4 of that term): MFU figures
then compare across levers and with earlier runs.
"""
from __future__ import annotations

import torch

__all__ = ["PEAK_TFLOPS", "forward_flops", "train_flops", "peak_tflops"]

# Dense bf16/fp16 tensor-core peaks (TFLOP/s) by GPU name fragment.
PEAK_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0}


def forward_flops(mae, mask_ratio: float) -> int:
    """FLOPs of one image's MAE forward pass (formula in the module docstring)."""
    cfg = mae.config
    patches = mae.num_patches
    kept = int(patches * (1 - mask_ratio)) + 1
    full = patches + 1
    pixels = cfg["in_chans"] * cfg["patch_size"] ** 2
    width, dec_width, ratio = cfg["embed_dim"], cfg["decoder_embed_dim"], cfg["mlp_ratio"]

    def blocks(depth: int, tokens: int, dim: int) -> float:
        return depth * (2 * tokens * dim * dim * (4 + 2 * ratio) + 4 * tokens * tokens * dim)

    total = (2 * patches * pixels * width + blocks(cfg["depth"], kept, width) + 2 * kept * width * dec_width
             + blocks(cfg["decoder_depth"], full, dec_width) + 2 * full * dec_width * pixels)
    return int(total)


def train_flops(mae, mask_ratio: float) -> int:
    return 3 * forward_flops(mae, mask_ratio)


def peak_tflops(device: torch.device, precision: str) -> float | None:
    """Dense bf16/fp16 tensor-core peak of a known GPU (None for CPUs, fp32 and unknown cards)."""
    if device.type != "cuda" or precision not in ("bf16", "fp16"):
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
