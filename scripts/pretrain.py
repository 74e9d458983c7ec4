"""MAE pretraining on endoscopic frames, on CPU, one or many GPUs, or several machines.

    accelerate launch --config_file accelerate_configs/cpu.yaml scripts/pretrain.py \
        --recipe demo --train_data data/sample/train --val_data data/sample/val --output_dir outputs/demo

Settings come from a YAML recipe (``--recipe``, default ``endovit_seg``) and ``--key value``
overrides; the resolved recipe is saved as ``config.yaml`` in ``--output_dir``.
"""
from __future__ import annotations

import dataclasses
import math
import re
import sys
import time
from pathlib import Path

import torch
import yaml
from accelerate import Accelerator, PartialState
from accelerate.utils import DataLoaderConfiguration, DynamoBackend, ProjectConfiguration, set_seed
from PIL import Image
from torch.optim.swa_utils import AveragedModel
from tqdm.auto import tqdm

from endovit.checkpoint import (
    TrainProgress,
    check_resumable,
    latest_checkpoint,
    resolve_resume,
    save_training_state,
)
from endovit.data import DataError, build_train_loader, build_val_loader
from endovit.data.sources import load_run_data
from endovit.data.transforms import normalize, sample_seed
from endovit.engine import (
    build_optimizer,
    compile_model,
    compile_trial,
    resolve_mixed_precision,
    sdpa_active,
    train_step,
)
from endovit.errors import CheckpointError
from endovit.evaluation import picture_batch, reconstruction_grid, validate
from endovit.io import atomic_write_text
from endovit.models.mae import TIMM_ENCODERS, create_mae
from endovit.optim import lr_at_step, param_groups, set_lr
from endovit.recipe import Recipe, RecipeError, parse_recipe
from endovit.weights import export_info, export_model, load_pretrained


def save_picture(accelerator, mae, pictures, recipe: Recipe, step: int, out_dir: Path) -> Path | None:
    """Reconstruction grid of the fixed picture frames: to TensorBoard and ``reconstruction.png``."""
    if pictures is None:
        return None
    grid = reconstruction_grid(mae, *pictures, recipe.mean, recipe.std, recipe.mask_ratio)
    if "tensorboard" in recipe.report_to:
        accelerator.get_tracker("tensorboard", unwrap=True).add_image("val/reconstruction", grid, step,
                                                                      dataformats="HWC")
    path = out_dir / "reconstruction.png"
    tmp = path.with_name(".reconstruction.png.tmp")
    Image.fromarray(grid).save(tmp, format="PNG")
    tmp.replace(path)
    return path


def train(recipe: Recipe) -> None:
    """Pretrain as the recipe says; everything the run writes goes under its output, checkpoint and log dirs."""
    out_dir = Path(recipe.output_dir)
    trackers = [t for t in recipe.report_to.split(",") if t and t != "none"]
    process = PartialState(cpu=not torch.accelerator.is_available())
    accelerator = Accelerator(
        gradient_accumulation_steps=recipe.grad_accum_steps,
        mixed_precision=resolve_mixed_precision(recipe.mixed_precision, process.device),
        dataloader_config=DataLoaderConfiguration(non_blocking=process.device.type == "cuda"),
        log_with=trackers or None,
        project_config=ProjectConfiguration(project_dir=str(out_dir), logging_dir=str(recipe.logging_path.parent)),
    )
    set_seed(recipe.seed)
    micro_batch = recipe.micro_batch_size(accelerator.num_processes)
    checkpoints_dir = recipe.checkpoints_path
    resume_from = resolve_resume(recipe.resume, checkpoints_dir)
    if recipe.resume == "none" and latest_checkpoint(checkpoints_dir):
        raise RecipeError(f"--checkpoint_dir {checkpoints_dir} already holds checkpoints; pass --resume auto to "
                          "continue or choose another --output_dir")

    run_data = load_run_data(recipe.train_data, recipe.val_data, train_sources=recipe.train_sources,
                             val_sources=recipe.val_sources, source_weights=recipe.source_weights,
                             stats_from_data=recipe.stats_from_data, log=accelerator.print)
    if run_data.stats:
        recipe = dataclasses.replace(recipe, mean=run_data.stats[0], std=run_data.stats[1])
    train_frames, val_frames = run_data.train, run_data.val
    if len(train_frames) < micro_batch * accelerator.num_processes * recipe.grad_accum_steps:
        raise DataError(f"--train_data {recipe.train_data} has {len(train_frames)} frames, fewer than one "
                        f"batch of {recipe.batch_size}; lower --batch_size or add frames")
    mae = create_mae(recipe.model, img_size=tuple(recipe.img_size), norm_pix_loss=recipe.norm_pix_loss)
    if recipe.init_from:
        with accelerator.local_main_process_first():
            load_pretrained(mae, recipe.init_from)
    mae.set_grad_checkpointing(recipe.grad_checkpointing)
    lr = recipe.peak_lr
    optimizer = build_optimizer(param_groups(mae, recipe.weight_decay, recipe.layer_decay), lr,
                                recipe.fused_optimizer, accelerator.device)
    train_loader = build_train_loader(train_frames, recipe.img_size, recipe.crop_scale, micro_batch, recipe.seed,
                                      recipe.num_workers, run_data.mix, recipe.fast_decode)
    val_loader = (build_val_loader(val_frames, recipe.img_size, recipe.val_batch_size or micro_batch,
                                   recipe.num_workers) if val_frames is not None else None)
    model, optimizer, train_loader = accelerator.prepare(mae, optimizer, train_loader)
    if val_loader is not None:
        val_loader = accelerator.prepare(val_loader)
    mae = accelerator.unwrap_model(model)
    compile_wanted = recipe.torch_compile == "true" or (recipe.torch_compile == "auto"
                                                         and accelerator.device.type == "cuda")
    already_compiled = accelerator.state.dynamo_plugin.backend != DynamoBackend.NO
    model, compile_seconds = compile_model(
        model, compile_trial(accelerator, mae, micro_batch, recipe.img_size, recipe.mask_ratio),
        compile_wanted and not already_compiled)

    steps_per_epoch = math.ceil(len(train_loader) / recipe.grad_accum_steps)
    total_steps = recipe.epochs * steps_per_epoch
    last_step = min(total_steps, recipe.stop_at_step or total_steps)
    progress = TrainProgress()
    accelerator.register_for_checkpointing(progress)
    swa_model = AveragedModel(mae) if recipe.swa else None
    if swa_model is not None:
        accelerator.register_for_checkpointing(swa_model)
    run_signature = {"model": recipe.model, "img_size": recipe.img_size, "swa": recipe.swa, "seed": recipe.seed,
                     "processes": accelerator.num_processes, "steps_per_epoch": steps_per_epoch}
    if resume_from is not None:
        check_resumable(resume_from, run_signature)
        accelerator.load_state(str(resume_from))
        accelerator.print(f"resumed from {resume_from} at step {progress.step}")
    if recipe.swa and recipe.swa_start_epoch >= recipe.epochs:
        accelerator.print(f"note: --swa_start_epoch {recipe.swa_start_epoch} is not before --epochs {recipe.epochs}: "
                          "no weights get averaged and no swa/ is written")
    if progress.step >= last_step:
        accelerator.print(f"nothing to do: {checkpoints_dir} is already at step {progress.step}; the weights are in "
                          f"{out_dir}")
        accelerator.end_training()
        return

    pictures = picture_batch(val_frames if val_frames is not None else train_frames, recipe.num_recon_images,
                             recipe.img_size, recipe.mean, recipe.std, recipe.seed, mae.num_patches,
                             accelerator.device)

    if accelerator.is_main_process:
        atomic_write_text(out_dir / "config.yaml", yaml.safe_dump(recipe.to_dict(), sort_keys=False))
    if trackers:
        accelerator.init_trackers(
            recipe.logging_path.name, config={k: str(v) if isinstance(v, (list, type(None))) else v
                                   for k, v in recipe.to_dict().items()})
    accelerator.print(
        f"{len(train_frames)} training frames, {len(val_frames) if val_frames is not None else 0} validation "
        f"frames; {accelerator.num_processes} process(es) x {recipe.grad_accum_steps} accumulation x "
        f"{micro_batch} = batch {recipe.batch_size}; {steps_per_epoch} steps/epoch, {total_steps} steps; lr {lr:.3g}; "
        f"precision {accelerator.mixed_precision}, compiled {compile_seconds > 0} "
        f"({compile_seconds:.0f}s), fused attention {sdpa_active(mae)}"
    )

    noise_generator = torch.Generator(device=accelerator.device)
    running_loss = torch.zeros((), device=accelerator.device)
    micro_steps = 0
    log_start, log_images, log_micro_steps = time.perf_counter(), 0, 0
    step = progress.step
    val_loss = None
    bar = tqdm(total=last_step, initial=step, desc="pretrain", disable=not accelerator.is_local_main_process)

    def run_validation() -> None:
        nonlocal val_loss
        val_loss = validate(mae, mae, val_loader, accelerator, recipe.mean, recipe.std, recipe.mask_ratio,
                            recipe.seed)
        metrics = {"val/loss": val_loss}
        if swa_model is not None and swa_model.n_averaged.item() > 0:
            metrics["val/loss_swa"] = validate(swa_model, swa_model.module, val_loader, accelerator, recipe.mean,
                                               recipe.std, recipe.mask_ratio, recipe.seed)
        accelerator.log(metrics, step=step)
        if accelerator.is_main_process:
            bar.write(f"step={step} " + " ".join(f"{k.replace('/', '_')}={v:.5f}" for k, v in metrics.items()))
            save_picture(accelerator, mae, pictures, recipe, step, out_dir)
            if val_loss < progress.best_val_loss:
                export_model(mae, out_dir / "best", export_info(recipe, mae, step, val_loss))
        progress.best_val_loss = min(progress.best_val_loss, val_loss)

    model.train()
    while step < last_step:
        epoch = step // steps_per_epoch
        train_loader.set_epoch(epoch)
        done_in_epoch = (step - epoch * steps_per_epoch) * recipe.grad_accum_steps
        epoch_loader = accelerator.skip_first_batches(train_loader, done_in_epoch) if done_in_epoch else train_loader
        for batch in epoch_loader:
            with accelerator.accumulate(model):
                set_lr(optimizer, lr_at_step(step, steps_per_epoch, lr, recipe.min_lr, recipe.epochs,
                                             recipe.warmup_epochs, recipe.swa, recipe.swa_start_epoch, recipe.swa_lr))
                noise_generator.manual_seed(sample_seed(recipe.seed, step, micro_steps, accelerator.process_index))
                images = normalize(batch["pixels"], recipe.mean, recipe.std)
                noise = torch.rand(images.shape[0], mae.num_patches, generator=noise_generator,
                                   device=accelerator.device)
                loss = train_step(accelerator, model, optimizer, images, noise, recipe.mask_ratio, recipe.clip_grad)
            running_loss += loss
            micro_steps += 1
            log_micro_steps += 1
            log_images += batch["pixels"].shape[0]
            if not accelerator.sync_gradients:
                continue
            step += 1
            progress.step = step
            micro_steps = 0
            bar.update(1)
            epoch_step = step - epoch * steps_per_epoch
            if swa_model is not None and epoch >= recipe.swa_start_epoch and (
                    epoch_step % recipe.swa_every_steps == 0 or epoch_step == steps_per_epoch):
                swa_model.update_parameters(mae)
            if step % recipe.log_every_steps == 0 or step == last_step:
                mean_loss = accelerator.reduce(running_loss, "mean").item() / log_micro_steps
                if not math.isfinite(mean_loss):
                    raise FloatingPointError(f"loss is {mean_loss} at step {step}; try --mixed_precision bf16 "
                                             "or --clip_grad 1.0, and resume from the last checkpoint")
                elapsed = time.perf_counter() - log_start
                images_per_sec = log_images * accelerator.num_processes / max(elapsed, 1e-9)
                current_lr = max(g["lr"] for g in optimizer.param_groups)
                accelerator.log({"train/loss": mean_loss, "train/lr": current_lr,
                                 "train/images_per_sec": images_per_sec}, step=step)
                if accelerator.is_main_process:
                    bar.write(f"step={step} epoch={step / steps_per_epoch:.3f} loss={mean_loss:.5f} "
                              f"lr={current_lr:.4e} images_per_sec={images_per_sec:.1f}")
                running_loss.zero_()
                log_start, log_images, log_micro_steps = time.perf_counter(), 0, 0
            if val_loader is not None and (step % recipe.val_every_steps == 0 or step == total_steps):
                run_validation()
            if step % recipe.save_every_steps == 0 or step == last_step:
                save_training_state(accelerator, checkpoints_dir, step, recipe.keep_checkpoints, run_signature)
            if step >= last_step:
                break
    bar.close()

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        export_model(mae, out_dir, export_info(recipe, mae, step, val_loss))
        if swa_model is not None and swa_model.n_averaged.item() > 0:
            export_model(swa_model.module, out_dir / "swa", export_info(recipe, swa_model.module, step, None))
        picture = save_picture(accelerator, mae, pictures, recipe, step, out_dir) or "off (--num_recon_images 0)"
        print(f"done at step {step}/{total_steps}.\n"
              f"  weights:        {out_dir / 'model.safetensors'} (full MAE), {out_dir / 'encoder.safetensors'} "
              f"(timm {TIMM_ENCODERS[recipe.model]})\n"
              f"  best by val:    {out_dir / 'best'}\n"
              f"  checkpoints:    {checkpoints_dir} (resume with --resume auto)\n"
              f"  tensorboard:    tensorboard --logdir {recipe.logging_path}\n"
              f"  reconstruction: {picture}")
    accelerator.end_training()


def main(argv: list[str] | None = None) -> int:
    try:
        train(parse_recipe(argv))
    except (RecipeError, DataError, CheckpointError, FloatingPointError) as err:
        lines = [line for line in str(err).splitlines() if line.strip()]
        last = re.sub(r"^[\w.]+(Error|Exception): ", "", lines[-1]) if lines else type(err).__name__
        tqdm.write(f"error: {last}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
