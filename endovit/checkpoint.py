"""Training-state folders: atomic save through accelerate, a manifest of sizes, resume choice, pruning."""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

from accelerate.utils import broadcast_object_list, gather_object
from accelerate.utils.other import load as load_weights_only

from endovit.errors import CheckpointError, first_line
from endovit.hub import write_guard_config
from endovit.io import atomic_write_text

__all__ = [
    "checkpoint_dirs",
    "latest_checkpoint",
    "is_complete_checkpoint",
    "prune_checkpoints",
    "checkpoint_name",
    "CHECKPOINT_PREFIX",
    "temporary_checkpoint_dir",
    "TrainProgress",
    "check_resumable",
    "save_training_state",
    "load_training_state",
    "checkpoint_storage_shared",
    "node_manifest",
    "resolve_resume",
]

CHECKPOINT_PREFIX = "step_"
CHECKPOINT_MANIFEST = "endovit_checkpoint.json"
MANIFEST_REQUIRES = ("model.safetensors", "random_states_")  # a manifest without these describes no checkpoint


def node_manifest(accelerator, storage_shared: bool) -> str:
    """The manifest this process's machine seals and trusts: the main one on shared storage; on node-local
    storage each machine's own (``endovit_checkpoint.rankR.json``, R its first process), so machines syncing
    into one S3 prefix never overwrite each other's file lists."""
    first = accelerator.process_index - accelerator.local_process_index
    return CHECKPOINT_MANIFEST if storage_shared or first == 0 else f"endovit_checkpoint.rank{first}.json"


def checkpoint_name(step: int) -> str:
    return f"{CHECKPOINT_PREFIX}{step:08d}"


def _write_manifest(folder: Path, run: dict, manifest: str) -> None:
    """Record every file's size and the run's signature; written last, so a matching manifest means a whole folder
    (other machines' manifests are not part of this one's)."""
    sizes = {p.name: p.stat().st_size for p in sorted(folder.iterdir())
             if p.is_file() and not p.name.startswith("endovit_checkpoint")}
    atomic_write_text(folder / manifest, json.dumps({"files": sizes, "run": run}, indent=1) + "\n")


def is_complete_checkpoint(folder: Path, manifest: str = CHECKPOINT_MANIFEST) -> bool:
    """True when the manifest exists and every file it lists has its recorded size.

    Guards against folders that were only partly copied back, e.g. restored from S3 after a spot
    interruption cut their upload short.
    """
    try:
        sizes = json.loads((folder / manifest).read_text())["files"]
        has_state = all(any(name.startswith(required) for name in sizes) for required in MANIFEST_REQUIRES)
        return has_state and all((folder / name).stat().st_size == size for name, size in sizes.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_resumable(folder: Path, run: dict, manifest: str = CHECKPOINT_MANIFEST) -> None:
    """Refuse to resume a checkpoint written by a run that differs in what resuming depends on."""
    saved = json.loads((folder / manifest).read_text())["run"]
    changed = [f"{key}: {saved.get(key)!r} then, {value!r} now"
               for key, value in run.items() if saved.get(key) != value]
    if changed:
        raise CheckpointError(f"cannot resume from {folder}: the run changed ({'; '.join(changed)}); restore those "
                              "settings or start a new --output_dir")


def checkpoint_dirs(root: str | os.PathLike, manifest: str = CHECKPOINT_MANIFEST) -> list[Path]:
    """Complete checkpoint folders under ``root``, oldest first (temporary or partial folders are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir()
             if p.is_dir() and re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", p.name) and is_complete_checkpoint(p, manifest)]
    return sorted(found, key=_step_of)


def latest_checkpoint(root: str | os.PathLike, manifest: str = CHECKPOINT_MANIFEST) -> Path | None:
    dirs = checkpoint_dirs(root, manifest)
    return dirs[-1] if dirs else None


def prune_checkpoints(root: str | os.PathLike, keep: int, manifest: str = CHECKPOINT_MANIFEST) -> None:
    """Delete all but the newest ``keep`` checkpoints, and leftovers of interrupted saves."""
    root = Path(root)
    for old in checkpoint_dirs(root, manifest)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(f".tmp-{CHECKPOINT_PREFIX}*"):
        shutil.rmtree(leftover, ignore_errors=True)


def temporary_checkpoint_dir(root: str | os.PathLike, step: int) -> Path:
    """Where a checkpoint is written before the rename that marks it complete."""
    return Path(root) / f".tmp-{checkpoint_name(step)}"


class TrainProgress:
    """Counters saved inside every training checkpoint as ``progress.json`` (never a pickle)."""

    FILE = "progress.json"

    def __init__(self):
        self.step = 0
        self.best_val_loss = float("inf")
        self.best_probe = float("-inf")  # the best value so far of the recipe's probe_best_metric

    def save(self, folder: Path) -> None:
        state = {"step": self.step, "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
                 "best_probe": self.best_probe if math.isfinite(self.best_probe) else None}
        atomic_write_text(folder / self.FILE, json.dumps(state) + "\n")

    def load(self, folder: Path) -> None:
        try:
            state = json.loads((folder / self.FILE).read_text())
            self.step = int(state["step"])
            self.best_val_loss = float("inf") if state["best_val_loss"] is None else float(state["best_val_loss"])
            best_probe = state.get("best_probe")  # absent from checkpoints written before best_probe/ existed
            self.best_probe = float("-inf") if best_probe is None else float(best_probe)
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise CheckpointError(f"{folder / self.FILE}: unreadable training progress ({err}); resume from "
                                  "another checkpoint") from None


def save_training_state(accelerator, root: str | os.PathLike, step: int, *, keep: int, run: dict,
                        write_extra: Callable[[Path], None] | None = None, storage_shared: bool = True) -> Path:
    """``accelerator.save_state`` into a temporary folder, then rename it complete; keep the newest ``keep``.

    Every process writes its own RNG state, so all of them call this. A process killed mid-save
    leaves only a ``.tmp-`` folder, which ``latest_checkpoint`` never returns. ``run`` (what resuming
    depends on: model, sizes, seed, steps per epoch, ...) goes into the manifest. The main process seals and
    renames the folder after ``write_extra(folder)`` has added what accelerate does not save; then, where a
    node's checkpoint folder is its own disk (not shared), that node's local main process seals its part too.
    """
    root = Path(root)
    tmp = temporary_checkpoint_dir(root, step)
    final = root / checkpoint_name(step)
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(tmp))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if write_extra is not None:
                write_extra(tmp)
            _seal(tmp, final, root, keep, run, CHECKPOINT_MANIFEST)
        accelerator.wait_for_everyone()
        if accelerator.is_local_main_process and not accelerator.is_main_process and not storage_shared:
            if write_extra is not None:
                write_extra(tmp)
            _seal(tmp, final, root, keep, run, node_manifest(accelerator, storage_shared))
    except Exception as err:  # a full disk shows as OSError, safetensors' or torch's own error
        shutil.rmtree(tmp, ignore_errors=True)  # half a checkpoint would only take the space the next one needs
        last = latest_checkpoint(root)
        size = sum(f.stat().st_size for f in last.rglob("*") if f.is_file()) / 1e9 if last else 0.0
        why = getattr(err, "strerror", None) or str(err).strip().splitlines()[-1]
        need = f"; {keep} checkpoints of {size:.1f} GB plus the one being written must fit" if last else ""
        raise CheckpointError(f"cannot save checkpoint {final.name} in {root}: {why}{need} (free space there, lower "
                              "--keep_checkpoints or choose another --checkpoint_dir), then --resume auto") from None
    accelerator.wait_for_everyone()
    return final


def checkpoint_storage_shared(accelerator, root: str | os.PathLike) -> bool:
    """Whether every machine of the run sees the same ``root`` (a shared disk), or each has its own.

    Where each has its own (node-local disks, e.g. several SageMaker instances), every machine must write
    the whole checkpoint (accelerate's ``save_on_each_node``), or only the first would hold the weights.
    """
    if accelerator.num_processes == 1:
        return True
    root = Path(root)
    probe = root / f".shared-probe-{broadcast_object_list([uuid.uuid4().hex])[0]}"
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        probe.touch()
    accelerator.wait_for_everyone()
    seen = gather_object([probe.exists()])
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        probe.unlink(missing_ok=True)
    return all(seen)


def _seal(tmp: Path, final: Path, root: Path, keep: int, run: dict, manifest: str) -> None:
    write_guard_config(tmp)  # transformers/timm pointed at step_N fail clearly instead of loading random weights
    _write_manifest(tmp, run, manifest)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    prune_checkpoints(root, keep, manifest)


# What a training checkpoint may hold: accelerate's files (all read with weights_only=True) and ours (JSON and
# safetensors). Anything else, above all accelerate's custom_checkpoint_N.pkl (read with weights_only=False), is
# refused rather than loaded.
ALLOWED_FILES = re.compile(r"^(model(_\d+)?\.safetensors|optimizer(_\d+)?\.bin|random_states_\d+\.pkl|scaler\.pt"
                           r"|progress\.json|swa_model\.safetensors|config\.json|endovit_checkpoint(\.rank\d+)?\.json)$")
REQUIRED_FILES = ("model.safetensors", "optimizer.bin", TrainProgress.FILE)


def load_training_state(accelerator, folder: Path, progress: TrainProgress) -> None:
    """``accelerator.load_state`` plus our progress counters, after checking that the folder holds only files
    that load without unpickling code. This process's RNG file is read first on its own: accelerate would
    skip one it cannot read with a log line, and the run would silently stop being reproducible."""
    names = sorted(p.name for p in Path(folder).iterdir())
    unexpected = [n for n in names if not ALLOWED_FILES.match(n)]
    if unexpected:
        raise CheckpointError(f"{folder} holds {unexpected[0]}, which an endovit checkpoint never has (and which "
                              "could run code when loaded); resume from a checkpoint this project wrote")
    rng_file = f"random_states_{accelerator.process_index}.pkl"
    missing = [n for n in (*REQUIRED_FILES, rng_file) if n not in names]
    if missing:
        raise CheckpointError(f"{folder} lacks {missing[0]}; resume from a complete checkpoint")
    try:
        load_weights_only(Path(folder) / rng_file)
        accelerator.load_state(str(folder))
    except Exception as err:  # noqa: BLE001 - unpickling errors come in many types
        raise CheckpointError(f"cannot load the training state in {folder}: {first_line(err)}") from None
    progress.load(folder)


def resolve_resume(resume: str, root: str | os.PathLike, manifest: str = CHECKPOINT_MANIFEST) -> Path | None:
    """``none`` -> None; ``auto`` -> newest complete checkpoint under ``root`` (or None); else that folder."""
    if resume == "none":
        return None
    if resume == "auto":
        return latest_checkpoint(root, manifest)
    path = Path(resume)
    if not is_complete_checkpoint(path, manifest):
        raise CheckpointError(f"--resume {resume}: not a complete checkpoint folder (no {CHECKPOINT_MANIFEST} "
                              "matching its files); use --resume auto to take the newest complete one")
    step = _step_of(path)
    newer = [p.name for p in checkpoint_dirs(root, manifest) if step is not None and _step_of(p) > step]
    if newer:
        raise CheckpointError(f"--resume {resume}: {root} holds newer checkpoints ({', '.join(newer)}), which the "
                              "resumed run would prune and --resume auto would later pick instead of its own; move "
                              "them out of the folder, or resume into a new --output_dir")
    return path


def _step_of(folder: Path) -> int | None:
    """The step of a folder named ``step_NNNNNNNN``, else None."""
    name = Path(folder).name
    return int(name[len(CHECKPOINT_PREFIX):]) if re.fullmatch(rf"{CHECKPOINT_PREFIX}\d+", name) else None
