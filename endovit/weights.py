"""Weight files in and out: read official MAE .pth, safetensors and URLs safely; export final weights."""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import urllib.parse
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from endovit.errors import CheckpointError
from endovit.io import atomic_path

__all__ = ["read_state_dict", "load_pretrained", "export_model", "export_info", "EXPORT_FILES"]

EXPORT_FILES = ("model.safetensors", "encoder.safetensors", "endovit_config.json")
FIXED_POS_EMBEDS = ("pos_embed", "decoder_pos_embed")


def _cache_dir() -> Path:
    """Downloaded weights live beside torch.hub's (``$TORCH_HOME/hub/endovit``)."""
    return Path(torch.hub.get_dir()) / "endovit"


def _fetch(url: str) -> Path:
    """Download a URL once into the cache (atomic: a partial download is never reused)."""
    name = Path(urllib.parse.urlparse(url).path).name or "weights"
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    target = _cache_dir() / f"{digest}-{name}"
    if target.exists():
        return target
    try:
        with atomic_path(target) as tmp:
            torch.hub.download_url_to_file(url, str(tmp), progress=False)
    except Exception as err:
        raise CheckpointError(f"cannot download weights from {url}: {err}") from err
    return target


def read_state_dict(source: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from a .safetensors or .pth/.pt file, or a URL (cached).

    ``.pth`` files are read with ``weights_only=True``; the only non-tensor object allowed is
    the ``argparse.Namespace`` that official MAE checkpoints keep under ``args``. A top-level
    ``model`` (MAE) or ``state_dict`` entry is unwrapped.
    """
    source = str(source)
    if re.match(r"^(https?|file)://", source):
        path = _fetch(source)
    else:
        path = Path(source)
        if not path.is_file():
            raise CheckpointError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(path)
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"cannot read weights from {path}: {first_line}") from err
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict (expected tensors, or a dict with key 'model')")
    return obj


def load_pretrained(model: nn.Module, source: str | os.PathLike) -> None:
    """Load weights into ``model`` strictly; one clear error lists every mismatch.

    The fixed sin-cos position embeddings are recomputed by the model for its own patch
    grid, so weights trained at 224x224 load into a model for e.g. 224x384 frames.
    """
    state = read_state_dict(source)
    own = model.state_dict()
    for key in FIXED_POS_EMBEDS:
        if key in state and key in own and state[key].shape != own[key].shape:
            state[key] = own[key]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"missing keys: {', '.join(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {', '.join(unexpected)}")
        if mismatched:
            parts.append(f"shape mismatch: {'; '.join(mismatched)}")
        raise CheckpointError(f"weights in {source} do not fit the model ({' | '.join(parts)})")
    model.load_state_dict(state, strict=True)


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def export_model(model: nn.Module, out_dir: str | os.PathLike, info: dict) -> Path:
    """Write ``model.safetensors`` (full MAE), ``encoder.safetensors`` (timm keys) and ``endovit_config.json``.

    ``info`` is stored as the JSON (architecture, image size, mean/std, recipe, ...). All three files are
    staged first and renamed into place together, so no failure leaves a mixed set.
    """
    out_dir = Path(out_dir)
    metadata = {"format": "pt", "endovit": json.dumps({"model": info.get("model", ""), "step": info.get("step")})}
    with contextlib.ExitStack() as stack:
        staged = {name: stack.enter_context(atomic_path(out_dir / name)) for name in EXPORT_FILES}
        _save_safetensors(model.state_dict(), staged["model.safetensors"], metadata)
        _save_safetensors(model.encoder_state_dict(), staged["encoder.safetensors"], metadata)
        staged["endovit_config.json"].write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return out_dir


def export_info(recipe, mae, step: int, val_loss: float | None) -> dict:
    """What ``endovit_config.json`` records beside exported weights: model, timm name, sizes, mean/std, recipe."""
    from endovit.models.mae import TIMM_ENCODERS

    return {
        "model": recipe.model,
        "timm_model": TIMM_ENCODERS[recipe.model],
        "architecture": mae.config,
        "img_size": recipe.img_size,
        "patch_size": mae.patch_size,
        "mean": recipe.mean,
        "std": recipe.std,
        "step": step,
        "val_loss": val_loss,
        "recipe": recipe.to_dict(),
    }


