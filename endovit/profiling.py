"""Where a training step's time goes: a ``torch.profiler`` run of a few steps, its kernels (on CUDA) or operators
(on CPUs) summed into buckets, and the rest of the step's wall time as idle."""
from __future__ import annotations

import time

import torch

__all__ = ["BUCKETS", "bucket_of", "profile_buckets"]

BUCKETS = ("gemm", "attention", "triton_elementwise", "optimizer", "copies", "other", "idle")

# first match wins: attention kernels can hold "gemm" in their names, fused optimizers "copy"
_RULES = (
    ("attention", ("flash", "fmha", "attention", "sdpa", "softmax")),
    ("optimizer", ("adam", "foreach", "multi_tensor", "optimizer")),
    ("gemm", ("gemm", "cutlass", "nvjet", "xmma", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
              "matmul", "aten::linear", "_conv", "conv2d", "wgrad", "dgrad")),
    ("copies", ("memcpy", "memset", "copy", "aten::to", "aten::cat", "aten::gather", "aten::index")),
    ("triton_elementwise", ("triton_",)),
)


def bucket_of(name: str) -> str:
    """The bucket of one kernel or operator name."""
    lowered = name.lower()
    for bucket, needles in _RULES:
        if any(n in lowered for n in needles):
            return bucket
    return "other"


def profile_buckets(step, next_batch, device: torch.device, steps: int = 1) -> dict:
    """Profile ``steps`` calls of ``step(next_batch())``: milliseconds per step in each of ``BUCKETS`` (device
    kernels on CUDA, operators' self time on CPUs; idle = wall time not covered by them) and the top entries."""
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    if cuda:
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        for _ in range(steps):
            step(next_batch())
        if cuda:
            torch.cuda.synchronize(device)
        wall_us = (time.perf_counter() - start) * 1e6
    wanted = torch.autograd.DeviceType.CUDA if cuda else torch.autograd.DeviceType.CPU
    totals = dict.fromkeys(BUCKETS, 0.0)
    entries = []
    for event in prof.key_averages():
        if event.device_type != wanted:
            continue
        if cuda:
            us = getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)
        else:
            us = event.self_cpu_time_total
        if not cuda and not event.key.startswith("aten::"):
            continue  # profiler ranges (ProfilerStep, autograd nodes, module names) would count their children twice
        totals[bucket_of(event.key)] += us
        entries.append((us, event.key))
    busy = sum(totals.values())
    totals["idle"] = max(wall_us - busy, 0.0)
    per_step = {k: round(v / steps / 1000, 3) for k, v in totals.items()}
    share = {k: round(v / max(wall_us, 1e-9), 4) for k, v in totals.items()}
    top = [{"name": name[:120], "bucket": bucket_of(name), "ms_per_step": round(us / steps / 1000, 3)}
           for us, name in sorted(entries, reverse=True)[:15]]
    return {"steps": steps, "wall_ms_per_step": round(wall_us / steps / 1000, 3), "ms_per_step": per_step,
            "share": share, "top": top, "source": "CUDA kernels" if cuda else "CPU operators (self time)"}
