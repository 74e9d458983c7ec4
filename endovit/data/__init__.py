"""Frames in, batches out: loading through ``datasets``, EndoViT transforms, DataLoaders."""
from endovit.data.frames import DataError, decode_image, load_frames
from endovit.data.loader import EpochSampler, build_train_loader, build_val_loader
from endovit.data.transforms import EvalTransform, TrainTransform, denormalize, normalize

__all__ = [
    "DataError",
    "decode_image",
    "load_frames",
    "EpochSampler",
    "build_train_loader",
    "build_val_loader",
    "EvalTransform",
    "TrainTransform",
    "denormalize",
    "normalize",
]
