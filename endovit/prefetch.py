"""Host-to-device copies of the next batch off the critical path."""
from __future__ import annotations

import torch

__all__ = ["to_device", "prefetched"]


def to_device(batch, device: torch.device, non_blocking: bool = False):
    """``batch`` (a tensor, or dicts / lists / tuples of them) with every tensor on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return {k: to_device(v, device, non_blocking) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(to_device(v, device, non_blocking) for v in batch)
    return batch


def _record_stream(batch, stream) -> None:
    if isinstance(batch, torch.Tensor):
        batch.record_stream(stream)
    elif isinstance(batch, dict):
        for value in batch.values():
            _record_stream(value, stream)
    elif isinstance(batch, (list, tuple)):
        for value in batch:
            _record_stream(value, stream)


def prefetched(batches, device: torch.device):
    """Yield the batches of ``batches`` on ``device``, in order. On CUDA the copy of batch i+1 is issued on a side
    stream while the caller computes on batch i (host tensors should be pinned for the copy to overlap); the
    compute stream waits for that copy only when it takes the batch. Elsewhere the batches are moved in turn."""
    iterator = iter(batches)
    if device.type != "cuda":
        for batch in iterator:
            yield to_device(batch, device)
        return
    copy_stream = torch.cuda.Stream(device)

    def issue(batch):
        with torch.cuda.stream(copy_stream):
            return to_device(batch, device, non_blocking=True)

    pending = next(iterator, None)
    pending = None if pending is None else issue(pending)
    while pending is not None:
        compute = torch.cuda.current_stream(device)
        compute.wait_stream(copy_stream)
        _record_stream(pending, compute)  # the caching allocator must not reuse this memory before compute is done
        ready = pending
        following = next(iterator, None)
        pending = None if following is None else issue(following)
        yield ready
