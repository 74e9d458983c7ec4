"""What is fast on this machine: every ``auto`` setting of a recipe resolved in one place, each with its reason."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

__all__ = ["bf16_supported", "resolve_mixed_precision", "resolve_torch_compile", "resolve_trackers", "Resolved",
           "resolve_settings"]


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast is fast here: a CUDA GPU with bf16, or a CPU with AMX or AVX512-BF16."""
    if device.type == "cuda":
        with torch.cuda.device(device):
            return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        cpu = torch.cpu
        return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                    or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    return False


def resolve_mixed_precision(setting: str, device: torch.device) -> tuple[str, str]:
    """``auto`` -> ``bf16`` where the hardware runs it natively, else ``no``; explicit settings pass through."""
    if setting != "auto":
        return setting, "set explicitly"
    if bf16_supported(device):
        return "bf16", f"auto: native bf16 on {device.type}"
    return "no", f"auto: no native bf16 on {device.type}"


def resolve_torch_compile(setting: str, device: torch.device) -> tuple[bool, str]:
    """``auto`` -> compile on CUDA only (on CPU it gained nothing measurable for a minute of compiling)."""
    if setting != "auto":
        return setting == "true", "set explicitly"
    return device.type == "cuda", f"auto: {'on' if device.type == 'cuda' else 'off'} for {device.type}"


def resolve_trackers(report_to: str) -> list[str]:
    """``tensorboard,wandb`` -> ``["tensorboard", "wandb"]``; ``none`` -> ``[]``."""
    return [t.strip() for t in report_to.split(",") if t.strip() and t.strip() != "none"]


@dataclass(frozen=True)
class Resolved:
    """The recipe's ``auto`` settings as this run uses them; ``notes`` says why, one entry per setting."""

    mixed_precision: str
    torch_compile: bool
    trackers: list[str]
    notes: dict[str, str]

    def without_compile(self, why: str) -> Resolved:
        return dataclasses.replace(self, torch_compile=False, notes={**self.notes, "compile": f"off ({why})"})

    def summary(self) -> str:
        return "; ".join(f"{key} {value}" for key, value in self.notes.items())


def resolve_settings(recipe, device: torch.device) -> Resolved:
    """Resolve ``mixed_precision``, ``torch_compile`` and ``report_to`` of ``recipe`` for ``device``."""
    precision, precision_why = resolve_mixed_precision(recipe.mixed_precision, device)
    compile_on, compile_why = resolve_torch_compile(recipe.torch_compile, device)
    return Resolved(precision, compile_on, resolve_trackers(recipe.report_to),
                    {"precision": f"{precision} ({precision_why})",
                     "compile": f"{'on' if compile_on else 'off'} ({compile_why})"})
