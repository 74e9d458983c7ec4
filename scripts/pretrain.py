"""MAE pretraining on endoscopic frames, on CPU, one or many GPUs, or several machines.

    accelerate launch --config_file accelerate_configs/cpu.yaml scripts/pretrain.py \
        --recipe demo --train_data data/sample/prepared/train --val_data data/sample/prepared/val \
        --output_dir outputs/demo

Settings come from a YAML recipe (``--recipe``, default ``endovit_seg``) and ``--key value``
overrides; the resolved recipe is saved as ``config.yaml`` in ``--output_dir``. SIGTERM or Ctrl-C stop
after the current step with a checkpoint there (exit 143 / 130; 0 for a SageMaker job's stop, which the launcher's
entry point passes on); ``--resume auto`` continues.
"""
from __future__ import annotations

import sys

from tqdm.auto import tqdm

from endovit.cli import exit_script
from endovit.errors import EndovitError, error_line
from endovit.models.archs import TIMM_ENCODERS
from endovit.recipe import Recipe, parse_recipe
from endovit.sagemaker import entry
from endovit.sagemaker.job import job_defaults, lock_dir, report_failure


def pretrain(recipe: Recipe) -> int:
    """Set the run up, train it to its last step (or until SIGTERM/SIGINT), export the weights and say where
    everything went; returns the exit code (0, or 143/130 when a signal stopped the run; 0 when it was a SageMaker
    job's stop, which is not a failure of the run)."""
    # imported once the recipe is parsed: --help and flag errors answer without loading torch
    from endovit.checkpoint import checkpoint_name
    from endovit.engine import StopRequest, compiled_graphs, train
    from endovit.trainer import build_run, start_logging

    stop = StopRequest()
    with stop.installed(), entry.registered(stop.request):
        run = build_run(recipe, lock_dir=lock_dir())
        recipe, accelerator, schedule = run.recipe, run.accelerator, run.schedule
        if run.progress.step >= schedule.last_step:
            if run.saver.exported(run.progress.step):
                accelerator.print(f"nothing to do: {recipe.checkpoints_path} is already at step "
                                  f"{run.progress.step}; the weights are in {recipe.output_dir}")
                run.close()
                return 0
            accelerator.print(f"{recipe.checkpoints_path} is at step {run.progress.step}, the last, but the "
                              "export of its weights is missing or incomplete (a stop while it was written): "
                              "exporting it now")
        if recipe.swa and recipe.swa_start_epoch >= recipe.epochs:
            accelerator.print(f"note: --swa_start_epoch {recipe.swa_start_epoch} is not before --epochs "
                              f"{recipe.epochs}: no weights get averaged and no swa/ is written")
        if unused := recipe.unused_probe_settings():
            accelerator.print(f"note: {', '.join('--' + key for key in unused)} "
                              f"{'does' if len(unused) == 1 else 'do'} nothing without --probe_data")
        start_logging(run)
        accelerator.print(run.summary())

        step = train(run, stop)

        if run.compile_seconds:
            accelerator.print(f"torch.compile: {compiled_graphs() - run.graphs_after_trial} recompile(s) after "
                              "the trial")
        accelerator.wait_for_everyone()
        written = run.saver.finish(step, hparams=run.hparams, metrics=run.latest)
        if accelerator.is_main_process:
            out = recipe.output_path
            lines = [f"interrupted at step {step}/{schedule.total_steps}: checkpoint "
                     f"{recipe.checkpoints_path / checkpoint_name(step)}, continue with --resume auto."
                     if stop.signal else f"done at step {step}/{schedule.total_steps}.",
                     f"  weights:        {out / 'model.safetensors'} (full MAE), {out / 'encoder.safetensors'} "
                     f"(timm {TIMM_ENCODERS[recipe.model]})",
                     f"  fine-tune:      timm.create_model('local-dir:{out / 'timm'}', pretrained=True); "
                     f"transformers: from_pretrained('{out}')"]
            if written["best"]:
                lines.append(f"  best by val:    {written['best']}")
            if written["best_probe"]:
                lines.append(f"  best by probe:  {written['best_probe']} ({recipe.probe_best_metric})")
            if written["swa"]:
                lines.append(f"  swa average:    {written['swa']}")
            if written["best_swa"]:
                lines.append(f"  best swa:       {written['best_swa']} (SWA average, lowest val loss)")
            lines += [f"  checkpoints:    {recipe.checkpoints_path} (resume with --resume auto)",
                      f"  tensorboard:    tensorboard --logdir {recipe.logging_path}",
                      f"  reconstruction: {written['picture'] or 'off (--num_recon_images 0)'}"]
            print("\n".join(lines), flush=True)
        run.close()
        return stop.exit_code if stop.signal and not entry.stopping() else 0


def main(argv: list[str] | None = None) -> int:
    try:
        return pretrain(parse_recipe(argv, job_defaults=job_defaults()))
    except (EndovitError, FloatingPointError) as err:
        message = f"error: {error_line(err)}"
        tqdm.write(message, file=sys.stderr)
        report_failure(message)  # a SageMaker job's FailureReason
        return 2


if __name__ == "__main__":
    exit_script(main())
