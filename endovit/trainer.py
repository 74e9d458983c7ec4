"""One pretraining run set up from a recipe: accelerator, data, model, optimizer, loaders, resume (MAE's
``main_pretrain.py`` set-up). ``endovit.engine.train`` then runs its step loop."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import (
    DataLoaderConfiguration,
    DDPCommunicationHookType,
    DistributedDataParallelKwargs,
    DynamoBackend,
    ProjectConfiguration,
    broadcast_object_list,
    set_seed,
)
from filelock import FileLock, Timeout
from torch.optim.swa_utils import AveragedModel

from endovit.checkpoint import TrainProgress, checkpoint_storage_shared, latest_checkpoint
from endovit.data import build_train_loader, build_val_loader
from endovit.data.sources import RunData, load_run_data
from endovit.engine import compile_model, compile_trial, compiled_graphs, sdpa_active
from endovit.errors import DataError, RecipeError
from endovit.export import RUN_LOCK
from endovit.hardware import Resolved, apply_tf32, compile_threads, measured_cpu_precision, resolve_settings
from endovit.io import atomic_write_text, redact_url
from endovit.models.mae import MaskedAutoencoderViT, create_mae
from endovit.optim import build_optimizer, lr_at_step, param_groups
from endovit.probes import Probe, ProbeSettings, build_probe, metric_names
from endovit.probes.metrics import score_names
from endovit.recipe import Recipe
from endovit.saver import Saver
from endovit.swa import best_swa_counts
from endovit.validation import picture_batch
from endovit.weights import load_pretrained

__all__ = ["Schedule", "Run", "load_data", "process_state", "build_run", "start_logging"]


@dataclass(frozen=True)
class Schedule:
    """Steps of the run: the schedule's end (``total_steps``) and where this invocation stops (``last_step``)."""

    recipe: Recipe
    steps_per_epoch: int

    @property
    def total_steps(self) -> int:
        return self.recipe.epochs * self.steps_per_epoch

    @property
    def last_step(self) -> int:
        return min(self.total_steps, self.recipe.stop_at_step or self.total_steps)

    def lr_at(self, step: int, lr_scale: float = 1.0) -> float:
        """The lr of a group with ``lr_scale`` before optimizer step ``step`` (0-based)."""
        r = self.recipe
        return lr_at_step(step=step, steps_per_epoch=self.steps_per_epoch, lr=r.peak_lr, min_lr=r.min_lr,
                          epochs=r.epochs, warmup_epochs=r.warmup_epochs, swa=r.swa, swa_start_epoch=r.swa_start_epoch,
                          swa_lr=r.swa_lr, swa_every_steps=r.swa_every_steps, swa_schedule=r.swa_schedule,
                          lr_scale=lr_scale)

    def swa_update_due(self, step: int) -> bool:
        """SWA averages every ``swa_every_steps`` and at each epoch's end, from ``swa_start_epoch`` on."""
        epoch = (step - 1) // self.steps_per_epoch
        epoch_step = step - epoch * self.steps_per_epoch
        return epoch >= self.recipe.swa_start_epoch and (
            epoch_step % self.recipe.swa_every_steps == 0 or epoch_step == self.steps_per_epoch)

    def swa_average_before(self, step: int) -> bool:
        """Whether the weights after ``step`` steps enter the average before optimizer step ``step`` runs (EndoViT's
        order: the average never holds the weights of an averaging step itself)."""
        return self.recipe.swa_schedule == "endovit" and self.swa_update_due(step + 1)

    def swa_average_after(self, step: int) -> bool:
        """Whether the weights after optimizer step ``step`` enter the average (the smooth schedule's order)."""
        return self.recipe.swa_schedule != "endovit" and self.swa_update_due(step)

    def val_due(self, step: int) -> bool:
        """Validate after ``step`` steps: every ``val_every_steps`` of the run (``global``) or of each epoch plus at
        each epoch's end (``epoch``, EndoViT's); always at the schedule's end."""
        every = self.recipe.val_every_steps
        if self.recipe.val_schedule == "epoch":
            epoch_step = step - (step - 1) // self.steps_per_epoch * self.steps_per_epoch
            return epoch_step % every == 0 or epoch_step == self.steps_per_epoch
        return step % every == 0 or step == self.total_steps

    def best_swa_counts(self, step: int) -> bool:
        """Whether a validation after ``step`` steps may make ``best_swa/`` (``best_swa_from_epoch`` on)."""
        return best_swa_counts(step=step, steps_per_epoch=self.steps_per_epoch,
                               best_swa_from_epoch=self.recipe.best_swa_from_epoch)


@dataclass
class Run:
    """Everything the step loop needs; ``model`` runs the step (wrapped, maybe compiled), ``mae`` is the module."""

    recipe: Recipe
    accelerator: Accelerator
    settings: Resolved
    data: RunData
    mae: MaskedAutoencoderViT
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    train_loader: torch.utils.data.DataLoader
    val_loader: torch.utils.data.DataLoader | None
    schedule: Schedule
    mean: torch.Tensor  # (1, 3, 1, 1) on the device, built once
    std: torch.Tensor
    saver: Saver  # writes what the run leaves behind; handed the model, progress and pictures it writes
    progress: TrainProgress  # the optimizer steps done and the bests so far: the Run's, saved by the saver
    swa_model: AveragedModel | None = None
    compile_seconds: float = 0.0
    probe: Probe | None = None  # frozen-feature probe on labelled frames, when the recipe has probe_data
    started: float = dataclasses.field(default_factory=time.perf_counter)  # when build_run began
    graphs_after_trial: int = 0  # torch.compile graphs built by the compile trial; more later = recompiles
    lock: FileLock | None = None  # held on the output folder for the run's lifetime (main process)
    latest: dict[str, float] = dataclasses.field(default_factory=dict)  # newest logged metrics, for HParams
    hparams: dict = dataclasses.field(default_factory=dict)  # the recipe as TensorBoard's HParams show it

    def close(self) -> None:
        """End the trackers and free the output folder for another run."""
        self.accelerator.end_training()
        if self.lock is not None:
            self.lock.release()

    def summary(self) -> str:
        r, a = self.recipe, self.accelerator
        val = len(self.data.val) if self.data.val is not None else 0
        return (f"{len(self.data.train)} training frames, {val} validation frames; {a.num_processes} process(es) "
                f"x {r.grad_accum_steps} accumulation x {r.micro_batch_size(a.num_processes)} = batch "
                f"{r.batch_size}; {self.schedule.steps_per_epoch} steps/epoch, {self.schedule.total_steps} steps; "
                f"lr {r.peak_lr:.3g}; {self.settings.summary()}; fused attention {sdpa_active(self.mae)}")


def load_data(recipe: Recipe, log=print) -> RunData:
    """The recipe's training and validation frames (``endovit.data.load_run_data``)."""
    return load_run_data(recipe.train_data, recipe.val_data, train_sources=recipe.train_sources,
                         val_sources=recipe.val_sources, source_weights=recipe.source_weights,
                         stats_from_data=recipe.stats_from_data, train_split=recipe.train_split,
                         val_split=recipe.val_split, log=log)


def process_state(recipe: Recipe) -> PartialState:
    """The process group, created once with the recipe's timeout (an ``InitProcessGroupKwargs`` given to a later
    ``Accelerator`` would be ignored); CPU processes form a gloo group on machines without an accelerator."""
    return PartialState(cpu=not torch.accelerator.is_available(), timeout=timedelta(seconds=recipe.dist_timeout))


def _accelerator(recipe: Recipe) -> tuple[Accelerator, Resolved]:
    """The process group, then the accelerator, with every ``auto`` setting resolved for the device."""
    process = process_state(recipe)
    settings = resolve_settings(recipe, process.device, _local_processes(process),
                                measure_cpu=lambda: _measured_on_main(process, recipe))
    apply_tf32(recipe.tf32, process.device)
    handlers = []
    if recipe.ddp_comm_hook != "none":
        handlers.append(DistributedDataParallelKwargs(comm_hook=DDPCommunicationHookType(recipe.ddp_comm_hook)))
    accelerator = Accelerator(
        gradient_accumulation_steps=recipe.grad_accum_steps,
        mixed_precision=settings.mixed_precision,
        dataloader_config=DataLoaderConfiguration(non_blocking=process.device.type == "cuda"),
        log_with=settings.trackers or None,
        project_config=ProjectConfiguration(project_dir=recipe.output_dir,
                                            logging_dir=str(recipe.logging_path.parent)),
        kwargs_handlers=handlers,
    )
    if accelerator.state.dynamo_plugin.backend != DynamoBackend.NO:
        settings = settings.without_compile("accelerate's dynamo config compiles the model already")
    if settings.torch_compile:
        import torch._inductor.config as inductor_config

        inductor_config.compile_threads = compile_threads(_local_processes(process))
    accelerator.project_configuration.save_on_each_node = not checkpoint_storage_shared(accelerator,
                                                                                          recipe.checkpoints_path)
    return accelerator, settings


def _measured_on_main(process: PartialState, recipe: Recipe) -> tuple[str, str]:
    """The CPU precision measured by the main process, the same for every process."""
    choice = [None]
    if process.is_main_process:
        choice = [measured_cpu_precision(recipe.model, recipe.img_size, recipe.micro_batch_size(process.num_processes))]
    return tuple(broadcast_object_list(choice)[0]) if process.num_processes > 1 else choice[0]


def _local_processes(process: PartialState) -> int:
    """Processes on this machine: one per accelerator (all of them on CPU-only machines)."""
    if process.device.type == "cpu":
        return process.num_processes
    return max(1, min(process.num_processes, torch.accelerator.device_count()))


def _lock_path(output_path: Path, lock_dir: Path | None) -> Path:
    """The run's lock: ``<output_dir>/.endovit.lock``, or one file per output folder in ``lock_dir`` (a SageMaker
    job's model folder becomes ``model.tar.gz``, and a lock has no business there)."""
    if lock_dir is None:
        return output_path / RUN_LOCK
    return lock_dir / f"{hashlib.sha256(str(output_path.resolve()).encode()).hexdigest()[:16]}.lock"


def _lock_output(recipe: Recipe, accelerator: Accelerator, lock_dir: Path | None) -> tuple[FileLock | None, bool]:
    """Hold the run's lock (:func:`_lock_path`) for its lifetime, so a second run on the same folder stops before
    it writes anything (the OS releases the lock when the process ends, however it ends); returns the lock (main
    process) and whether this call created the output folder."""
    lock, created = None, False
    taken = [True]
    problem = [None]
    if accelerator.is_main_process:
        problem = [next((f"{flag} {path}: {why}; give a folder this run may write" for flag, path in (
            ("--output_dir", recipe.output_path), ("--checkpoint_dir", recipe.checkpoints_path),
            ("--logging_dir", recipe.logging_path)) if (why := _unwritable(path))), None)]
    problem = broadcast_object_list(problem)[0]
    if problem:  # found before any step is trained, not at the first save
        raise RecipeError(problem)
    path = _lock_path(recipe.output_path, lock_dir)
    if accelerator.is_main_process:
        created = not recipe.output_path.exists()
        recipe.output_path.mkdir(parents=True, exist_ok=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(path), is_singleton=True)  # re-entrant in one process
        try:
            lock.acquire(timeout=0)
        except Timeout:
            taken = [False]
    if not broadcast_object_list(taken)[0]:
        _free_output(None, recipe.output_path if created else None)
        raise RecipeError(f"--output_dir {recipe.output_dir} is in use by another run (it holds {path}); wait for it "
                          "to end or choose another --output_dir")
    return lock, created


def _free_output(lock: FileLock | None, folder: Path | None) -> None:
    """A run refused while setting up: release its lock, and remove ``folder`` (the output folder it created) if that
    still holds only the lock, or nothing (e.g. a bad --resume), so nothing half-made is left behind."""
    if lock is not None:
        lock.release()
    if folder is None:
        return
    with contextlib.suppress(OSError):
        if [p.name for p in folder.iterdir()] in ([RUN_LOCK], []):
            (folder / RUN_LOCK).unlink(missing_ok=True)
            folder.rmdir()


def _unwritable(path: Path) -> str | None:
    """Why a folder cannot be created or written at ``path`` (its nearest existing part decides), else None."""
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        return "is a file, not a folder" if existing == path else f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return "is not writable" if existing == path else f"{existing} is not writable"
    return None


def _model(recipe: Recipe, accelerator: Accelerator) -> MaskedAutoencoderViT:
    mae = create_mae(recipe.model, img_size=tuple(recipe.img_size), norm_pix_loss=recipe.norm_pix_loss)
    if recipe.init_from:
        with accelerator.local_main_process_first():
            load_pretrained(mae, recipe.init_from, log=accelerator.print)
    mae.set_grad_checkpointing(recipe.grad_checkpointing)
    return mae


def build_run(recipe: Recipe, *, lock_dir: Path | None = None) -> Run:
    """Set up everything for ``engine.train``; resumes from a checkpoint when the recipe says so. ``lock_dir``: where
    the run's lock goes instead of its output folder."""
    started = time.perf_counter()
    accelerator, settings = _accelerator(recipe)
    set_seed(recipe.seed)
    micro_batch = recipe.micro_batch_size(accelerator.num_processes)
    # data: the recipe's frames; stored stats replace mean/std in a new recipe (the parsed one never changes)
    data = load_data(recipe, accelerator.print)
    if data.stats:
        recipe = dataclasses.replace(recipe, mean=data.stats[0], std=data.stats[1])
    if len(data.train) < micro_batch * accelerator.num_processes * recipe.grad_accum_steps:
        raise DataError(f"--train_data {recipe.train_data} has {len(data.train)} frames, fewer than one batch of "
                        f"{recipe.batch_size}; lower --batch_size or add frames")
    # the output folder: ours alone from here on, and no other run's checkpoints in it unless we resume
    lock, created = _lock_output(recipe, accelerator, lock_dir)
    with contextlib.ExitStack() as refused:  # refused from here on: free the folder (remove it if unused)
        refused.callback(_free_output, lock, recipe.output_path if created else None)
        if recipe.resume == "none" and latest_checkpoint(recipe.checkpoints_path):
            raise RecipeError(f"--checkpoint_dir {recipe.checkpoints_path} already holds checkpoints; pass --resume "
                              "auto to continue or choose another --output_dir")
        # model, optimizer, loaders, wrapped by accelerate; compiled where that is fast
        mae = _model(recipe, accelerator)
        optimizer = build_optimizer(param_groups(mae, recipe.weight_decay, recipe.layer_decay), recipe.peak_lr,
                                    recipe.fused_optimizer, accelerator.device)
        train_loader = build_train_loader(data.train, img_size=recipe.img_size, crop_scale=recipe.crop_scale,
                                          batch_size=micro_batch, seed=recipe.seed, num_workers=settings.num_workers,
                                          mix=data.mix, fast_decode=recipe.fast_decode,
                                          reshuffle=recipe.reshuffle_each_epoch)
        val_loader = (build_val_loader(data.val, recipe.img_size, recipe.val_batch_size or micro_batch,
                                       settings.num_workers) if data.val is not None else None)
        model, optimizer, train_loader = accelerator.prepare(mae, optimizer, train_loader)
        if val_loader is not None:
            val_loader = accelerator.prepare(val_loader)
        mae = accelerator.unwrap_model(model)
        device = accelerator.device
        mean = torch.tensor(recipe.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(recipe.std, device=device).view(1, -1, 1, 1)
        model, compile_seconds = compile_model(
            model, compile_trial(accelerator, model, num_patches=mae.num_patches, batch_size=micro_batch,
                                 img_size=recipe.img_size, mask_ratio=recipe.mask_ratio,
                                 pixel_stats=(mean, std)),
            enabled=settings.torch_compile)
        # schedule, SWA, pictures, saver; then the checkpoint to continue from
        schedule = Schedule(recipe, math.ceil(len(train_loader) / recipe.grad_accum_steps))
        swa_model = AveragedModel(mae) if recipe.swa else None
        progress = TrainProgress()
        pictures = picture_batch(data.val if data.val is not None else data.train, count=recipe.num_recon_images,
                                 img_size=recipe.img_size, mean=recipe.mean, std=recipe.std, seed=recipe.seed,
                                 num_patches=mae.num_patches, device=device)
        saver = Saver(recipe=recipe, accelerator=accelerator, mae=mae, swa_model=swa_model, progress=progress,
                      pictures=pictures, trackers=settings.trackers,
                      run_signature={"model": recipe.model, "img_size": recipe.img_size, "swa": recipe.swa,
                                     "seed": recipe.seed, "processes": accelerator.num_processes,
                                     "batch_size": recipe.batch_size, "grad_accum_steps": recipe.grad_accum_steps,
                                     "steps_per_epoch": schedule.steps_per_epoch})
        run = Run(recipe, accelerator, settings, data, mae, model, optimizer, train_loader, val_loader, schedule,
                  mean=mean, std=std, saver=saver, progress=progress,
                  swa_model=swa_model, compile_seconds=compile_seconds, started=started,
                  graphs_after_trial=compiled_graphs(), lock=lock)
        resume_from = saver.resume_from(recipe.resume)
        if resume_from is not None:
            saver.resume(resume_from)
            accelerator.print(f"resumed from {resume_from} at step {progress.step}")
        if recipe.probe_data:
            run.probe = build_probe(ProbeSettings.from_recipe(recipe), img_size=recipe.img_size, mean=recipe.mean,
                                    std=recipe.std, accelerator=accelerator, num_workers=settings.num_workers,
                                    local_processes=_local_processes(accelerator.state))
            multilabel, dense = run.probe.data.labels.multilabel, run.probe.data.labels.dense
            if recipe.probe_best_metric and recipe.probe_best_metric not in metric_names(recipe.probe_kind, multilabel,
                                                                                         dense):
                scored = score_names(multilabel)
                raise RecipeError(f"--probe_best_metric {recipe.probe_best_metric}: these labels are scored by "
                                  f"{' and '.join(scored)}, e.g. knn_avg_{scored[0]}")
        refused.pop_all()  # set up: the Run holds the lock until it is closed
    return run


def _keep_earlier_config(path: Path, settings: dict, step: int) -> None:
    """A run continued with other settings than its ``config.yaml`` says (allowed: e.g. a lower lr after a
    divergence) keeps that file as ``config.until_step_N.yaml`` and says what changed."""
    try:
        earlier = yaml.safe_load(path.read_text()) if step and path.is_file() else None
    except (OSError, yaml.YAMLError):
        earlier = None
    if not isinstance(earlier, dict):
        return
    changed = [f"{key} {earlier.get(key)!r} -> {value!r}" for key, value in settings.items()
               if key not in ("resume", "stop_at_step") and earlier.get(key, value) != value]
    if changed:
        kept = path.with_name(f"config.until_step_{step}.yaml")
        os.replace(path, kept)
        print(f"note: continuing from step {step} with changed settings ({'; '.join(changed)}); the earlier ones "
              f"are in {kept}", flush=True)


def start_logging(run: Run) -> None:
    """Write ``config.yaml`` beside the run's outputs and open the trackers with the recipe as hyperparameters
    (URL credentials and query tokens removed). TensorBoard gets them at the end, with the final metrics, in
    the run's own folder (accelerate would put them into a separate run without metrics)."""
    recipe, accelerator = run.recipe, run.accelerator
    settings = {k: redact_url(v) if isinstance(v, str) else v for k, v in recipe.to_dict().items()}
    if accelerator.is_main_process:
        _keep_earlier_config(recipe.output_path / "config.yaml", settings, run.progress.step)
        atomic_write_text(recipe.output_path / "config.yaml", yaml.safe_dump(settings, sort_keys=False))
    run.hparams = {k: str(v) if isinstance(v, (list, type(None))) else v for k, v in settings.items()}
    if run.settings.trackers:
        # a resumed run drops what the stopped one logged after its checkpoint, so no step is there twice
        step = run.progress.step
        accelerator.init_trackers(recipe.logging_path.name,
                                  init_kwargs={"tensorboard": {"purge_step": step + 1}} if step else {})
        for tracker in accelerator.trackers:
            if tracker.name != "tensorboard":
                tracker.store_init_configuration(run.hparams)
