"""Frames in, batches out: loading through ``datasets``, EndoViT transforms, DataLoaders, prepared datasets,
Cholec80 splits, source mixing and channel statistics.

Names are imported on first use (PEP 562): ``from endovit.data import CHOLEC80_SPLITS`` or
``import endovit.data.splits`` loads neither ``datasets`` nor ``torch``; ``build_train_loader`` loads what
it needs when it is first asked for. The data layer never imports the recipe or the model.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from endovit.errors import DataError

if TYPE_CHECKING:
    from endovit.data.frames import decode_image, load_frames
    from endovit.data.loader import build_train_loader, build_val_loader
    from endovit.data.mixing import MixSampler, Source, SourceMix, combine_sources
    from endovit.data.prepare import PrepareSettings, prepare_frames
    from endovit.data.sources import load_run_data, resolve_sources
    from endovit.data.splits import CHOLEC80_SPLITS, check_split_name, select_split
    from endovit.data.stats import channel_sums, compute_and_store_stats, pooled_stats
    from endovit.data.transforms import EvalTransform, TrainTransform, denormalize, normalize

_HOMES = {
    "frames": ("decode_image", "load_frames"),
    "loader": ("build_train_loader", "build_val_loader"),
    "mixing": ("MixSampler", "Source", "SourceMix", "combine_sources"),
    "prepare": ("PrepareSettings", "prepare_frames"),
    "sources": ("load_run_data", "resolve_sources"),
    "splits": ("CHOLEC80_SPLITS", "check_split_name", "select_split"),
    "stats": ("channel_sums", "compute_and_store_stats", "pooled_stats"),
    "transforms": ("EvalTransform", "TrainTransform", "denormalize", "normalize"),
}
_MODULE_OF = {name: module for module, names in _HOMES.items() for name in names}

__all__ = [  # spelled out for linters and readers; _HOMES says where each name lives
    "DataError", "decode_image", "load_frames", "build_train_loader", "build_val_loader", "MixSampler", "Source",
    "SourceMix", "combine_sources", "PrepareSettings", "prepare_frames", "load_run_data", "resolve_sources",
    "CHOLEC80_SPLITS", "check_split_name", "select_split", "channel_sums", "compute_and_store_stats",
    "pooled_stats", "EvalTransform", "TrainTransform", "denormalize", "normalize",
]


def __getattr__(name: str):
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
