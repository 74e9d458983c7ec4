"""Masked Autoencoder ViT (He et al. 2021) built from timm blocks.

Parameter names and shapes follow the official MAE checkpoints, so
``mae_pretrain_vit_base_full.pth`` loads with ``strict=True`` and the encoder keys
are the ones timm's ``VisionTransformer`` uses.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from timm.layers import PatchEmbed, to_2tuple
from timm.models.vision_transformer import Block
from torch.utils.checkpoint import checkpoint

from endovit.models.archs import MODEL_ARCHS, TIMM_ENCODERS, is_decoder_key

__all__ = [
    "MaskedAutoencoderViT",
    "MODEL_ARCHS",
    "TIMM_ENCODERS",
    "create_mae",
    "sincos_pos_embed_2d",
    "mae_vit_tiny_patch16",
    "mae_vit_base_patch16",
    "mae_vit_large_patch16",
    "mae_vit_huge_patch14",
]


def sincos_pos_embed_2d(embed_dim: int, grid_size: tuple[int, int], cls_token: bool = True) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding for a (rows, cols) patch grid, as in MAE.

    The first half of the channels encodes the column, the second half the row; a zero
    row is prepended for the cls token. Returns float32 of shape (1 + rows*cols, embed_dim).
    """
    if embed_dim % 4:
        raise ValueError(f"embed_dim {embed_dim} must be divisible by 4 for 2-D sin-cos position embeddings")
    rows, cols = grid_size
    row_pos = torch.arange(rows, dtype=torch.float32).repeat_interleave(cols)
    col_pos = torch.arange(cols, dtype=torch.float32).repeat(rows)
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4.0))

    def encode(pos: torch.Tensor) -> torch.Tensor:
        angles = pos.double()[:, None] * omega[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    emb = torch.cat([encode(col_pos), encode(row_pos)], dim=1).float()
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim), emb], dim=0)
    return emb


class MaskedAutoencoderViT(nn.Module):
    """MAE with a ViT encoder that sees only the visible patches and a light decoder."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 1024,
        depth: int = 24,
        num_heads: int = 16,
        decoder_embed_dim: int = 512,
        decoder_depth: int = 8,
        decoder_num_heads: int = 16,
        mlp_ratio: float = 4.0,
        norm_pix_loss: bool = False,
    ):
        super().__init__()
        norm_layer = partial(nn.LayerNorm, eps=1e-6)
        img_size = to_2tuple(img_size)
        if img_size[0] % patch_size or img_size[1] % patch_size:
            raise ValueError(f"img_size {img_size[0]}x{img_size[1]} is not divisible by patch_size {patch_size}")
        self.config = {
            "img_size": list(img_size),
            "patch_size": patch_size,
            "in_chans": in_chans,
            "embed_dim": embed_dim,
            "depth": depth,
            "num_heads": num_heads,
            "decoder_embed_dim": decoder_embed_dim,
            "decoder_depth": decoder_depth,
            "decoder_num_heads": decoder_num_heads,
            "mlp_ratio": mlp_ratio,
            "norm_pix_loss": norm_pix_loss,
        }
        self.img_size = img_size
        self.grad_checkpointing = False
        self.patch_size = patch_size
        self.in_chans = in_chans
        self.norm_pix_loss = norm_pix_loss

        self.patch_embed = PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.grid_size = self.patch_embed.grid_size
        num_patches = self.patch_embed.num_patches
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, embed_dim), requires_grad=False)
        self.blocks = nn.ModuleList(
            [Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer) for _ in range(depth)]
        )
        self.norm = norm_layer(embed_dim)

        self.decoder_embed = nn.Linear(embed_dim, decoder_embed_dim, bias=True)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_embed_dim))
        self.decoder_pos_embed = nn.Parameter(
            torch.zeros(1, num_patches + 1, decoder_embed_dim), requires_grad=False
        )
        self.decoder_blocks = nn.ModuleList(
            [
                Block(decoder_embed_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                for _ in range(decoder_depth)
            ]
        )
        self.decoder_norm = norm_layer(decoder_embed_dim)
        self.decoder_pred = nn.Linear(decoder_embed_dim, patch_size**2 * in_chans, bias=True)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """MAE init: sin-cos position embeddings, xavier-uniform linears, normal(0.02) tokens."""
        self.reset_pos_embed()
        proj = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(proj.view(proj.shape[0], -1))
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        self.apply(self._init_layer)

    def reset_pos_embed(self) -> None:
        """(Re)compute both fixed position embeddings for this model's patch grid."""
        with torch.no_grad():
            self.pos_embed.copy_(sincos_pos_embed_2d(self.pos_embed.shape[-1], self.grid_size)[None])
            self.decoder_pos_embed.copy_(sincos_pos_embed_2d(self.decoder_pos_embed.shape[-1], self.grid_size)[None])

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations during backward instead of storing them."""
        self.grad_checkpointing = enable

    def _run_blocks(self, blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
        for block in blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return x

    @staticmethod
    def _init_layer(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    @property
    def num_patches(self) -> int:
        return self.patch_embed.num_patches

    def patchify(self, imgs: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p*p*C), patch pixels ordered (p, q, c)."""
        p = self.patch_size
        n, c = imgs.shape[:2]
        rows, cols = self.grid_size
        x = imgs.reshape(n, c, rows, p, cols, p)
        x = torch.einsum("nchpwq->nhwpqc", x)
        return x.reshape(n, rows * cols, p * p * c)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """(N, L, p*p*C) -> (N, C, H, W)."""
        p = self.patch_size
        rows, cols = self.grid_size
        x = x.reshape(x.shape[0], rows, cols, p, p, self.in_chans)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], self.in_chans, rows * p, cols * p)

    @staticmethod
    def random_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
        """Keep the int(L*(1-mask_ratio)) patches with the smallest noise.

        Returns the kept tokens, the binary mask (1 = removed) in the original patch
        order, and the indices that restore that order.
        """
        n, length, dim = x.shape
        len_keep = int(length * (1 - mask_ratio))
        ids_shuffle = torch.argsort(noise, dim=1)
        ids_restore = torch.argsort(ids_shuffle, dim=1)
        ids_keep = ids_shuffle[:, :len_keep]
        x_kept = torch.gather(x, 1, ids_keep.unsqueeze(-1).expand(-1, -1, dim))
        mask = torch.ones(n, length, device=x.device)
        mask[:, :len_keep] = 0
        mask = torch.gather(mask, 1, ids_restore)
        return x_kept, mask, ids_restore

    def forward_encoder(self, imgs: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
        x = self.patch_embed(imgs)
        x = x + self.pos_embed[:, 1:, :]
        x, mask, ids_restore = self.random_masking(x, mask_ratio, noise)
        cls_tokens = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls_tokens, x], dim=1)
        x = self._run_blocks(self.blocks, x)
        return self.norm(x), mask, ids_restore

    def forward_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """The encoder on every patch (no masking): (N, 1 + L, D) tokens after the final norm, cls first.

        Equals timm's ``VisionTransformer.forward_features`` with the weights of ``encoder_state_dict``.
        """
        x = self.patch_embed(imgs) + self.pos_embed[:, 1:, :]
        cls_tokens = (self.cls_token + self.pos_embed[:, :1, :]).expand(x.shape[0], -1, -1)
        x = torch.cat([cls_tokens, x], dim=1)
        return self.norm(self._run_blocks(self.blocks, x))

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        x = self.decoder_embed(latent)
        n, visible_plus_cls, dim = x.shape
        mask_tokens = self.mask_token.expand(n, ids_restore.shape[1] + 1 - visible_plus_cls, -1).to(x.dtype)
        patches = torch.cat([x[:, 1:, :], mask_tokens], dim=1)
        patches = torch.gather(patches, 1, ids_restore.unsqueeze(-1).expand(-1, -1, dim))
        x = torch.cat([x[:, :1, :], patches], dim=1) + self.decoder_pos_embed
        x = self._run_blocks(self.decoder_blocks, x)
        x = self.decoder_pred(self.decoder_norm(x))
        return x[:, 1:, :]

    def forward_loss(self, imgs: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor, reduction: str = "mean"):
        """Mean squared error over masked patches.

        ``reduction="mean"`` gives MAE's scalar loss; ``"none"`` the per-image loss (every
        image has the same number of masked patches, so their mean equals the scalar).
        """
        target = self.patchify(imgs)
        if self.norm_pix_loss:
            mean = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1.0e-6) ** 0.5
        loss = ((pred.float() - target.float()) ** 2).mean(dim=-1)
        if reduction == "none":
            return (loss * mask).sum(dim=1) / mask.sum(dim=1)
        return (loss * mask).sum() / mask.sum()

    def forward(self, imgs: torch.Tensor, mask_ratio: float = 0.75, noise: torch.Tensor | None = None):
        """Returns (loss, pred, mask). ``noise`` (N, L) fixes the mask; uniform noise if None."""
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in (0, 1), got {mask_ratio}")
        if noise is None:
            noise = torch.rand(imgs.shape[0], self.num_patches, device=imgs.device)
        latent, mask, ids_restore = self.forward_encoder(imgs, mask_ratio, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = self.forward_loss(imgs, pred, mask)
        return loss, pred, mask

    def encoder_state_dict(self) -> dict[str, torch.Tensor]:
        """The encoder's weights under the names timm's VisionTransformer uses."""
        return {k: v for k, v in self.state_dict().items() if not is_decoder_key(k)}


def create_mae(name: str, **kwargs) -> MaskedAutoencoderViT:
    """Build a named MAE variant; keyword arguments override its architecture."""
    if name not in MODEL_ARCHS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODEL_ARCHS)}")
    return MaskedAutoencoderViT(**{**MODEL_ARCHS[name], **kwargs})


def mae_vit_tiny_patch16(**kwargs) -> MaskedAutoencoderViT:
    return create_mae("mae_vit_tiny_patch16", **kwargs)


def mae_vit_base_patch16(**kwargs) -> MaskedAutoencoderViT:
    return create_mae("mae_vit_base_patch16", **kwargs)


def mae_vit_large_patch16(**kwargs) -> MaskedAutoencoderViT:
    return create_mae("mae_vit_large_patch16", **kwargs)


def mae_vit_huge_patch14(**kwargs) -> MaskedAutoencoderViT:
    return create_mae("mae_vit_huge_patch14", **kwargs)
