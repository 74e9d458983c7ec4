"""What is fast on this machine: every ``auto`` setting of a recipe resolved in one place, each with its reason."""
from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from endovit.errors import RecipeError, did_you_mean
from endovit.io import atomic_write_json

__all__ = ["bf16_supported", "resolve_mixed_precision", "resolve_torch_compile", "cgroup_cpu_limit",
           "available_cores", "resolve_num_workers", "compile_threads", "apply_tf32", "cpu_name", "faster_precision",
           "time_cpu_precisions", "measured_cpu_precision", "resolve_trackers", "Resolved", "resolve_settings"]


def bf16_supported(device: torch.device) -> bool:
    """The CUDA GPU runs bf16 natively (emulated bf16 does not count)."""
    if device.type != "cuda":
        return False
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def resolve_mixed_precision(setting: str, device: torch.device,
                            measure_cpu: Callable[[], tuple[str, str]] | None = None,
                            origin: str = "set explicitly") -> tuple[str, str]:
    """``auto`` -> what is fast on ``device``; explicit settings pass through. Returns (precision, reason).

    CUDA: bf16 where the GPU runs it natively, else fp16 (with accelerate's GradScaler), as EndoViT ran on
    V100s. CPU: ``measure_cpu()`` times the step in both precisions (the same flags can mean either: bf16 was 1.8x
    slower on a Xeon with AVX512-BF16 alone, 1.6x faster on an AMD EPYC with them); without it, bf16 only with AMX.
    """
    if setting != "auto":
        return setting, origin
    if device.type == "cuda":
        if bf16_supported(device):
            return "bf16", "auto: the GPU runs bf16 natively"
        return "fp16", "auto: no native bf16 on this GPU, fp16 with loss scaling"
    if device.type == "cpu" and measure_cpu is not None:
        return measure_cpu()
    if device.type == "cpu" and getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "bf16", "auto: the CPU has AMX"
    return "no", f"auto: fp32 on {device.type}"


def cpu_name() -> str:
    """The CPU's model and the flags that decide bf16 speed, e.g. ``AMD EPYC [avx512_bf16]``."""
    model = platform.processor() or platform.machine()
    try:
        info = Path("/proc/cpuinfo").read_text()
        model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                     model)
    except OSError:
        info = ""
    flags = sorted({f for f in ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f") if f" {f}" in info})
    return f"{model} [{' '.join(flags)}]"


def faster_precision(seconds: dict[str, float]) -> str:
    """``bf16`` when it is at least 10% faster than fp32 (``no``), else ``no`` (fp32 numerics at about equal speed).
    Where bf16 helps on a CPU it helps a lot (1.7x with AMX, 1.6x on an AMD EPYC), and where it hurts it hurts a
    lot (1.8x slower on a Xeon with AVX512-BF16 alone), so the margin costs nothing and keeps a noisy measurement
    from flipping the choice."""
    return "bf16" if seconds["bf16"] < 0.9 * seconds["no"] else "no"


def time_cpu_precisions(model_name: str, img_size, batch_size: int, rounds: int = 3) -> dict[str, float]:
    """Fastest of ``rounds`` forward/backward passes of a fresh ``model_name`` on random frames in fp32 and under
    bf16 autocast, interleaved (the minimum and the interleaving keep other work on the machine from deciding).
    Runs inside ``fork_rng``: the caller's random state is untouched."""
    from endovit.models.mae import create_mae

    with torch.random.fork_rng():
        torch.manual_seed(0)
        mae = create_mae(model_name, img_size=tuple(img_size))
        images = torch.randn(batch_size, 3, *img_size)
        noise = torch.rand(batch_size, mae.num_patches)

        def seconds_of(precision: str) -> float:
            start = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                loss = mae(images, 0.75, noise)[0]
            loss.backward()
            mae.zero_grad(set_to_none=True)
            return time.perf_counter() - start

        seconds_of("no"), seconds_of("bf16")  # warm-up: allocator, kernels
        times = [(seconds_of("no"), seconds_of("bf16")) for _ in range(rounds)]
    return {"no": min(t[0] for t in times), "bf16": min(t[1] for t in times)}


def measured_cpu_precision(model_name: str, img_size, micro_batch: int) -> tuple[str, str]:
    """Choose fp32 or bf16 for this CPU, model, size and thread count by timing both once; cached per machine."""
    key = f"{cpu_name()}|torch {torch.__version__}|{torch.get_num_threads()} threads|{model_name}|{list(img_size)}"
    cache = Path(torch.hub.get_dir()).parent / "endovit" / "cpu_precision_v2.json"
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    if key not in known:
        known[key] = time_cpu_precisions(model_name, img_size, max(1, min(micro_batch, 4)))
        try:
            atomic_write_json(cache, known)
        except OSError:
            pass
    seconds = known[key]
    choice = faster_precision(seconds)
    return choice, (f"auto: measured on this CPU, fp32 {seconds['no'] * 1000:.0f} ms vs bf16 "
                    f"{seconds['bf16'] * 1000:.0f} ms per step of {model_name}")


def resolve_torch_compile(setting: str, device: torch.device) -> tuple[bool, str]:
    """``auto`` -> compile on CUDA only (on CPU it gained nothing measurable for a minute of compiling)."""
    if setting != "auto":
        return setting == "true", "set explicitly"
    return device.type == "cuda", f"auto: {'on' if device.type == 'cuda' else 'off'} for {device.type}"


def cgroup_cpu_limit(root: str | os.PathLike = "/sys/fs/cgroup") -> int | None:
    """CPUs a cgroup quota allows this process (``docker run --cpus``, Kubernetes limits), rounded up; None when
    there is no quota. Reads cgroup v2 ``cpu.max`` (this process's group, then the root) or v1's CFS files."""
    root = Path(root)
    try:
        groups = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        groups = []
    own = next((Path(line[3:].lstrip("/")) for line in groups if line.startswith("0::")), Path())
    for folder in dict.fromkeys((root / own, root)):
        try:
            quota, period = (folder / "cpu.max").read_text().split()[:2]
        except (OSError, ValueError):
            continue
        return None if quota == "max" else max(1, -(-int(quota) // int(period)))
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota <= 0 or period <= 0 else max(1, -(-quota // period))


def available_cores() -> int:
    """CPU cores this process may use: its CPU affinity, capped by a cgroup quota."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return min(cores, limit) if limit else cores


def resolve_num_workers(setting, local_processes: int) -> tuple[int, str]:
    """``auto`` -> the cores this process may use, shared by the processes of this machine, less one core for each
    process itself (which feeds its device), at most 16 and at least 1."""
    if setting != "auto":
        return int(setting), "set explicitly"
    cores, processes = available_cores(), max(1, local_processes)
    return (max(1, min(16, cores // processes - 1)),
            f"auto: {cores} cores / {processes} process(es), one core each kept for the process")


def compile_threads(local_processes: int) -> int:
    """Inductor compile workers per process, so that all processes of a machine share its cores."""
    return max(1, available_cores() // max(1, local_processes))


def apply_tf32(enabled: bool, device: torch.device) -> None:
    """TF32 tensor cores for fp32 matmuls on CUDA (an fp32 run on A100/H100 is otherwise several times slower)."""
    if device.type != "cuda":
        return
    if hasattr(torch.backends.cuda.matmul, "fp32_precision"):  # torch >= 2.9; mixing with allow_tf32 is an error
        torch.backends.cuda.matmul.fp32_precision = torch.backends.cudnn.conv.fp32_precision = (
            "tf32" if enabled else "ieee")
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = enabled


def resolve_trackers(report_to: str) -> list[str]:
    """``tensorboard,wandb`` -> ``["tensorboard", "wandb"]``; ``none`` -> ``[]``. A tracker accelerate does not know,
    or whose package is not installed, is refused (accelerate would only warn, and nothing would be logged)."""
    import accelerate.utils
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS

    trackers = [t.strip() for t in report_to.split(",") if t.strip() and t.strip() != "none"]
    for name in trackers:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise RecipeError(f"--report_to {report_to}: unknown tracker {name!r}"
                              f"{did_you_mean(name, LOGGER_TYPE_TO_CLASS)}; choose from none, "
                              f"{', '.join(LOGGER_TYPE_TO_CLASS)}")
        if not getattr(accelerate.utils, f"is_{name}_available", lambda: True)():
            raise RecipeError(f"--report_to {report_to}: {name} is not installed here; pip install {name}, or log "
                              "to tensorboard")
    return trackers


@dataclass(frozen=True)
class Resolved:
    """The recipe's ``auto`` settings as this run uses them; ``notes`` says why, one entry per setting."""

    mixed_precision: str
    torch_compile: bool
    trackers: list[str]
    num_workers: int
    notes: dict[str, str]

    def without_compile(self, why: str) -> Resolved:
        return dataclasses.replace(self, torch_compile=False, notes={**self.notes, "compile": f"off ({why})"})

    def summary(self) -> str:
        return "; ".join(f"{key} {value}" for key, value in self.notes.items())


def resolve_settings(recipe, device: torch.device, local_processes: int = 1,
                     measure_cpu: Callable[[], tuple[str, str]] | None = None) -> Resolved:
    """Resolve ``mixed_precision``, ``torch_compile``, ``num_workers`` and ``report_to`` of ``recipe`` for
    ``device`` and the number of processes on this machine (``measure_cpu``: see ``resolve_mixed_precision``)."""
    precision, precision_why = resolve_mixed_precision(
        recipe.mixed_precision, device, measure_cpu, f"from the {recipe.origin.get('mixed_precision', 'default')}")
    compile_on, compile_why = resolve_torch_compile(recipe.torch_compile, device)
    workers, workers_why = resolve_num_workers(recipe.num_workers, local_processes)
    return Resolved(precision, compile_on, resolve_trackers(recipe.report_to), workers,
                    {"precision": f"{precision} ({precision_why})",
                     "compile": f"{'on' if compile_on else 'off'} ({compile_why})",
                     "workers": f"{workers} ({workers_why})"})
