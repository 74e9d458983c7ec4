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
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from endovit import hub
from endovit.errors import CheckpointError
from endovit.io import SHA256_PIN, atomic_path, readable_mode
from endovit.models.archs import MODEL_ARCHS

__all__ = [
    "is_url",
    "read_state_dict",
    "load_pretrained",
    "fit_state_dict",
    "fit_report",
    "architecture_of",
    "describe_misfit",
    "read_weights",
    "export_model",
    "export_state_dict",
    "export_info",
    "redact_url",
    "EXPORT_FILES",
    "HUB_FILES",
]

EXPORT_FILES = ("model.safetensors", "encoder.safetensors", "endovit_config.json")
HUB_FILES = (hub.CONFIG_NAME, hub.PREPROCESSOR_NAME, hub.TIMM_DIR, hub.TRANSFORMERS_DIR)
FIXED_POS_EMBEDS = ("pos_embed", "decoder_pos_embed")
DECODER_PREFIXES = hub.DECODER_PREFIXES
_URL = re.compile(r"^(https?|file)://", re.IGNORECASE)
_ANY_URL = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def is_url(source: str | os.PathLike) -> bool:
    """Whether ``read_state_dict`` downloads ``source`` (an http, https or file URL) rather than opening a path."""
    return bool(_URL.match(str(source)))


def redact_url(text: str) -> str:
    """``text`` with every URL's credentials (``user:password@``), query string and fragment removed.

    ``https://user:tok@host/path/w.pth?X-Amz-Signature=...`` becomes ``https://host/path/w.pth``; use it wherever
    a source location is printed, logged or stored.
    """
    def clean(match: re.Match) -> str:
        url = match.group(0)
        try:
            parts = urllib.parse.urlsplit(url)
            host = parts.hostname or ""
            if parts.port is not None:
                host = f"{host}:{parts.port}"
        except ValueError:
            return url.split("?", 1)[0].split("#", 1)[0]
        if "@" in parts.netloc and not host:
            host = parts.netloc.rsplit("@", 1)[1]
        return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))

    return _ANY_URL.sub(clean, str(text))


def _cache_dir() -> Path:
    """Downloaded weights live beside torch.hub's (``$TORCH_HOME/hub/endovit``)."""
    return Path(torch.hub.get_dir()) / "endovit"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


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
                if sha256 and _file_sha256(tmp) != sha256:
                    raise CheckpointError(f"weights downloaded from {shown} have sha256 {_file_sha256(tmp)}, "
                                          f"not the pinned {sha256}")
        except CheckpointError:
            raise
        except Exception as err:
            raise CheckpointError(f"cannot download weights from {shown}: {redact_url(_first_line(err))}; download "
                                  "the file where the internet is reachable and pass its local path instead (for "
                                  "pretraining from random weights: --init_from '')") from err
    return target


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _weights_in_folder(folder: Path) -> Path:
    """The weight file a folder stands for: a checkpoint/export folder's ``model.safetensors``, else an
    encoder-only export's ``encoder.safetensors``, else a ``pytorch_model.bin``/``.pth`` of transformers or timm."""
    for name in ("model.safetensors", "encoder.safetensors", "pytorch_model.bin", "model.pth", "pytorch_model.pth"):
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder} holds no weights (model.safetensors, encoder.safetensors or pytorch_model.bin)")


def _read_file(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(state dict, extras) from a weight file; extras holds an official checkpoint's ``args`` as a dict."""
    if path.suffix == ".safetensors":
        try:
            return load_file(path), {}
        except Exception as err:
            raise CheckpointError(f"cannot read weights from {path}: {_first_line(err)}") from err
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"cannot read weights from {path}: {_first_line(err)}") from err
    extras = {}
    if isinstance(obj, dict) and isinstance(obj.get("args"), argparse.Namespace):
        extras["args"] = vars(obj["args"])
    for key in ("model", "state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} holds no state dict (expected tensors, or a dict with key 'model')")
    return obj, extras


def _read(source: str | os.PathLike, sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    source = str(source)
    sha256 = _check_sha256(sha256)
    if _URL.match(source) and "#" in source:
        source, fragment = source.split("#", 1)
        pinned = SHA256_PIN.fullmatch(fragment)
        if pinned is None:
            raise CheckpointError(f"{redact_url(source)}: the only URL fragment understood is #sha256=<64 hex digits>")
        if sha256 is not None and sha256 != pinned.group(1).lower():
            raise CheckpointError(f"{redact_url(source)}: two different sha256 pins (#sha256= and sha256=)")
        sha256 = pinned.group(1).lower()
    if _URL.match(source):
        path = _fetch(source, sha256)
    else:
        path = Path(source)
        if path.is_dir():
            path = _weights_in_folder(path)
        elif not path.is_file():
            raise CheckpointError(f"weights file {path} does not exist")
    if sha256 is not None:
        actual = _file_sha256(path)
        if actual != sha256:
            where = f" (cached as {path}; delete it to download again)" if _URL.match(source) else ""
            raise CheckpointError(f"weights {redact_url(source)} have sha256 {actual}, not the pinned "
                                  f"{sha256}{where}")
    state, extras = _read_file(path)
    extras["path"] = path
    if hub.is_transformers_state_dict(state):
        state = hub.from_transformers_state_dict(state)
        extras["format"] = "transformers"
    return state, extras


def read_weights(source: str | os.PathLike, sha256: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """``read_state_dict`` plus what else the file says: ``args`` (an official checkpoint's argparse values as a
    dict), ``format`` ("transformers" when the names were converted), ``path`` (the file read)."""
    return _read(source, sha256)


def read_state_dict(source: str | os.PathLike, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """Read a state dict from a .safetensors or .pth/.pt file, a folder, or a URL (cached), under our names.

    ``.pth`` files are read with ``weights_only=True``; the only non-tensor object allowed is the
    ``argparse.Namespace`` that official MAE checkpoints keep under ``args``. A top-level ``model`` (MAE) or
    ``state_dict`` entry is unwrapped. A folder stands for its ``model.safetensors`` (a checkpoint ``step_N``, an
    export) or ``encoder.safetensors``; transformers ViT-MAE / ViT weights are renamed to ours. ``sha256`` pins
    the file's hash: checked on every read, also for a cached download; a URL can carry its pin as
    ``#sha256=<hex>`` (pip's convention), so ``--init_from`` pins without another flag.
    """
    return _read(source, sha256)[0]


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
    """The ``MODEL_ARCHS`` name whose encoder has the patch size, width and depth of ``state``, if one does."""
    patch_embed = state.get("patch_embed.proj.weight")
    if patch_embed is None or patch_embed.ndim != 4:
        return None
    depth = len({key.split(".")[1] for key in state if key.startswith("blocks.")})
    shape = (patch_embed.shape[-1], patch_embed.shape[0], depth)
    return next((name for name, a in MODEL_ARCHS.items()
                 if (a["patch_size"], a["embed_dim"], a["depth"]) == shape), None)


def describe_misfit(state: dict[str, torch.Tensor], missing: list[str], unexpected: list[str],
                    mismatched: list[str], shown: int = 4) -> str:
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
    return fit_state_dict(model, read_state_dict(source, sha256=sha256), redact_url(str(source)), log=log)


def fit_state_dict(model: nn.Module, state: dict[str, torch.Tensor], label: str,
                   log: Callable[[str], object] | None = print) -> str | None:
    """``load_pretrained`` for a state dict already read; ``label`` names its source in messages."""
    state = dict(state)
    own = model.state_dict()
    for key in FIXED_POS_EMBEDS:
        if key in state and key in own and state[key].shape != own[key].shape:
            state[key] = own[key]
    missing, unexpected, mismatched = fit_report(state, own)
    decoder_keys = sorted(k for k in own if k.startswith(DECODER_PREFIXES))
    encoder_only = bool(missing) and missing == decoder_keys and not unexpected and not mismatched
    if (missing and not encoder_only) or unexpected or mismatched:
        raise CheckpointError(f"weights in {label} do not fit the model "
                              f"({describe_misfit(state, missing, unexpected, mismatched)})")
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
    has_decoder = any(k.startswith(DECODER_PREFIXES) for k in state)
    encoder = {k: v for k, v in state.items() if not k.startswith(DECODER_PREFIXES)}
    info = {**info, "has_decoder": has_decoder}
    metadata = {"format": "pt", "endovit": json.dumps({"model": info.get("model", ""), "step": info.get("step")})}
    names = [n for n in EXPORT_FILES if has_decoder or n != "model.safetensors"]
    stale = [] if has_decoder else [out_dir / "model.safetensors"]
    if hub_folders:
        names += list(HUB_FILES)
    else:
        stale += [out_dir / name for name in HUB_FILES]  # would hold older weights than the files beside them
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
        "recipe": {k: redact_url(v) if isinstance(v, str) else v for k, v in recipe.to_dict().items()},
    }
