"""Frames in, batches out: loading through ``datasets``, EndoViT transforms, DataLoaders, prepared datasets,
Cholec80 splits, source mixing and channel statistics."""
from endovit.data.frames import decode_image, load_frames
from endovit.data.loader import build_train_loader, build_val_loader
from endovit.data.mixing import MixSampler, Source, SourceMix, combine_sources
from endovit.data.prepare import PrepareSettings, prepare_frames
from endovit.data.sources import load_run_data, resolve_sources
from endovit.data.splits import CHOLEC80_SPLITS, select_split
from endovit.data.stats import channel_sums, compute_and_store_stats, pooled_stats
from endovit.data.transforms import EvalTransform, TrainTransform, denormalize, normalize
from endovit.errors import DataError

__all__ = [
    "DataError",
    "decode_image",
    "load_frames",
    "build_train_loader",
    "build_val_loader",
    "MixSampler",
    "Source",
    "SourceMix",
    "combine_sources",
    "PrepareSettings",
    "prepare_frames",
    "load_run_data",
    "resolve_sources",
    "CHOLEC80_SPLITS",
    "select_split",
    "channel_sums",
    "compute_and_store_stats",
    "pooled_stats",
    "EvalTransform",
    "TrainTransform",
    "denormalize",
    "normalize",
]
