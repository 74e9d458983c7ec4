"""The training step and its speed switches, shared by ``scripts/pretrain.py`` and ``scripts/benchmark.py``."""
from __future__ import annotations

import time
import warnings

import torch

__all__ = ["resolve_mixed_precision", "bf16_supported", "build_optimizer", "compile_model", "compile_trial",
           "train_step", "sdpa_active"]


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast is fast here: a CUDA GPU with bf16, or a CPU with AMX or AVX512-BF16."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                    or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    return False


def resolve_mixed_precision(setting: str, device: torch.device) -> str:
    """``auto`` -> ``bf16`` where the hardware runs it natively, else ``no``; explicit settings pass through."""
    if setting != "auto":
        return setting
    return "bf16" if bf16_supported(device) else "no"


def build_optimizer(param_groups: list[dict], lr: float, fused: bool, device: torch.device) -> torch.optim.AdamW:
    """AdamW (0.9, 0.95); ``fused`` = one fused kernel (CUDA/CPU) instead of a Python loop over parameters."""
    options = {"fused": True} if fused and device.type in ("cuda", "cpu") else {"foreach": False}
    return torch.optim.AdamW(param_groups, lr=lr, betas=(0.9, 0.95), **options)


def sdpa_active(model: torch.nn.Module) -> bool:
    """True when every attention layer uses PyTorch's fused scaled_dot_product_attention."""
    attentions = [m for m in model.modules() if hasattr(m, "fused_attn")]
    return bool(attentions) and all(m.fused_attn for m in attentions)


def compile_model(model: torch.nn.Module, trial, enabled: bool) -> tuple[torch.nn.Module, float]:
    """``torch.compile`` the model and run ``trial(model)`` once to compile it now.

    Returns the model to train with and the seconds compiling took. If compiling is unavailable
    or fails, warns and returns the eager model.
    """
    if not enabled:
        return model, 0.0
    start = time.perf_counter()
    try:
        compiled = torch.compile(model)
        trial(compiled)
    except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
        warnings.warn(f"torch.compile failed, training eagerly instead: {type(err).__name__}: {err}", stacklevel=2)
        return model, 0.0
    return compiled, time.perf_counter() - start


def compile_trial(accelerator, mae, batch_size: int, img_size, mask_ratio: float):
    """A ``trial(model)`` for ``compile_model``: one forward/backward on blank frames, no gradients left."""
    def trial(model) -> None:
        blank = torch.zeros(batch_size, 3, *img_size, device=accelerator.device)
        noise = torch.rand(batch_size, mae.num_patches, generator=torch.Generator().manual_seed(0))
        with accelerator.autocast():
            loss, _, _ = model(blank, mask_ratio, noise.to(accelerator.device))
        loss.backward()
        model.zero_grad(set_to_none=True)

    return trial


def train_step(accelerator, model, optimizer, images: torch.Tensor, noise: torch.Tensor, mask_ratio: float,
               clip_grad: float | None) -> torch.Tensor:
    """One micro-batch of normalised images: forward with the given masks, backward, and (when accelerate
    says gradients are synchronised) clip and step. Call inside ``accelerator.accumulate``.
    Returns the detached loss without synchronising with the host."""
    loss, _, _ = model(images, mask_ratio, noise)
    accelerator.backward(loss)
    if accelerator.sync_gradients and clip_grad:
        accelerator.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
