"""DataLoaders for pretraining: reproducible augmentation and fixed validation order.

Training augmentation is drawn from a generator seeded by (seed, epoch, sample index, draw), carried
by the sampler as ``(epoch, index, draw)`` keys (``draw`` counts repeats of a frame within an epoch,
which weighted mixing makes). This makes a resumed run see exactly the crops of an unbroken one, whatever
the number of DataLoader workers and even with persistent workers (which never see an epoch counter
changed in the main process).
"""
from __future__ import annotations

import atexit
import multiprocessing
import signal
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader, Dataset

from endovit.data.frames import decode_image
from endovit.data.mixing import MixSampler, SourceMix
from endovit.data.transforms import EvalTransform, TrainTransform, sample_seed

if TYPE_CHECKING:
    import datasets

__all__ = ["TrainFrames", "ValFrames", "build_train_loader", "build_val_loader"]


class TrainFrames(Dataset):
    """Decodes and augments one frame per ``(epoch, index, draw)`` key; returns uint8 pixels.

    ``__getitems__`` fetches a whole batch of rows in one ``datasets`` call, so the per-sample Python
    cost is the decode and crop alone. With a ``fast`` transform a JPEG is also decoded at a reduced DCT
    scale when even the smallest possible crop stays at least the output size (``TrainTransform.draft_size``).
    """

    def __init__(self, frames: datasets.Dataset, transform: TrainTransform, seed: int):
        self.frames = frames.select_columns(["image"])
        self.transform = transform
        self.seed = seed
        self.draft = transform.draft_size if transform.fast else None

    def __len__(self) -> int:
        return len(self.frames)

    def __getitems__(self, keys: list[tuple[int, int, int]]) -> list[dict]:
        items = self.frames[[index for _, index, _ in keys]]["image"]
        samples = []
        for (epoch, index, draw), item in zip(keys, items, strict=True):
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index, draw))
            image = decode_image(item, self.draft)
            samples.append({"pixels": self.transform(image, generator), "index": index})
        return samples

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        return self.__getitems__([key])[0]


def _ignore_stop_signals(_worker_id: int) -> None:
    """Workers leave SIGINT/SIGTERM to the main process, which finishes its step and saves (a Ctrl-C or a
    ``kill`` of the process group reaches them too; a worker that died of it would turn a clean stop into a
    crash, and with several processes into a hang)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


@atexit.register  # why at import: must be registered after multiprocessing's hook, so that it runs before it
def _end_workers_at_exit() -> None:
    """Workers ignore SIGTERM, which is how multiprocessing ends daemon processes at exit: end them here
    (registered after multiprocessing's own exit hook, so it runs first). torch's SIGCHLD handler, which would
    report each ended worker as a failure, is switched off first."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


def _loader_options(num_workers: int) -> dict:
    options = {"num_workers": num_workers, "pin_memory": torch.cuda.is_available()}
    if num_workers > 0:
        options.update(persistent_workers=True, prefetch_factor=2, worker_init_fn=_ignore_stop_signals)
    return options


def build_train_loader(frames: datasets.Dataset, *, img_size, crop_scale, batch_size: int, seed: int,
                       num_workers: int, mix: SourceMix | None = None, fast_decode: bool = False) -> DataLoader:
    """Shuffled, augmented, ``drop_last`` loader of per-process micro-batches (call ``sampler.set_epoch``).

    ``mix`` (from ``combine_sources``) says how the sources are drawn each epoch; without it, ``frames`` is one
    source seen once per epoch. ``fast_decode`` selects the fast decode and resize path (see ``transforms``),
    otherwise PIL exactly as EndoViT.
    """
    transform = TrainTransform(tuple(img_size), tuple(crop_scale), fast=fast_decode)
    dataset = TrainFrames(frames, transform, seed)
    sampler = MixSampler(mix or SourceMix(("frames",), (len(dataset),)), seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
                      **_loader_options(num_workers))


class ValFrames(Dataset):
    """Decodes and resizes frame ``index``; each item carries its index (for its fixed mask)."""

    def __init__(self, frames: datasets.Dataset, transform: EvalTransform):
        self.frames = frames.select_columns(["image"])
        self.transform = transform

    def __len__(self) -> int:
        return len(self.frames)

    def __getitems__(self, indices: list[int]) -> list[dict]:
        items = self.frames[list(indices)]["image"]
        return [{"pixels": self.transform(decode_image(item)), "index": index}
                for index, item in zip(indices, items, strict=True)]

    def __getitem__(self, index: int) -> dict:
        return self.__getitems__([index])[0]


def build_val_loader(frames: datasets.Dataset, img_size, batch_size: int, num_workers: int) -> DataLoader:
    """Validation in a fixed order; each item carries its index (for its fixed mask)."""
    return DataLoader(ValFrames(frames, EvalTransform(tuple(img_size))), batch_size=batch_size, shuffle=False,
                      **_loader_options(num_workers))
