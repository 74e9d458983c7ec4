"""Weight files in and out: official MAE .pth, safetensors, URLs; atomic exports and checkpoint folders."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import urllib.parse
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

from endovit.errors import CheckpointError
from endovit.io import atomic_write_text

__all__ = [
    "CheckpointError",
    "read_state_dict",
    "load_pretrained",
    "export_model",
    "export_info",
    "checkpoint_dirs",
    "latest_checkpoint",
    "is_complete_checkpoint",
    "prune_checkpoints",
    "checkpoint_name",
    "CHECKPOINT_PREFIX",
    "temporary_checkpoint_dir",
    "TrainProgress",
    "check_resumable",
    "save_training_state",
    "resolve_resume",
]

CHECKPOINT_PREFIX = "step_"
CHECKPOINT_MANIFEST = "endovit_checkpoint.json"
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
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + f".part-{os.getpid()}")
    try:
        torch.hub.download_url_to_file(url, str(tmp), progress=False)
        os.replace(tmp, target)
    except Exception as err:
        tmp.unlink(missing_ok=True)
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

    ``info`` is stored as the JSON (architecture, image size, mean/std, recipe, ...).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {"format": "pt", "endovit": json.dumps({"model": info.get("model", ""), "step": info.get("step")})}
    staged = {name: out_dir / f".{name}.tmp-{os.getpid()}" for name in EXPORT_FILES}
    _save_safetensors(model.state_dict(), staged["model.safetensors"], metadata)
    _save_safetensors(model.encoder_state_dict(), staged["encoder.safetensors"], metadata)
    staged["endovit_config.json"].write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    for name, tmp in staged.items():
        os.replace(tmp, out_dir / name)
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


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def _write_manifest(folder: Path, run: dict) -> None:
    """Record every file's size and the run's signature; written last, so a matching manifest means a whole folder."""
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir()) if p.is_file()}
    atomic_write_text(folder / CHECKPOINT_MANIFEST, json.dumps({"files": sizes, "run": run}, indent=1) + "\n")


def is_complete_checkpoint(folder: Path) -> bool:
    """True when the manifest exists and every file it lists has its recorded size.

    Guards against folders that were only partly copied back, e.g. restored from S3 after a spot
    interruption cut their upload short.
    """
    try:
        sizes = json.loads((folder / CHECKPOINT_MANIFEST).read_text())["files"]
        return all((folder / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_resumable(folder: Path, run: dict) -> None:
    """Refuse to resume a checkpoint written by a run that differs in what resuming depends on."""
    saved = json.loads((folder / CHECKPOINT_MANIFEST).read_text())["run"]
    changed = [f"{key}: {saved.get(key)!r} then, {value!r} now"
               for key, value in run.items() if saved.get(key) != value]
    if changed:
        raise CheckpointError(f"cannot resume from {folder}: the run changed ({'; '.join(changed)}); restore those "
                              "settings or start a new --output_dir")


def checkpoint_dirs(root: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first (temporary or partial folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name) and is_complete_checkpoint(p)]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    dirs = checkpoint_dirs(root)
    return dirs[-1] if dirs else None


def prune_checkpoints(root: str | os.PathLike, keep: int) -> None:
    """Delete all but the newest ``keep`` checkpoints, and leftovers of interrupted saves."""
    root = Path(root)
    for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(f".tmp-{CHECKPOINT_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def temporary_checkpoint_dir(root: str | os.PathLike, step: int) -> Path:
    """Where a checkpoint is written before the rename that marks it complete."""
    return Path(root) / f".tmp-{checkpoint_name(step)}"


class TrainProgress:
    """Counters saved inside every training checkpoint (``accelerator.register_for_checkpointing``)."""

    def __init__(self):
        self.step = 0
        self.best_val_loss = float("inf")

    def state_dict(self) -> dict:
        return {"step": self.step, "best_val_loss": self.best_val_loss}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])
        self.best_val_loss = float(state["best_val_loss"])


def save_training_state(accelerator, root: str | os.PathLike, step: int, keep: int, run: dict) -> Path:
    """``accelerator.save_state`` into a temporary folder, then rename it complete; keep the newest ``keep``.

    Every process writes its own RNG state, so all of them call this. A process killed mid-save
    leaves only a ``.tmp-`` folder, which ``latest_checkpoint`` never returns. ``run`` (what resuming
    depends on: model, sizes, seed, steps per epoch, ...) goes into the manifest. The main process seals and
    renames the folder; then, where a node's checkpoint folder is its own disk (not shared), that node's
    local main process seals its part too.
    """
    root = Path(root)
    tmp = temporary_checkpoint_dir(root, step)
    final = root / checkpoint_name(step)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _seal(tmp, final, root, keep, run)
    accelerator.wait_for_everyone()
    if accelerator.is_local_main_process and not accelerator.is_main_process and tmp.is_dir():
        _seal(tmp, final, root, keep, run)
    accelerator.wait_for_everyone()
    return final


def _seal(tmp: Path, final: Path, root: Path, keep: int, run: dict) -> None:
    _write_manifest(tmp, run)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    prune_checkpoints(root, keep)


def resolve_resume(resume: str, root: str | os.PathLike) -> Path | None:
    """``none`` -> None; ``auto`` -> newest complete checkpoint under ``root`` (or None); else that folder."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(root)
    path = Path(resume)
    if not is_complete_checkpoint(path):
        raise CheckpointError(f"--resume {resume}: not a complete checkpoint folder (no {CHECKPOINT_MANIFEST} "
                              "matching its files); use --resume auto to take the newest complete one")
    return path
