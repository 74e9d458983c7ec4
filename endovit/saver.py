"""The one owner of what a run writes (like timm's ``CheckpointSaver``): training-state checkpoints, ``best/``,
``best_probe/``, ``swa/``, the final export and the reconstruction picture."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from accelerate.utils import broadcast_object_list, gather_object
from PIL import Image
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from endovit.checkpoint import (
    TrainProgress,
    check_resumable,
    checkpoint_dirs,
    load_training_state,
    node_manifest,
    resolve_resume,
    save_training_state,
)
from endovit.io import atomic_path, link_or_copy, remove_temporaries
from endovit.validation import reconstruction_grid
from endovit.weights import export_info, export_model, exported_step

__all__ = ["Saver"]

SWA_FILE = "swa_model.safetensors"
# exports kept beside the checkpoints: by validation loss, by probe metric, the SWA average by validation loss
BESTS = ("best", "best_probe", "best_swa")


class Saver:
    """Decides and writes everything a run leaves behind.

    It is handed, once, what it writes: the model and its SWA average, the run's ``TrainProgress`` (owned by the
    Run, saved and restored here with every checkpoint), the fixed picture frames and the trackers in use; it never
    reaches into the Run. ``best/`` (lowest validation loss), ``best_probe/`` (highest ``probe_best_metric``) and
    ``best_swa/`` (the SWA average with the lowest validation loss, EndoViT's released weights) are exported into
    the checkpoint folder (which SageMaker syncs and restores) and linked into the output folder, so a restarted
    job gets them back.
    """

    def __init__(self, *, recipe, accelerator, mae, swa_model, progress: TrainProgress, run_signature: dict,
                 pictures: tuple | None = None, trackers: list[str] | tuple[str, ...] = ()):
        self.recipe = recipe
        self.accelerator = accelerator
        self.mae = mae
        self.swa_model = swa_model
        self.progress = progress
        self.pictures = pictures
        self.trackers = trackers
        self.out_dir = Path(self.recipe.output_dir)
        self.checkpoints_dir = self.recipe.checkpoints_path
        self.run_signature = run_signature
        self.storage_shared = not self.accelerator.project_configuration.save_on_each_node
        self.manifest = node_manifest(self.accelerator, self.storage_shared)
        self.last_val_loss: float | None = None
        self.picture_step: int | None = None
        if self.accelerator.is_main_process:  # what a run killed while writing left behind (one run per folder)
            for folder in (self.out_dir, self.out_dir / "swa", *(root / name for root in (self.out_dir,
                           self.checkpoints_dir) for name in BESTS)):
                remove_temporaries(folder)

    def _info(self, mae, step: int, val_loss: float | None) -> dict:
        return export_info(self.recipe.to_dict(), mae, step=step, val_loss=val_loss)

    # --- training state -------------------------------------------------------------------------------------

    def resume_from(self, resume: str) -> Path | None:
        """The checkpoint to continue from (``--resume``: none, auto or a folder), the same on every machine:
        with ``auto``, the newest step complete on all of them."""
        folder = resolve_resume(resume, self.checkpoints_dir, self.manifest)
        if resume != "auto" or self.accelerator.num_processes == 1:
            return folder
        steps = [{p.name for p in checkpoint_dirs(self.checkpoints_dir, self.manifest)}]
        common = set.intersection(*gather_object(steps))
        return self.checkpoints_dir / max(common) if common else None

    def resume(self, folder: Path) -> None:
        """Load a checkpoint folder: accelerate's state, our counters, the SWA weights; put the bests back."""
        check_resumable(folder, self.run_signature, self.manifest)
        load_training_state(self.accelerator, folder, self.progress)
        if self.swa_model is not None:
            self.swa_model.load_state_dict(load_file(folder / SWA_FILE))
        if self.accelerator.is_main_process:
            for name in BESTS:
                self._restore_best(name)

    def save_training_state(self, step: int) -> Path:
        """A complete checkpoint of ``step`` (every process takes part); logs how long saving took."""
        start = time.perf_counter()
        folder = save_training_state(self.accelerator, self.checkpoints_dir, step, keep=self.recipe.keep_checkpoints,
                                     run=self.run_signature, write_extra=self._write_extra,
                                     storage_shared=self.storage_shared)
        seconds = time.perf_counter() - start
        self.accelerator.log({"train/checkpoint_seconds": seconds}, step=step)
        if self.accelerator.is_main_process:
            tqdm.write(f"checkpoint {folder.name} saved in {seconds:.1f}s")
        return folder

    def _write_extra(self, folder: Path) -> None:
        self.progress.save(folder)
        if self.swa_model is not None:
            state = {k: v.detach().cpu().contiguous() for k, v in self.swa_model.state_dict().items()}
            save_file(state, str(folder / SWA_FILE))

    # --- exports --------------------------------------------------------------------------------------------

    def after_validation(self, step: int, val_loss: float, swa_val_loss: float | None = None) -> None:
        """Picture of this validation; ``best/`` when the loss improved, ``best_swa/`` when ``swa_val_loss`` (given
        when it counts) improved."""
        self.last_val_loss = val_loss
        if self.accelerator.is_main_process:
            self.save_picture(step)
            if val_loss < self.progress.best_val_loss:
                export_model(self.mae, self.checkpoints_dir / "best", self._info(self.mae, step, val_loss))
                self._restore_best("best")
            if swa_val_loss is not None and swa_val_loss < self.progress.best_swa_val_loss:
                swa = self.swa_model.module
                export_model(swa, self.checkpoints_dir / "best_swa", self._info(swa, step, swa_val_loss))
                self._restore_best("best_swa")
        self.progress.best_val_loss = min(self.progress.best_val_loss, val_loss)
        if swa_val_loss is not None:
            self.progress.best_swa_val_loss = min(self.progress.best_swa_val_loss, swa_val_loss)

    def after_probe(self, step: int, metrics: dict[str, float]) -> None:
        """``best_probe/`` when the recipe's ``probe_best_metric`` rose (the init, probed at step 0, never counts)."""
        name = self.recipe.probe_best_metric
        if not name or step == 0:
            return
        value = metrics[f"probe/{name}"]
        if value > self.progress.best_probe and self.accelerator.is_main_process:
            info = self._info(self.mae, step, self.last_val_loss) | {f"probe_{name}": value}
            export_model(self.mae, self.checkpoints_dir / "best_probe", info)
            self._restore_best("best_probe")
        self.progress.best_probe = max(self.progress.best_probe, value)

    def _restore_best(self, name: str) -> None:
        """Mirror ``<checkpoints>/<name>`` into ``<output>/<name>`` (hard links where the disk allows)."""
        kept = self.checkpoints_dir / name
        if not kept.is_dir() or kept.resolve() == (self.out_dir / name).resolve():
            return
        with atomic_path(self.out_dir / name) as tmp:
            shutil.copytree(kept, tmp, copy_function=link_or_copy)

    def exported(self, step: int) -> bool:
        """Whether the final export of ``step`` is complete (the model's and, once it averaged, SWA's), on every
        process: a stop after the last checkpoint but during the export leaves it missing or mixed."""
        if self.accelerator.is_main_process:
            averaged = self.swa_model is not None and self.swa_model.n_averaged.item() > 0
            folders = [self.out_dir, self.out_dir / "swa"] if averaged else [self.out_dir]
            complete = all(exported_step(folder) == step for folder in folders)
        else:
            complete = None
        return broadcast_object_list([complete])[0] if self.accelerator.num_processes > 1 else complete

    def finish(self, step: int, *, hparams: dict, metrics: dict[str, float]) -> dict[str, Path | None]:
        """Final weights (and SWA's) into the output folder, the recipe's ``hparams`` beside the newest ``metrics``
        in TensorBoard's HParams tab; returns what exists, by name."""
        written: dict[str, Path | None] = {"weights": None, "best": None, "best_probe": None, "best_swa": None,
                                           "swa": None, "picture": None}
        if not self.accelerator.is_main_process:
            return written
        mae, swa_model = self.mae, self.swa_model
        written["weights"] = export_model(mae, self.out_dir, self._info(mae, step, self.last_val_loss))
        if swa_model is not None and swa_model.n_averaged.item() > 0:
            written["swa"] = export_model(swa_model.module, self.out_dir / "swa",
                                          self._info(swa_model.module, step, None))
        for name in BESTS:
            if (self.out_dir / name / "model.safetensors").is_file():
                written[name] = self.out_dir / name
        written["picture"] = self.save_picture(step)
        if "tensorboard" in self.trackers and hparams:
            self.accelerator.get_tracker("tensorboard", unwrap=True).add_hparams(
                hparams, {f"hparams/{k.replace('/', '_')}": v for k, v in metrics.items()},
                run_name=".", global_step=step)
        return written

    def save_picture(self, step: int) -> Path | None:
        """Reconstruction grid of the fixed picture frames: to TensorBoard and ``reconstruction.png`` (once per
        step: the end of a run that validated at its last step draws no second picture)."""
        if self.pictures is None:
            return None
        if step == self.picture_step:
            return self.out_dir / "reconstruction.png"
        self.picture_step = step
        grid = reconstruction_grid(self.mae, *self.pictures, mean=self.recipe.mean, std=self.recipe.std,
                                   mask_ratio=self.recipe.mask_ratio)
        return self._write_picture("val/reconstruction", "reconstruction.png", grid, step)

    def save_probe_picture(self, step: int, picture) -> Path | None:
        """The segmentation probe's held-out frames, truth and prediction: to TensorBoard and
        ``probe_segmentation.png`` (the latest probe's)."""
        if not self.accelerator.is_main_process:
            return None
        return self._write_picture("probe/seg_picture", "probe_segmentation.png", picture, step)

    def _write_picture(self, tag: str, name: str, picture, step: int) -> Path:
        """An HWC uint8 picture to TensorBoard (as ``tag``) and to ``<output_dir>/<name>``."""
        if "tensorboard" in self.trackers:
            self.accelerator.get_tracker("tensorboard", unwrap=True).add_image(tag, picture, step, dataformats="HWC")
        path = self.out_dir / name
        with atomic_path(path) as tmp:
            Image.fromarray(picture).save(tmp, format="PNG")
        return path
