"""The MAE variants by name: their architecture and the timm encoder their weights load into (plain data, so the
recipe and ``--help`` need neither torch nor timm)."""
from __future__ import annotations

__all__ = ["MODEL_ARCHS", "TIMM_ENCODERS", "DECODER_PREFIXES", "is_decoder_key"]

# the parameter names that belong to the MAE decoder (and its mask token), not to the encoder timm loads
DECODER_PREFIXES = ("decoder_", "mask_token")


def is_decoder_key(name: str) -> bool:
    """Whether a state-dict key is the decoder's: everything else is the encoder, under timm's names."""
    return name.startswith(DECODER_PREFIXES)


def _arch(patch_size, embed_dim, depth, num_heads, decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16):
    return dict(patch_size=patch_size, embed_dim=embed_dim, depth=depth, num_heads=num_heads,
                decoder_embed_dim=decoder_embed_dim, decoder_depth=decoder_depth, decoder_num_heads=decoder_num_heads)


MODEL_ARCHS = {
    "mae_vit_tiny_patch16": _arch(16, 192, 12, 3, decoder_embed_dim=128, decoder_depth=2, decoder_num_heads=4),
    "mae_vit_base_patch16": _arch(16, 768, 12, 12),
    "mae_vit_large_patch16": _arch(16, 1024, 24, 16),
    "mae_vit_huge_patch14": _arch(14, 1280, 32, 16),
}

TIMM_ENCODERS = {
    "mae_vit_tiny_patch16": "vit_tiny_patch16_224",
    "mae_vit_base_patch16": "vit_base_patch16_224",
    "mae_vit_large_patch16": "vit_large_patch16_224",
    "mae_vit_huge_patch14": "vit_huge_patch14_224",
}
