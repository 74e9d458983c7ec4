"""Several frame sources trained as one (Endo700k-style), with optional per-source sampling weights.

Sources are concatenated in the order given. Without weights every frame is seen once per epoch, in a
shuffled order (one unweighted source is the plain case). With weights, each epoch draws a fixed number of
frames from every source, proportional to its weight (largest-remainder rounding), as whole random passes
over the source plus a random part of one more; the draws are shuffled together. Everything comes from a
generator seeded by (seed, epoch) alone, and the sampler yields ``(epoch, index, draw)`` keys into the
concatenation, so augmentation stays seeded by (seed, epoch, index, draw) and a resumed run is exact. The
epoch length is always the total number of frames, so steps per epoch do not depend on the weights.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import torch
from torch.utils.data import Sampler

from endovit.data.transforms import sample_seed
from endovit.errors import DataError

if TYPE_CHECKING:
    import datasets

__all__ = ["Source", "SourceMix", "MixSampler", "combine_sources"]


@dataclass
class Source:
    """One named source of frames (a dataset folder, a prepared dataset, or a Cholec80 split of one)."""

    name: str
    frames: datasets.Dataset
    origin: str  # where the frames came from, for the run log
    stats: dict | None = None  # per-video channel sums from the prepared dataset's manifest (stats.py), if any


@dataclass(frozen=True)
class SourceMix:
    """Sizes and weights of the concatenated sources, and the per-epoch draws they imply."""

    names: tuple[str, ...]
    sizes: tuple[int, ...]
    weights: tuple[float, ...] | None = None

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def offsets(self) -> tuple[int, ...]:
        starts, position = [], 0
        for size in self.sizes:
            starts.append(position)
            position += size
        return tuple(starts)

    @property
    def draws(self) -> tuple[int, ...]:
        """Frames drawn from each source per epoch; they always add up to ``total``."""
        if self.weights is None:
            return self.sizes
        weights = [Fraction(w).limit_denominator(10**6) for w in self.weights]
        quotas = [self.total * w / sum(weights) for w in weights]
        draws = [int(q) for q in quotas]
        by_remainder = sorted(range(len(quotas)), key=lambda i: (-(quotas[i] - draws[i]), i))
        for i in by_remainder[:self.total - sum(draws)]:
            draws[i] += 1
        return tuple(draws)

    def summary(self, role: str = "train") -> str:
        """One line per source: frames, weight and draws per epoch (the run log)."""
        width = max(len(n) for n in self.names)
        lines = [f"{role} data: {len(self.names)} source(s), {self.total} frames"]
        for i, (name, size, draws) in enumerate(zip(self.names, self.sizes, self.draws, strict=True)):
            line = f"  {name:<{width}}  {size:>9} frames"
            if self.weights is not None:
                line += f"  weight {self.weights[i]:g}  ->  {draws:>9} per epoch ({draws / size:.2f}x)"
            lines.append(line)
        return "\n".join(lines)


def combine_sources(sources: Sequence[Source], weights: Sequence[float] | None = None
                    ) -> tuple[datasets.Dataset, SourceMix]:
    """Concatenate the sources' ``image`` columns (memory-mapped, no copy) and describe the mix."""
    if not sources:
        raise DataError("no training sources selected")
    if weights is not None and len(weights) != len(sources):
        raise DataError(f"--source_weights has {len(weights)} values for {len(sources)} sources; give one per source")
    import datasets

    parts = [s.frames.select_columns(["image"]) for s in sources]
    frames = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
    mix = SourceMix(tuple(s.name for s in sources), tuple(len(s.frames) for s in sources),
                    tuple(float(w) for w in weights) if weights is not None else None)
    return frames, mix


class MixSampler(Sampler):
    """Yields ``(epoch, index, draw)`` for the draws of one epoch; depends only on (seed, epoch).

    ``draw`` numbers the passes over a source drawn more often than its size, so repeats get new crops. Without
    ``reshuffle`` every epoch draws epoch 0's order (and picks), while its keys still carry the epoch (new crops)."""

    def __init__(self, mix: SourceMix, seed: int, reshuffle: bool = True):
        self.mix = mix
        self.seed = seed
        self.reshuffle = reshuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.mix.total

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        generator = torch.Generator().manual_seed(sample_seed(self.seed, self.epoch if self.reshuffle else 0))
        parts, pass_numbers = [], []
        for offset, size, draws in zip(self.mix.offsets, self.mix.sizes, self.mix.draws, strict=True):
            passes, rest = divmod(draws, size)
            picks = [torch.randperm(size, generator=generator) for _ in range(passes)]
            if rest:
                picks.append(torch.randperm(size, generator=generator)[:rest])
            for number, pick in enumerate(picks):
                parts.append(pick + offset)
                pass_numbers.append(torch.full_like(pick, number))
        shuffle = torch.randperm(sum(len(p) for p in parts), generator=generator)
        indices, draws = torch.cat(parts)[shuffle].tolist(), torch.cat(pass_numbers)[shuffle].tolist()
        return iter((self.epoch, i, d) for i, d in zip(indices, draws, strict=True))
