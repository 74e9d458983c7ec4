"""DataLoaders for pretraining: reproducible augmentation and fixed validation order.

Training augmentation is drawn from a generator seeded by (seed, epoch, sample index), carried
by the sampler as ``(epoch, index)`` keys. This makes a resumed run see exactly the crops of an
unbroken one, whatever the number of DataLoader workers and even with persistent workers (which
never see an epoch counter changed in the main process).
"""
from __future__ import annotations

from typing import Iterator

import datasets
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from endovit.data.frames import decode_image
from endovit.data.transforms import EvalTransform, TrainTransform, sample_seed

__all__ = ["EpochSampler", "TrainFrames", "build_train_loader", "build_val_loader"]


class EpochSampler(Sampler):
    """Yields ``(epoch, index)`` in a permutation that depends only on (seed, epoch)."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True):
        self.num_samples = num_samples
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[tuple[int, int]]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_samples, generator=generator).tolist()
        else:
            order = range(self.num_samples)
        return iter((self.epoch, i) for i in order)


class TrainFrames(Dataset):
    """Decodes and augments one frame per ``(epoch, index)`` key; returns uint8 pixels."""

    def __init__(self, frames: datasets.Dataset, transform: TrainTransform, seed: int):
        self.frames = frames.select_columns(["image"])
        self.transform = transform
        self.seed = seed

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        epoch, index = key
        generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
        image = decode_image(self.frames[index]["image"])
        return {"pixels": self.transform(image, generator), "index": index}


def _loader_options(num_workers: int) -> dict:
    options = {"num_workers": num_workers, "pin_memory": torch.cuda.is_available()}
    if num_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=4)
    return options


def build_train_loader(frames: datasets.Dataset, img_size, crop_scale, batch_size: int, seed: int,
                       num_workers: int) -> DataLoader:
    """Shuffled, augmented, ``drop_last`` loader of per-process micro-batches (call ``sampler.set_epoch``)."""
    dataset = TrainFrames(frames, TrainTransform(tuple(img_size), tuple(crop_scale)), seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed),
        drop_last=True,
        **_loader_options(num_workers),
    )


def build_val_loader(frames: datasets.Dataset, img_size, batch_size: int, num_workers: int) -> DataLoader:
    """Validation in a fixed order; each item carries its index (for its fixed mask)."""
    transform = EvalTransform(tuple(img_size))

    def to_pixels(batch: dict) -> dict:
        return {"pixels": [transform(decode_image(item)) for item in batch["image"]], "index": batch["index"]}

    indexed = frames.select_columns(["image"]).add_column("index", list(range(len(frames))))
    return DataLoader(indexed.with_transform(to_pixels), batch_size=batch_size, shuffle=False,
                      **_loader_options(num_workers))
