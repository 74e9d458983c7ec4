"""Frozen features of an MAE encoder on unmasked frames: the cls token and the mean of the patch tokens."""
from __future__ import annotations

import math
import os

import torch

from endovit.data.transforms import normalize
from endovit.io import redact_url
from endovit.models.archs import is_decoder_key
from endovit.weights import fit_state_dict, read_weights

__all__ = ["POOLS", "load_encoder", "features_from_loader", "features_from_pixels"]

POOLS = ("cls", "avg")


def load_encoder(mae, source: str | os.PathLike) -> None:
    """Load the encoder of ``mae`` from a full MAE or an encoder-only state dict (our exports, the
    ``model.safetensors`` of a training checkpoint, official MAE ``.pth``); decoder weights are ignored.

    The fixed sin-cos position embedding is the model's own, so weights of another image size load.
    """
    encoder = {k: v for k, v in read_weights(source).state.items() if not is_decoder_key(k)}
    fit_state_dict(mae, encoder, redact_url(str(source)), log=None, hint="; check --model")


def _pooled(mae, images: torch.Tensor, accelerator) -> torch.Tensor:
    """(N, 2D): cls token, then mean-pooled patch tokens, in float32."""
    with accelerator.autocast():
        tokens = mae.forward_features(images)
    return torch.cat([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1).float()


def _patches(mae, images: torch.Tensor, accelerator) -> torch.Tensor:
    """(N, h * w * D): the patch tokens after the final norm, flat (``_split_pools`` shapes them), in float32."""
    with accelerator.autocast():
        tokens = mae.forward_features(images)
    return tokens[:, 1:].float().flatten(1)


def _split_pools(features: torch.Tensor, grid=None) -> dict[str, torch.Tensor]:
    """``{"cls", "avg"}`` of pooled features, or ``{"patch": (N, h, w, D)}`` when ``grid`` (h, w) is given."""
    if grid is not None:
        return {"patch": features.reshape(features.shape[0], *grid, -1)}
    return dict(zip(POOLS, features.chunk(2, dim=1), strict=True))


@torch.no_grad()
def features_from_loader(mae, loader, accelerator, *, mean, std, dense: bool = False) -> dict[str, torch.Tensor]:
    """Features of every frame of a prepared loader of ``{"pixels", "index"}`` batches, in index order,
    gathered across processes (``gather_for_metrics`` drops the samples that pad the last batch); ``dense``: the
    patch tokens instead of the pooled features."""
    embed = _patches if dense else _pooled
    features, indices = [], []
    for batch in loader:
        features.append(accelerator.gather_for_metrics(embed(mae, normalize(batch["pixels"], mean, std), accelerator)))
        indices.append(accelerator.gather_for_metrics(batch["index"]))
    return _split_pools(torch.cat(features)[torch.cat(indices).argsort()], mae.grid_size if dense else None)


@torch.no_grad()
def features_from_pixels(mae, pixels: torch.Tensor, accelerator, *, mean, std, batch_size: int, dense: bool = False
                         ) -> dict[str, torch.Tensor]:
    """Features of every frame of a uint8 (N, 3, H, W) tensor. Each process embeds a contiguous share (the
    last one padded with repeats), gathered across processes, so every process must call this."""
    share = math.ceil(len(pixels) / accelerator.num_processes)
    start = accelerator.process_index * share
    rows = torch.arange(start, start + share).clamp(max=len(pixels) - 1)
    embed = _patches if dense else _pooled
    mine = [embed(mae, normalize(pixels[rows[i:i + batch_size]].to(accelerator.device), mean, std), accelerator)
            for i in range(0, share, batch_size)]
    return _split_pools(accelerator.gather(torch.cat(mine))[:len(pixels)], mae.grid_size if dense else None)
