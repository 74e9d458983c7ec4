"""Attention variants for speed comparisons: EndoViT's explicit attention (timm 0.4.5) and SDPA backend control.

The model always uses timm's ``Attention`` modules (same parameters, same names); only how their product is
computed changes here.
"""
from __future__ import annotations

import contextlib
import types

import torch

__all__ = ["SDPA_BACKENDS", "use_timm045_attention", "timm045_attention", "sdpa_backend", "sdpa_choice"]

SDPA_BACKENDS = ("auto", "flash", "cudnn", "efficient", "math")


def timm045_attention(self, x: torch.Tensor, attn_mask=None, is_causal: bool = False) -> torch.Tensor:
    """timm 0.4.5's ``Attention.forward`` (what EndoViT ran): ``softmax(q @ k^T * scale) @ v`` as three explicit
    kernels and an attention matrix in memory, with today's module's weights."""
    b, n, c = x.shape
    qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = (q @ k.transpose(-2, -1)) * self.scale
    attn = self.attn_drop(attn.softmax(dim=-1))
    x = (attn @ v).transpose(1, 2).reshape(b, n, c)
    return self.proj_drop(self.proj(x))


def use_timm045_attention(model: torch.nn.Module) -> int:
    """Make every timm attention layer of ``model`` compute as timm 0.4.5 did; returns how many were changed."""
    changed = 0
    for module in model.modules():
        if hasattr(module, "fused_attn") and hasattr(module, "qkv"):
            module.forward = types.MethodType(timm045_attention, module)  # the instance's forward shadows the class's
            module.fused_attn = False
            changed += 1
    return changed


def _backend_enum(name: str):
    from torch.nn.attention import SDPBackend

    return {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
            "efficient": SDPBackend.EFFICIENT_ATTENTION, "math": SDPBackend.MATH}[name]


def sdpa_backend(name: str):
    """A context that restricts ``scaled_dot_product_attention`` to one backend (``auto``: PyTorch chooses).
    Under torch.compile the choice is made while tracing, so the context must be active while compiling."""
    if name not in SDPA_BACKENDS:
        raise ValueError(f"SDPA backend {name!r}: choose one of {', '.join(SDPA_BACKENDS)}")
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel([_backend_enum(name)])


def sdpa_choice(shape, dtype: torch.dtype, device: torch.device, requires_grad: bool = True) -> str:
    """The backend PyTorch picks by default for q, k, v of ``shape`` (N, heads, tokens, head_dim)."""
    from torch.nn.attention import SDPBackend

    q = torch.empty(shape, dtype=dtype, device=device, requires_grad=requires_grad)
    choice = SDPBackend(torch._fused_sdp_choice(q, q, q))  # private, but what F.scaled_dot_product_attention asks
    return {SDPBackend.FLASH_ATTENTION: "flash", SDPBackend.CUDNN_ATTENTION: "cudnn",
            SDPBackend.EFFICIENT_ATTENTION: "efficient", SDPBackend.MATH: "math"}.get(choice, choice.name.lower())
