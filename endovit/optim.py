"""EndoViT's optimizer set-up: weight-decay exclusions, V-shaped layer-wise lr decay, lr schedule.

Layer ids (EndoViT, ViT-B): 0 for patch_embed / cls_token / pos_embed; ``blocks.i`` -> i + 1;
``decoder_blocks.j`` -> num_layers - 1 - j; ``decoder_norm`` / ``decoder_pred`` -> num_layers -
num_decoder_layers; everything else (encoder norm, decoder_embed, mask_token) -> num_layers, where
num_layers = encoder depth + 1 and num_decoder_layers = decoder depth + 1. A group's lr is scaled
by layer_decay ** (num_layers - id).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn

__all__ = ["NO_WEIGHT_DECAY", "layer_id", "param_groups", "build_optimizer", "lr_at_step", "set_lr"]

NO_WEIGHT_DECAY = {"pos_embed", "cls_token", "decoder_pos_embed", "mask_token"}


def layer_id(name: str, num_layers: int, num_decoder_layers: int) -> int:
    if name in ("cls_token", "pos_embed") or name.startswith("patch_embed"):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith(("decoder_norm", "decoder_pred")):
        return num_layers - num_decoder_layers
    if name.startswith("decoder_blocks."):
        return num_layers - 1 - int(name.split(".")[1])
    return num_layers


def param_groups(model: nn.Module, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW groups: no decay for 1-D params and tokens/position embeddings; per-layer ``lr_scale``."""
    num_layers = len(model.blocks) + 1
    num_decoder_layers = len(model.decoder_blocks) + 1
    groups: dict[tuple[int, bool], dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        no_decay = param.ndim == 1 or name in NO_WEIGHT_DECAY
        lid = layer_id(name, num_layers, num_decoder_layers)
        group = groups.setdefault(
            (lid, no_decay),
            {
                "params": [],
                "param_names": [],
                "weight_decay": 0.0 if no_decay else weight_decay,
                "lr_scale": layer_decay ** (num_layers - lid),
            },
        )
        group["params"].append(param)
        group["param_names"].append(name)
    return [groups[key] for key in sorted(groups)]


def build_optimizer(param_groups: list[dict], lr: float, fused: bool, device: torch.device) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95); ``fused`` = one fused kernel (CUDA/CPU), else torch's default implementation."""
    options = {"fused": True} if fused and device.type in ("cuda", "cpu") else {}
    return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.95), **options)


def lr_at_step(step: int, steps_per_epoch: int, lr: float, min_lr: float, epochs: int, warmup_epochs: float,
               swa: bool = False, swa_start_epoch: int = 0, swa_lr: float = 0.0) -> float:
    """Base lr before optimizer step ``step`` (0-based): linear warmup, then half-cycle cosine to ``min_lr``.

    Computed from the fractional epoch ``step / steps_per_epoch`` as in MAE/EndoViT. With SWA, from
    ``swa_start_epoch`` the lr is cosine-annealed from its value there to ``swa_lr`` over one epoch,
    then held (torch's SWALR rule, applied per step).
    """
    epoch = step / steps_per_epoch

    def base(e: float) -> float:
        if e < warmup_epochs:
            return lr * e / warmup_epochs
        progress = (e - warmup_epochs) / (epochs - warmup_epochs)
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    if swa and epoch >= swa_start_epoch:
        anneal = min(1.0, epoch - swa_start_epoch)
        alpha = (1.0 - math.cos(math.pi * anneal)) / 2.0
        return swa_lr * alpha + base(swa_start_epoch) * (1.0 - alpha)
    return base(epoch)


def set_lr(optimizer, lr: float) -> None:
    """Give every group ``lr * lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
