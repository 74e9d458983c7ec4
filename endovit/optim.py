"""EndoViT's optimizer set-up: weight-decay exclusions, V-shaped layer-wise lr decay, lr schedule.

Layer ids (EndoViT, ViT-B): 0 for patch_embed / cls_token / pos_embed; ``blocks.i`` -> i + 1;
``decoder_blocks.j`` -> num_layers - 1 - j; ``decoder_norm`` / ``decoder_pred`` -> num_layers -
num_decoder_layers; everything else (encoder norm, decoder_embed, mask_token) -> num_layers, where
num_layers = encoder depth + 1 and num_decoder_layers = decoder depth + 1. A group's lr is scaled
by layer_decay ** (num_layers - id).
"""
from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn as nn

from endovit.swa import averaging_calls, endovit_swa_lr

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


def lr_at_step(*, step: int, steps_per_epoch: int, lr: float, min_lr: float, epochs: int, warmup_epochs: float,
               swa: bool = False, swa_start_epoch: int = 0, swa_lr: float = 0.0, swa_every_steps: int = 1,
               swa_schedule: str = "smooth", lr_scale: float = 1.0) -> float:
    """The lr of a group with ``lr_scale`` before optimizer step ``step`` (0-based): linear warmup, then half-cycle
    cosine to ``min_lr``, times ``lr_scale``.

    Computed from the fractional epoch ``step / steps_per_epoch`` as in MAE/EndoViT. With SWA, from
    ``swa_start_epoch`` on: ``smooth`` cosine-anneals the lr from its value there to ``swa_lr`` over one epoch, per
    step, then holds it (times ``lr_scale``); ``endovit`` is EndoViT's code exactly (``endovit.swa``: the lr changes
    only at averaging steps, its layer scale compounding while SWALR anneals, then ``swa_lr * lr_scale``).
    """
    def base(s: int) -> float:
        e = s / steps_per_epoch
        if e < warmup_epochs:
            return lr * e / warmup_epochs
        progress = (e - warmup_epochs) / (epochs - warmup_epochs)
        return min_lr + (lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))

    swa_first_step = swa_start_epoch * steps_per_epoch
    if not swa or step < swa_first_step:
        return base(step) * lr_scale
    if swa_schedule == "endovit":
        # SWALR starts from the lr the last pre-SWA step set (the optimizer's initial, unscaled lr at epoch 0)
        held = base(swa_first_step - 1) * lr_scale if swa_first_step else lr
        calls = averaging_calls(step=step, steps_per_epoch=steps_per_epoch, swa_start_epoch=swa_start_epoch,
                                swa_every_steps=swa_every_steps)
        return endovit_swa_lr(held=held, lr_scale=lr_scale, swa_lr=swa_lr, calls=calls,
                              anneal_epochs=math.ceil(steps_per_epoch / swa_every_steps))
    anneal = min(1.0, step / steps_per_epoch - swa_start_epoch)
    alpha = (1.0 - math.cos(math.pi * anneal)) / 2.0
    return (swa_lr * alpha + base(swa_first_step) * (1.0 - alpha)) * lr_scale


def set_lr(optimizer, lr: float | Callable[[float], float]) -> None:
    """Give every group ``lr * lr_scale``, or ``lr(lr_scale)`` when ``lr`` is a function of the group's scale."""
    for group in optimizer.param_groups:
        scale = group.get("lr_scale", 1.0)
        group["lr"] = lr(scale) if callable(lr) else lr * scale
