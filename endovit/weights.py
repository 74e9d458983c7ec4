"""Weight files in and out: read official MAE .pth, safetensors, export folders and URLs safely; export weights.

An export folder holds our files (``model.safetensors``, ``encoder.safetensors``, ``endovit_config.json``) and the
Hub-style folders that timm and transformers load (see ``endovit.hub``).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import urllib.parse
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from endovit import hub
from endovit.errors import CheckpointError, first_line
from endovit.io import SHA256_PIN, atomic_path, file_sha256, is_url, readable_mode, redact_url
from endovit.models.archs import MODEL_ARCHS, is_decoder_key

__all__ = [
    "WeightFile",
    "load_pretrained",
    "fit_state_dict",
    "fit_report",
    "architecture_of",
    "describe_misfit",
    "read_weights",
    "export_model",
    "export_state_dict",
    "export_info",
    "EXPORT_FILES",
    "HUB_FILES",
]

EXPORT_FILES = ("model.safetensors", "encoder.safetensors", "endovit_config.json")
HUB_FILES = (hub.CONFIG_NAME, hub.PREPROCESSOR_NAME, hub.TIMM_DIR, hub.TRANSFORMERS_DIR)
FIXED_POS_EMBEDS = ("pos_embed", "decoder_pos_embed")


def _cache_dir() -> Path:
    """Downloaded weights live beside torch.hub's (``$TORCH_HOME/hub/endovit``)."""
    return Path(torch.hub.get_dir()) / "endovit"


def _check_sha256(sha256: str | None) -> str | None:
    if sha256 is None:
        return None
    sha256 = sha256.strip().lower().removeprefix("sha256:")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise CheckpointError(f"sha256 {sha256!r} is not 64 hex digits")
    return sha256


def _fetch(url: str, sha256: str | None = None) -> Path:
    """Download a URL once into the cache (atomic: a partial download is never reused).

    Unpinned downloads are cached under a digest of the URL; pinned ones under the pinned hash, and the file's
    hash is checked on every load (a cached file that no longer matches is an error, not a silent reuse).
    """
    shown = redact_url(url)
    if url.lower().startswith("http://"):
        warnings.warn(f"downloading weights over plain http ({shown}): anyone on the way can change them; "
                      "use https or pin the file with a sha256", stacklevel=3)
    name = Path(urllib.parse.urlsplit(url).path).name or "weights"
    key = sha256[:16] if sha256 else hashlib.sha256(url.encode()).hexdigest()[:12]
    target = _cache_dir() / f"{key}-{name}"
    if not target.exists():
        try:
            with atomic_path(target) as tmp:
                torch.hub.download_url_to_file(url, str(tmp), progress=False)
                if sha256 and file_sha256(tmp) != sha256:
                    raise CheckpointError(f"weights downloaded from {shown} have sha256 {file_sha256(tmp)}, "
                                          f"not the pinned {sha256}")
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"cannot download weights from {shown}: {redact_url(first_line(err))}; download "
                                  "the file where the internet is reachable and pass its local path instead (for "
                                  "pretraining from random weights: --init_from '')") from err
    return target


def _weights_in_folder(folder: Path) -> Path:
    """The weight file a folder stands for: a checkpoint/export folder's ``model.safetensors``, else an
    encoder-only export's ``encoder.safetensors``, else a ``pytorch_model.bin``/``.pth`` of transformers or timm."""
    for name in ("model.safetensors", "encoder.safetensors", "pytorch_model.bin", "model.pth", "pytorch_model.pth"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder} holds no weights (model.safetensors, encoder.safetensors or pytorch_model.bin)")


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, an official checkpoint's ``args`` as a dict, else empty) from a weight file."""
    if path.suffix == ".safetensors":
        try:
            return load_file(path), {}
        except Exception as err:
            raise CheckpointError(f"cannot read weights from {path}: {first_line(err)}") from err
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read weights from {path}: {first_line(err)}") from err
    args = {}
    if isinstance(obj, dict) and isinstance(obj.get("args"), argparse.Namespace):
        args = vars(obj["args"])
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict (expected tensors, or a dict with key 'model')")
    return obj, args


@dataclass(frozen=True)
class WeightFile:
    """What a weight file holds: the state dict under our names, the file read, an official checkpoint's
    ``args`` (its argparse values as a dict, else empty) and ``format`` ("transformers" when names were converted)."""

    state: dict[str, torch.Tensor]
    path: Path
    args: dict = field(default_factory=dict)
    format: str = "endovit"


# what torch.compile (``_orig_mod.``) and DistributedDataParallel (``module.``) put before every key of a wrapped model
_WRAPPER_PREFIXES = ("_orig_mod.", "module.")


def _unwrapped(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    unwrapped = {}
    for key, value in state.items():
        for prefix in _WRAPPER_PREFIXES:
            key = key.removeprefix(prefix)
        unwrapped[key] = value
    return unwrapped


def read_weights(source: str | os.PathLike, sha256: str | None = None) -> WeightFile:
    """Read the weights at a .safetensors or .pth/.pt file, a folder, or a URL (cached), under our names.

    ``.pth`` files are read with ``weights_only=True``; the only non-tensor object allowed is the
    ``argparse.Namespace`` that official MAE checkpoints keep under ``args``. A top-level ``model`` (MAE) or
    ``state_dict`` entry is unwrapped, and so are keys of a compiled or DDP-wrapped model. A folder stands for its
    ``model.safetensors`` (a checkpoint ``step_N``, an export) or ``encoder.safetensors``; transformers ViT-MAE /
    ViT weights are renamed to ours. ``sha256`` pins the file's hash: checked on every read, also for a cached
    download; a URL can carry its pin as ``#sha256=<hex>`` (pip's convention), so ``--init_from`` pins without
    another flag.
    """
    source = str(source)
    sha256 = _check_sha256(sha256)
    if is_url(source) and "#" in source:
        source, fragment = source.split("#", 1)
        pinned = SHA256_PIN.fullmatch(fragment)
        if pinned is None:
            raise CheckpointError(f"{redact_url(source)}: the only URL fragment understood is #sha256=<64 hex digits>")
        if sha256 is not None and sha256 != pinned.group(1).lower():
            raise CheckpointError(f"{redact_url(source)}: two different sha256 pins (#sha256= and sha256=)")
        sha256 = pinned.group(1).lower()
    if is_url(source):
        path = _fetch(source, sha256)
    else:
        path = Path(source)
        if path.is_dir():
            path = _weights_in_folder(path)
        elif not path.is_file():
            raise CheckpointError(f"weights file {path} does not exist")
    if sha256 is not None:
        actual = file_sha256(path)
        if actual != sha256:
            where = f" (cached as {path}; delete it to download again)" if is_url(source) else ""
            raise CheckpointError(f"weights {redact_url(source)} have sha256 {actual}, not the pinned "
                                  f"{sha256}{where}")
    state, args = _read_file(path)
    state = _unwrapped(state)
    if hub.is_transformers_state_dict(state):
        return WeightFile(hub.from_transformers_state_dict(state), path, args, "transformers")
    return WeightFile(state, path, args)


def fit_report(state: dict, own: dict) -> tuple[list[str], list[str], list[str]]:
    """How ``state`` misses ``own`` (a model's state dict): missing keys, unexpected keys, shape mismatches."""
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and state[k].shape != own[k].shape
    ]
    return missing, unexpected, mismatched


def architecture_of(state: dict[str, torch.Tensor]) -> str | None:
    """The ``MODEL_ARCHS`` name whose encoder has the patch size, width and depth of ``state`` (and whose decoder
    has its decoder's width and depth, when it holds one), if one does."""
    patch_embed = state.get("patch_embed.proj.weight")
    if patch_embed is None or patch_embed.ndim != 4:
        return None
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    shape = (patch_embed.shape[-1], patch_embed.shape[0], depth)
    decoder = state.get("decoder_embed.weight")
    decoder_shape = None if decoder is None else (
        decoder.shape[0], len({key.split(".")[1] for key in state if key.startswith("decoder_blocks.")}))
    return next((name for name, a in MODEL_ARCHS.items()
                 if (a["patch_size"], a["embed_dim"], a["depth"]) == shape and decoder_shape in (
                     None, (a["decoder_embed_dim"], a["decoder_depth"]))), None)


def describe_misfit(state: dict[str, torch.Tensor], missing: list[str], unexpected: list[str],
                    mismatched: list[str], *, shown: int = 4) -> str:
    """One line for a "do not fit" error: the first ``shown`` keys of each kind, how many more, and the
    architecture ``state`` has when it is one of ``MODEL_ARCHS``."""
    def first(items: list[str], sep: str) -> str:
        more = f"{sep}and {len(items) - shown} more" if len(items) > shown else ""
        return sep.join(items[:shown]) + more

    parts = [f"{label}: {first(items, sep)}" for label, items, sep in (
        ("missing keys", missing, ", "), ("unexpected keys", unexpected, ", "), ("shape mismatch", mismatched, "; "))
        if items]
    arch = architecture_of(state)
    return " | ".join(parts) + (f" | the weights are {arch}'s" if arch else "")


def load_pretrained(model: nn.Module, source: str | os.PathLike, sha256: str | None = None,
                    log: Callable[[str], object] | None = print) -> str | None:
    """Load weights into ``model``; one clear error names the mismatches.

    The fixed sin-cos position embeddings are recomputed by the model for its own patch grid, so weights trained
    at 224x224 load into a model for e.g. 224x384 frames. Encoder-only weights (timm keys, e.g. the released
    EndoViT ``.pth`` or an ``encoder.safetensors``) load into the encoder and the decoder keeps its fresh
    initialisation: the returned note says so (also passed to ``log``; ``None`` for a full load). Anything else
    that does not fit exactly is refused.
    """
    return fit_state_dict(model, read_weights(source, sha256=sha256).state, redact_url(str(source)), log=log)


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], label: str, *,
                   log: Callable[[str], object] | None = print, hint: str = "") -> str | None:
    """``load_pretrained`` for a state dict already read; ``label`` names its source in messages, ``hint`` ends
    the refusal (e.g. which flag to check)."""
    state = dict(state)
    own = model.state_dict()
    for key in FIXED_POS_EMBEDS:
        if key in state and key in own and state[key].shape != own[key].shape:
            state[key] = own[key]
    missing, unexpected, mismatched = fit_report(state, own)
    decoder_keys = sorted(k for k in own if is_decoder_key(k))
    encoder_only = bool(missing) and missing == decoder_keys and not unexpected and not mismatched
    if (missing and not encoder_only) or unexpected or mismatched:
        raise CheckpointError(f"weights in {label} do not fit the model "
                              f"({describe_misfit(state, missing, unexpected, mismatched)}){hint}")
    if not encoder_only:
        model.load_state_dict(state, strict=True)
        return None
    model.load_state_dict({**own, **state}, strict=True)
    note = (f"note: {label} holds the encoder only: the encoder is loaded and the decoder "
            f"({len(decoder_keys)} tensors) starts from a fresh initialisation")
    if log is not None:
        log(note)
    return note


def _save_safetensors(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)


def _readable_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        readable_mode(path)


def export_state_dict(state: dict[str, torch.Tensor], out_dir: str | os.PathLike, info: dict,
                      hub_folders: bool = True) -> Path:
    """Write an export folder from our MAE state dict, full or encoder-only.

    Full: ``model.safetensors`` (full MAE), ``encoder.safetensors`` (timm keys), ``endovit_config.json``, and with
    ``hub_folders`` the timm and transformers folders plus the root ``config.json``/``preprocessor_config.json``
    (``endovit.hub``). Encoder-only: the same without ``model.safetensors`` (there is no decoder to write). Every
    file is staged first and renamed into place at the end, so no failure leaves a mixed set; files are 0644.
    """
    out_dir = Path(out_dir)
    has_decoder = any(is_decoder_key(k) for k in state)
    encoder = {k: v for k, v in state.items() if not is_decoder_key(k)}
    info = {**info, "has_decoder": has_decoder}
    metadata = {"format": "pt", "endovit": json.dumps({"model": info.get("model", ""), "step": info.get("step")})}
    names = [n for n in EXPORT_FILES if has_decoder or n != "model.safetensors"]
    stale = [] if has_decoder else [out_dir / "model.safetensors"]
    if hub_folders:
        names += list(HUB_FILES)
    else:
        stale += [out_dir / name for name in HUB_FILES]  # would hold older weights than the files beside them
    # why the order matters: the ExitStack renames the staged files in reverse, so model.safetensors (first in
    # ``names``) lands last and its step marks a complete folder (``exported_step``); do not reorder EXPORT_FILES
    with contextlib.ExitStack() as stack:
        staged = {name: stack.enter_context(atomic_path(out_dir / name)) for name in names}
        if has_decoder:
            _save_safetensors(state, staged["model.safetensors"], metadata)
        _save_safetensors(encoder, staged["encoder.safetensors"], metadata)
        staged["endovit_config.json"].write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        if hub_folders:
            staged[hub.CONFIG_NAME].write_text(json.dumps(hub.root_config(info), indent=2) + "\n")
            staged[hub.PREPROCESSOR_NAME].write_text(json.dumps(hub.preprocessor_config(info), indent=2) + "\n")
            hub.write_timm_folder(staged[hub.TIMM_DIR], encoder, info, weights_file=staged["encoder.safetensors"])
            hub.write_transformers_folder(staged[hub.TRANSFORMERS_DIR], state, info)
            for name in (hub.TIMM_DIR, hub.TRANSFORMERS_DIR):
                _readable_tree(staged[name])
        for path in stale:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    return out_dir


def exported_step(out_dir: str | os.PathLike) -> int | None:
    """The step of the complete export in ``out_dir``, else None. ``model.safetensors`` is renamed into place last
    (``export_state_dict`` stages it first, and staged files are renamed in reverse), so its step is the folder's."""
    path = Path(out_dir) / "model.safetensors"
    try:
        with safe_open(str(path), "pt") as weights:
            step = json.loads((weights.metadata() or {}).get("endovit", "{}")).get("step")
    except (OSError, ValueError, AttributeError, SafetensorError):
        return None
    return step if isinstance(step, int) else None


def export_model(model: nn.Module, out_dir: str | os.PathLike, info: dict, hub_folders: bool = True) -> Path:
    """Write ``model.safetensors`` (full MAE), ``encoder.safetensors`` (timm keys), ``endovit_config.json`` and
    the folders timm and transformers load (``timm/``, ``transformers/``, root ``config.json``); see
    ``export_state_dict``. ``info`` (``export_info``) is stored as the JSON; the model fills in its own
    architecture and patch size where ``info`` lacks them."""
    from endovit.models.mae import TIMM_ENCODERS

    info = {"architecture": model.config, "patch_size": model.patch_size,
            "timm_model": TIMM_ENCODERS.get(info.get("model")), **info}
    return export_state_dict(model.state_dict(), out_dir, info, hub_folders=hub_folders)


def export_info(settings: Mapping, mae, *, step: int | None, val_loss: float | None) -> dict:
    """What ``endovit_config.json`` records beside exported weights: model, timm name, sizes, mean/std, and the
    settings (a recipe's ``to_dict()``: ``model``, ``img_size``, ``mean``, ``std`` and the rest) with URLs
    redacted."""
    from endovit.models.mae import TIMM_ENCODERS

    return {
        "model": settings["model"],
        "timm_model": TIMM_ENCODERS[settings["model"]],
        "architecture": mae.config,
        "img_size": settings["img_size"],
        "patch_size": mae.patch_size,
        "mean": settings["mean"],
        "std": settings["std"],
        "step": step,
        "val_loss": val_loss,
        "recipe": {k: redact_url(v) if isinstance(v, str) else v for k, v in settings.items()},
    }
