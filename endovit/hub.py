"""Hub-style folders beside every export, for timm and for Hugging Face transformers.

An export folder (the run's output root, ``best/``, ``swa/``, or what ``scripts/export.py`` writes) holds::

    model.safetensors          full MAE, our keys (encoder + decoder)
    encoder.safetensors        encoder only, timm VisionTransformer keys
    endovit_config.json        run facts (architecture, image size, mean/std, recipe)
    config.json                transformers: ViT-MAE config that loads transformers/model.safetensors;
                               timm: refuses the folder with a message naming timm/
    preprocessor_config.json   transformers image processor (size, mean/std, bicubic)
    timm/                      config.json + model.safetensors: timm.create_model("local-dir:...")
    transformers/              config.json + model.safetensors + preprocessor_config.json:
                               ViTMAEForPreTraining / ViTMAEModel / ViTModel .from_pretrained

Writing needs only torch, safetensors, json and timm; transformers is needed only to load the folders.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import torch

from endovit.errors import CheckpointError
from endovit.io import link_or_copy
from endovit.models.archs import is_decoder_key

__all__ = [
    "TIMM_DIR",
    "TRANSFORMERS_DIR",
    "NOT_A_MODEL",
    "timm_data_config",
    "write_timm_folder",
    "write_transformers_folder",
    "transformers_config",
    "preprocessor_config",
    "root_config",
    "guard_config",
    "write_guard_config",
    "to_transformers_state_dict",
    "from_transformers_state_dict",
    "is_transformers_state_dict",
]

TIMM_DIR = "timm"
TRANSFORMERS_DIR = "transformers"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
NOT_A_MODEL = "NOT-A-MODEL-FOLDER"

# One transformer block: our (timm) names -> transformers' ViT names (the layout the Hub's ViT-MAE
# checkpoints use; transformers 5 renames them to its own module names when it loads them).
_BLOCK_TO_HF = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}
_TOP_TO_HF = {
    "cls_token": "vit.embeddings.cls_token",
    "pos_embed": "vit.embeddings.position_embeddings",
    "patch_embed.proj.weight": "vit.embeddings.patch_embeddings.projection.weight",
    "patch_embed.proj.bias": "vit.embeddings.patch_embeddings.projection.bias",
    "norm.weight": "vit.layernorm.weight",
    "norm.bias": "vit.layernorm.bias",
    "mask_token": "decoder.mask_token",
    "decoder_pos_embed": "decoder.decoder_pos_embed",
    "decoder_embed.weight": "decoder.decoder_embed.weight",
    "decoder_embed.bias": "decoder.decoder_embed.bias",
    "decoder_norm.weight": "decoder.decoder_norm.weight",
    "decoder_norm.bias": "decoder.decoder_norm.bias",
    "decoder_pred.weight": "decoder.decoder_pred.weight",
    "decoder_pred.bias": "decoder.decoder_pred.bias",
}
_QKV = ("query", "key", "value")


def _size(info: dict) -> tuple[int, int]:
    height, width = info["img_size"]
    return int(height), int(width)


def _note(info: dict) -> str:
    step = info.get("step")
    return f"EndoViT MAE pretraining ({info.get('model', '?')}{'' if step is None else f', step {step}'})"


# --------------------------------------------------------------------------------------------- timm


def timm_data_config(info: dict) -> dict:
    """The run's preprocessing as timm's data config: size, mean/std, bicubic, squash resize without crop.

    EndoViT validates on ``Resize((H, W))`` bicubic frames; timm's eval transform with ``crop_mode='squash'`` and
    ``crop_pct=1.0`` is that resize.
    """
    height, width = _size(info)
    return {
        "input_size": (int(info.get("architecture", {}).get("in_chans", 3)), height, width),
        "interpolation": "bicubic",
        "crop_pct": 1.0,
        "crop_mode": "squash",
        "mean": tuple(float(m) for m in info["mean"]),
        "std": tuple(float(s) for s in info["std"]),
    }


def write_timm_folder(folder: str | os.PathLike, encoder_state: dict[str, torch.Tensor], info: dict,
                      weights_file: str | os.PathLike | None = None) -> Path:
    """Write timm's Hub layout (``config.json`` + ``model.safetensors``) into ``folder``.

    The config comes from timm's own ``save_config_for_hf`` for the run's timm encoder built at the run's image
    size (``model_args.img_size``) with ``num_classes=0``, with the run's mean/std/size/interpolation as
    ``pretrained_cfg``; ``timm.create_model("local-dir:<folder>", pretrained=True)`` and ``hf-hub:<repo>`` of the
    same files rebuild the model with the right preprocessing. Only ``save_config_for_hf``'s arguments that every
    timm since 1.0.16 (the first with ``local-dir:``) takes are used; the preprocessing is written here, so the
    folder is the same whichever timm wrote it. ``weights_file``: an ``encoder.safetensors`` already written
    (hard-linked instead of written again).
    """
    import timm
    from safetensors.torch import save_file
    from timm.models._hub import save_config_for_hf

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    name = info["timm_model"]
    height, width = _size(info)
    model = timm.create_model(name, pretrained=False, img_size=(height, width), num_classes=0)
    try:
        model.load_state_dict(encoder_state, strict=True, assign=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise CheckpointError(f"the encoder does not fit timm's {name} at {height}x{width}: "
                              f"{' '.join(line.strip() for line in first[:3])}") from err
    data_config = timm_data_config(info)
    model_args = {"img_size": [height, width], "num_classes": 0, "in_chans": data_config["input_size"][0],
                  "global_pool": model.global_pool}
    save_config_for_hf(model, folder / CONFIG_NAME, model_args=model_args)
    config = json.loads((folder / CONFIG_NAME).read_text())
    pretrained_cfg = config["pretrained_cfg"]
    # the default tag's licence and test-time sizes describe timm's weights, not this run's
    for key in ("license", "test_input_size", "test_crop_pct", "test_pool_size"):
        pretrained_cfg.pop(key, None)
    if (height, width) != tuple(model.pretrained_cfg["input_size"][1:]):
        pretrained_cfg["pool_size"] = None
    pretrained_cfg.update({key: list(value) if isinstance(value, tuple) else value
                           for key, value in data_config.items()})
    pretrained_cfg.update(tag="endovit", num_classes=0, custom_load=False)  # a native timm state dict
    config["endovit"] = _note(info)
    # transformers reads config.json too: a ViT/ViT-MAE class pointed here would build a default model and leave
    # every weight random; this value fails its config validation instead (timm ignores the key).
    config["hidden_size"] = (f"{NOT_A_MODEL}: a timm folder; load it with timm.create_model('local-dir:<folder>'); "
                             f"transformers' ViT-MAE folder is ../{TRANSFORMERS_DIR}")
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    if weights_file is not None:
        link_or_copy(Path(weights_file), folder / WEIGHTS_NAME)
    else:
        save_file({k: v.detach().cpu().contiguous() for k, v in encoder_state.items()}, str(folder / WEIGHTS_NAME),
                  metadata={"format": "pt"})
    return folder


# --------------------------------------------------------------------------------------- transformers


def transformers_config(info: dict, mask_ratio: float | None = None) -> dict:
    """``config.json`` of transformers' ``ViTMAEConfig`` for the run's architecture (written by hand: no import).

    Non-square image sizes are written as ``[H, W]``: ``ViTMAEModel``/``ViTModel`` load and run them;
    transformers' ``ViTMAEForPreTraining`` assumes square images (see ``check_transformers_pretraining``).
    """
    arch = info["architecture"]
    height, width = _size(info)
    mlp_ratio = float(arch.get("mlp_ratio", 4.0))
    recipe = info.get("recipe") or {}
    if mask_ratio is None:
        mask_ratio = float(recipe.get("mask_ratio", 0.75))
    return {
        "architectures": ["ViTMAEForPreTraining" if info.get("has_decoder", True) else "ViTMAEModel"],
        "model_type": "vit_mae",
        "hidden_size": int(arch["embed_dim"]),
        "num_hidden_layers": int(arch["depth"]),
        "num_attention_heads": int(arch["num_heads"]),
        "intermediate_size": int(arch["embed_dim"] * mlp_ratio),
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "initializer_range": 0.02,
        "layer_norm_eps": 1e-6,
        "image_size": height if height == width else [height, width],
        "patch_size": int(arch["patch_size"]),
        "num_channels": int(arch.get("in_chans", 3)),
        "qkv_bias": True,
        "decoder_num_attention_heads": int(arch["decoder_num_heads"]),
        "decoder_hidden_size": int(arch["decoder_embed_dim"]),
        "decoder_num_hidden_layers": int(arch["decoder_depth"]),
        "decoder_intermediate_size": int(arch["decoder_embed_dim"] * mlp_ratio),
        "mask_ratio": float(mask_ratio),
        "norm_pix_loss": bool(arch.get("norm_pix_loss", False)),
        "dtype": "float32",
        "endovit": _note(info),
    }


def preprocessor_config(info: dict) -> dict:
    """transformers' ``ViTImageProcessor`` settings: resize to the run's (H, W) bicubic, scale to [0, 1], mean/std."""
    height, width = _size(info)
    return {
        "image_processor_type": "ViTImageProcessor",
        "do_resize": True,
        "size": {"height": height, "width": width},
        "resample": 3,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "image_mean": [float(m) for m in info["mean"]],
        "image_std": [float(s) for s in info["std"]],
    }


def write_transformers_folder(folder: str | os.PathLike, state: dict[str, torch.Tensor], info: dict) -> Path:
    """Write transformers' layout into ``folder``: ``model.safetensors`` (Hub ViT-MAE names), ``config.json``,
    ``preprocessor_config.json``. ``state``: our MAE state dict, full or encoder-only (then ``ViTMAEModel``)."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    has_decoder = any(is_decoder_key(k) for k in state)
    tensors = {k: v.detach().cpu().contiguous() for k, v in to_transformers_state_dict(state).items()}
    save_file(tensors, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    config = transformers_config({**info, "has_decoder": has_decoder})
    config["architecture"] = _timm_refusal(
        f"a transformers folder; for timm use local-dir:<export folder>/{TIMM_DIR}")
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    (folder / PREPROCESSOR_NAME).write_text(json.dumps(preprocessor_config(info), indent=2) + "\n")
    return folder


def _timm_refusal(where: str) -> str:
    """A timm ``architecture`` that no registry has: ``create_model`` fails with ``Unknown model (<this>)``."""
    return f"{NOT_A_MODEL}: {where}"


def root_config(info: dict) -> dict:
    """``config.json`` for an export folder itself.

    transformers (5.x) follows ``transformers_weights`` to ``transformers/model.safetensors``, so
    ``ViTMAEForPreTraining.from_pretrained(<export>)`` gets the right weights instead of a random model built
    from our ``model.safetensors`` (whose names transformers does not know). timm reads the same file and
    stops with ``Unknown model (NOT-A-MODEL-FOLDER: ... use local-dir:<export>/timm)``.
    """
    config = transformers_config(info)
    config["transformers_weights"] = f"{TRANSFORMERS_DIR}/{WEIGHTS_NAME}"
    config["architecture"] = _timm_refusal(
        f"this is an EndoViT export folder; for timm use local-dir:<this folder>/{TIMM_DIR}")
    return config


def guard_config(what: str = "an EndoViT training-state folder",
                 hint: str = "write loadable folders with scripts/export.py") -> dict:
    """``config.json`` for a folder that holds our weights but is not a model folder (e.g. ``checkpoints/step_N``).

    Without it ``ViTMAEForPreTraining.from_pretrained(<folder>)`` finds ``model.safetensors``, builds a default
    ViT-MAE-Base and silently leaves every weight random. With it transformers refuses the config (the value
    of ``hidden_size`` is this message, so its validation error shows it) and timm stops with
    ``Unknown model (NOT-A-MODEL-FOLDER: ...)``.
    """
    message = f"{NOT_A_MODEL}: {what}; {hint}"
    # why these keys: each is the first one its loader validates, so the message is what a user reads
    return {"model_type": "vit_mae", "architecture": message, "hidden_size": message,
            "transformers_weights": f"{NOT_A_MODEL}.safetensors", "endovit": message}


def write_guard_config(folder: str | os.PathLike, what: str = "an EndoViT training-state folder",
                       hint: str = "write loadable folders with scripts/export.py") -> Path:
    """Write ``guard_config`` as ``<folder>/config.json`` (atomic, mode 0644); returns its path."""
    from endovit.io import atomic_write_text

    path = Path(folder) / CONFIG_NAME
    atomic_write_text(path, json.dumps(guard_config(what, hint), indent=2) + "\n")
    return path


def to_transformers_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our MAE state dict (full or encoder-only) under transformers' ViT-MAE names; qkv split into q, k, v."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key in _TOP_TO_HF:
            out[_TOP_TO_HF[key]] = value
            continue
        match = re.fullmatch(r"(blocks|decoder_blocks)\.(\d+)\.(.+)\.(weight|bias)", key)
        if not match:
            raise CheckpointError(f"no transformers name for weight {key!r}")
        stack, index, inner, kind = match.groups()
        prefix = f"vit.encoder.layer.{index}" if stack == "blocks" else f"decoder.decoder_layers.{index}"
        if inner == "attn.qkv":
            for name, part in zip(_QKV, value.chunk(3, dim=0), strict=True):
                out[f"{prefix}.attention.attention.{name}.{kind}"] = part
        elif inner in _BLOCK_TO_HF:
            out[f"{prefix}.{_BLOCK_TO_HF[inner]}.{kind}"] = value
        else:
            raise CheckpointError(f"no transformers name for weight {key!r}")
    return out


# transformers 5 module names -> the Hub layout (applied first when reading a transformers checkpoint)
_HF5_TO_HUB = [
    (r"^(vit\.)?layers\.(\d+)\.", r"\1encoder.layer.\2."),
    (r"\.attention\.q_proj\.", ".attention.attention.query."),
    (r"\.attention\.k_proj\.", ".attention.attention.key."),
    (r"\.attention\.v_proj\.", ".attention.attention.value."),
    (r"\.attention\.o_proj\.", ".attention.output.dense."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
]
_HF_TOP_TO_OURS = {v: k for k, v in _TOP_TO_HF.items()}
_HF_BLOCK_TO_OURS = {v: k for k, v in _BLOCK_TO_HF.items()}


def is_transformers_state_dict(state: dict) -> bool:
    return any(k.startswith(("vit.", "decoder.decoder", "embeddings.patch_embeddings", "encoder.layer.", "layers."))
               for k in state)


def from_transformers_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A transformers ViT-MAE (``ViTMAEForPreTraining``/``ViTMAEModel``) or ``ViTModel`` state dict under our names.

    Accepts the Hub layout and transformers 5's module names; drops ``ViTModel``'s pooler. Unknown names raise.
    """
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        hub = key
        if not hub.startswith(("vit.", "decoder.")):
            hub = "vit." + hub  # a ViTMAEModel / ViTModel saved on its own has no "vit." prefix
        for pattern, repl in _HF5_TO_HUB:
            hub = re.sub(pattern, repl, hub)
        if hub.startswith("vit.pooler."):
            continue
        if hub in _HF_TOP_TO_OURS:
            out[_HF_TOP_TO_OURS[hub]] = value
            continue
        match = re.fullmatch(r"(vit\.encoder\.layer|decoder\.decoder_layers)\.(\d+)\.(.+)\.(weight|bias)", hub)
        if not match:
            raise CheckpointError(f"unknown transformers weight {key!r} (expected a ViT-MAE or ViT checkpoint)")
        stack, index, inner, kind = match.groups()
        ours = f"{'blocks' if stack.startswith('vit') else 'decoder_blocks'}.{index}"
        if inner.startswith("attention.attention.") and inner.rsplit(".", 1)[1] in _QKV:
            qkv.setdefault((ours, kind), {})[inner.rsplit(".", 1)[1]] = value
        elif inner in _HF_BLOCK_TO_OURS:
            out[f"{ours}.{_HF_BLOCK_TO_OURS[inner]}.{kind}"] = value
        else:
            raise CheckpointError(f"unknown transformers weight {key!r} (expected a ViT-MAE or ViT checkpoint)")
    for (ours, kind), parts in qkv.items():
        if set(parts) != set(_QKV):
            raise CheckpointError(f"transformers checkpoint lacks {', '.join(sorted(set(_QKV) - set(parts)))} "
                                  f"for {ours}")
        out[f"{ours}.attn.qkv.{kind}"] = torch.cat([parts[name] for name in _QKV], dim=0)
    return out
