"""The training step, its speed switches and the step loop (MAE's ``engine_pretrain.py``).

``train_step`` is shared by ``scripts/pretrain.py`` (through ``train``) and ``scripts/benchmark.py``.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import os
import signal
import sys
import time
import warnings
from pathlib import Path

import torch
from tqdm.auto import tqdm

from endovit.data.transforms import sample_seed
from endovit.errors import DataError, RecipeError
from endovit.flops import peak_tflops, train_flops
from endovit.optim import set_lr
from endovit.validation import validate

__all__ = ["sdpa_active", "compile_model", "compile_trial", "compiled_graphs", "train_step", "LogWindow",
           "StopRequest", "train", "validate_run"]


def sdpa_active(model: torch.nn.Module) -> bool:
    """True when every attention layer uses PyTorch's fused scaled_dot_product_attention."""
    attentions = [m for m in model.modules() if hasattr(m, "fused_attn")]
    return bool(attentions) and all(m.fused_attn for m in attentions)


def compiled_graphs() -> int:
    """How many graphs torch.compile has built in this process so far (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def compile_model(model: torch.nn.Module, trial, *, enabled: bool, backend: str = "inductor", mode: str | None = None,
                  coordinate_descent: bool = False) -> tuple[torch.nn.Module, float]:
    """``torch.compile`` the model and run ``trial(model)`` once to compile it now.

    ``mode`` is torch.compile's (None = default; only the inductor backend takes one); ``coordinate_descent``
    turns on inductor's coordinate-descent tuning of its kernels while the trial compiles.
    Returns the model to train with and the seconds compiling took. If compiling is unavailable
    or fails, warns and returns the eager model.
    """
    if not enabled:
        return model, 0.0
    start = time.perf_counter()
    try:
        compiled = torch.compile(model, backend=backend, **({"mode": mode} if mode and backend == "inductor" else {}))
        tuning = contextlib.nullcontext()
        if coordinate_descent and backend == "inductor":
            import torch._inductor.config as inductor_config

            tuning = inductor_config.patch(coordinate_descent_tuning=True)
        with tuning:
            trial(compiled)
    except Exception as err:  # noqa: BLE001 - any compiler failure falls back to eager
        warnings.warn(f"torch.compile failed, training eagerly instead: {type(err).__name__}: {err}", stacklevel=2)
        return model, 0.0
    return compiled, time.perf_counter() - start


def compile_trial(accelerator, model, *, num_patches: int, batch_size: int, img_size, mask_ratio: float,
                  pixel_stats: tuple | None = None, loss_only: bool = True):
    """A ``trial(model)`` for ``compile_model``: one forward/backward on blank frames exactly as ``train_step``
    runs it (same call, autocast state, dtypes and shapes), then the gradients are dropped. With ``pixel_stats``
    the frames are uint8, normalised in the forward as ``train_step(..., pixel_stats=...)`` does."""
    def trial(compiled) -> None:
        dtype = torch.float32 if pixel_stats is None else torch.uint8
        blank = torch.zeros(batch_size, 3, *img_size, device=accelerator.device, dtype=dtype)
        noise = torch.rand(batch_size, num_patches, generator=torch.Generator().manual_seed(0))
        loss = _forward_loss(compiled, blank, noise.to(accelerator.device), mask_ratio, pixel_stats, loss_only)
        accelerator.backward(loss)
        model.zero_grad(set_to_none=True)

    return trial


def _forward_loss(model, images, noise, mask_ratio: float, pixel_stats, loss_only: bool = True) -> torch.Tensor:
    """The training forward, normalising inside it when ``pixel_stats`` is given; ``loss_only=False`` is MAE's
    official return of (loss, pred, mask), kept for the benchmark's A/B of that lever."""
    out = model(images, mask_ratio, noise, pixel_stats=pixel_stats, loss_only=loss_only)
    return out if loss_only else out[0]


def train_step(accelerator, model, optimizer, images: torch.Tensor, noise: torch.Tensor, *, mask_ratio: float,
               clip_grad: float | None, pixel_stats: tuple | None = None, loss_only: bool = True) -> torch.Tensor:
    """One micro-batch: forward with the given masks, backward, and (when accelerate says gradients are
    synchronised) clip and step. ``images`` are normalised floats, or with ``pixel_stats=(mean, std)`` the raw
    uint8 pixels (normalised inside the compiled forward: no separate fp32 pass over the batch).
    Call inside ``accelerator.accumulate``. Returns the detached loss without synchronising with the host."""
    loss = _forward_loss(model, images, noise, mask_ratio, pixel_stats, loss_only)
    accelerator.backward(loss)
    if accelerator.sync_gradients and clip_grad:
        accelerator.clip_grad_norm_(model.parameters(), clip_grad)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


class LogWindow:
    """Loss, throughput and waiting for data since the last log line (like timm's ``AverageMeter``); the loss
    stays on the device until the window is read."""

    def __init__(self, device: torch.device, train_flops_per_image: float, peak_tflops: float | None):
        self.device = device
        self.flops, self.peak = train_flops_per_image, peak_tflops
        self.loss_sum = torch.zeros((), device=device)
        self.reset()

    def reset(self) -> None:
        self.loss_sum.zero_()
        self.micro_steps, self.images, self.skipped, self.data_seconds = 0, 0, 0, 0.0
        self.start = time.perf_counter()

    def timed(self, batches):
        """Yield from ``batches``, adding the time spent waiting for each batch to the window."""
        iterator = iter(batches)
        while True:
            waited = time.perf_counter()
            batch = next(iterator, None)
            self.data_seconds += time.perf_counter() - waited
            if batch is None:
                return
            yield batch

    def add(self, loss: torch.Tensor, images: int) -> None:
        self.loss_sum += loss
        self.micro_steps += 1
        self.images += images

    def read(self, accelerator) -> dict[str, float]:
        """Mean loss, images/s, share of time waiting for data, MFU and peak memory (on GPUs) over all processes,
        and fp16's skipped steps; then start a new window."""
        elapsed = max(time.perf_counter() - self.start, 1e-9)
        metrics = {"train/loss": accelerator.reduce(self.loss_sum, "mean").item() / max(self.micro_steps, 1),
                   "train/images_per_sec": self.images * accelerator.num_processes / elapsed,
                   "train/data_wait": self.data_seconds / elapsed}
        if self.peak:
            metrics["train/mfu"] = metrics["train/images_per_sec"] * self.flops / accelerator.num_processes / (
                self.peak * 1e12)
        if self.device.type == "cuda":
            metrics["train/max_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        if accelerator.mixed_precision == "fp16":
            metrics["train/skipped_steps"] = self.skipped
        self.reset()
        return metrics


class StopRequest:
    """A polite stop (SIGTERM from SageMaker, spot or ``kill``; SIGINT from Ctrl-C) seen by ``installed``'s
    handlers; ``agreed`` tells every process to stop at the same step. Later signals change nothing: the save
    in progress finishes (every write is atomic, so even a SIGKILL leaves the last complete checkpoint)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)
    CHECK_SECONDS = 5.0  # several processes agree this often at most: torchrun kills its workers 30 s after SIGTERM

    def __init__(self):
        self.signal: int | None = None
        self.next_check, self.last_check = 0, None  # (step, time) of the last agreement

    def _handle(self, signum: int, _frame) -> None:
        self.request(signum)

    def request(self, signum: int) -> None:
        """Ask for a stop as the signal ``signum`` would (the first request counts)."""
        if self.signal is None:
            self.signal = signum
            print(f"{signal.Signals(signum).name}: stopping after this step, then saving", file=sys.stderr,
                  flush=True)

    @contextlib.contextmanager
    def installed(self):
        """Catch SIGTERM and SIGINT inside the block (instead of dying or raising KeyboardInterrupt)."""
        previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        _signal_when_the_launcher_dies()
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)

    @property
    def exit_code(self) -> int:
        """The shell's code for a process ended by the signal: 143 for SIGTERM, 130 for SIGINT."""
        return 128 + int(self.signal or 0)

    def due(self, accelerator, step: int) -> bool:
        """Whether the processes agree on a stop at ``step``: every step on one process; with several, about every
        ``CHECK_SECONDS`` (the interval, in steps, comes from the last agreement, so it is the same on all)."""
        return accelerator.num_processes == 1 or step >= self.next_check

    def agreed(self, accelerator, step: int, most_steps: int) -> bool:
        """True on every process when any process was asked to stop (a collective when distributed). The next
        agreement is due after the steps that take ``CHECK_SECONDS`` here, at most ``most_steps``."""
        if accelerator.num_processes == 1:
            return self.signal is not None
        now = time.perf_counter()
        last_step, last_time = self.last_check or (step, now)
        seconds_per_step = (now - last_time) / max(step - last_step, 1)  # 0 at the first agreement: check again next
        shared = torch.tensor([float(self.signal is not None), seconds_per_step], device=accelerator.device)
        stop, seconds_per_step = accelerator.reduce(shared, "sum").tolist()
        seconds_per_step /= accelerator.num_processes
        steps = int(self.CHECK_SECONDS / seconds_per_step) if seconds_per_step > 0 else 1
        self.last_check, self.next_check = (step, now), step + max(1, min(most_steps, steps))
        return stop > 0


def _signal_when_the_launcher_dies() -> None:
    """``accelerate launch`` with one process exits on SIGTERM without passing it on, and its orphaned training
    process would run on without a stop checkpoint. Under that launcher (Linux), ask the kernel to send this
    process SIGTERM when the launcher dies (``prctl(PR_SET_PDEATHSIG)``). Other parents are left alone: a shell
    that exits after ``nohup`` must not stop the run."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    try:  # why /proc: the parent's command line is the only portable sign of which launcher started us
        args = Path(f"/proc/{parent}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return
    script = any(Path(os.fsdecode(a)).name == "accelerate" for a in args[:2]) and b"launch" in args
    if script or b"accelerate.commands.launch" in args[:3]:
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # 1 = PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the launcher died before the request was in place
            os.kill(os.getpid(), signal.SIGTERM)


def train(run, stop: StopRequest | None = None) -> int:
    """Run ``run`` (an ``endovit.trainer.Run``) from its current step towards ``schedule.last_step``; returns the
    step reached.

    The schedule's end (``total_steps``) logs and validates; an earlier stop (``--stop_at_step`` or a ``stop``
    request) only saves the training state, so a resumed run stays identical to an unbroken one. A stop
    request is checked every step on one process; across several at log steps and about every 5 s (one small
    all-reduce, so the steps in between get no host synchronisation).
    """
    try:
        return _train_steps(run, stop or StopRequest())
    except torch.OutOfMemoryError:
        recipe = run.recipe
        micro = recipe.micro_batch_size(run.accelerator.num_processes)
        raise RecipeError(f"out of memory with a micro-batch of {micro} images of {recipe.img_size[0]}x"
                          f"{recipe.img_size[1]} per process: raise --grad_accum_steps (the batch of "
                          f"{recipe.batch_size} stays), or try --grad_checkpointing true") from None
    except RuntimeError as err:
        if "shared memory" not in str(err):
            raise
        raise DataError("the DataLoader workers ran out of shared memory (/dev/shm): give the container more "
                        "(docker run --shm-size=16g) or lower --num_workers") from None


def _train_steps(run, stop: StopRequest) -> int:
    recipe, accelerator, schedule, saver, progress = run.recipe, run.accelerator, run.schedule, run.saver, run.progress
    noise_generator = torch.Generator(device=accelerator.device)
    window = LogWindow(accelerator.device, train_flops(run.mae, recipe.mask_ratio),
                       peak_tflops(accelerator.device, accelerator.mixed_precision))
    step, micro_steps, stopped = progress.step, 0, False
    first_step = step + 1
    # the bar only on a terminal (disable=None): in a pipe, a log file or CloudWatch its redraws would run into the
    # step= lines, which say the same
    bar = tqdm(total=schedule.last_step, initial=step, desc="pretrain",
               disable=None if accelerator.is_local_main_process else True)
    run.model.train()
    if run.probe is not None and step == 0:
        _log_probe(run, 0, bar)  # the init's score starts the curve: what pretraining must beat
    while step < schedule.last_step and not stopped:
        # epoch: reseed the sampler, skip the micro-batches a resumed run has already done
        epoch = step // schedule.steps_per_epoch
        run.train_loader.set_epoch(epoch)
        done_in_epoch = (step - epoch * schedule.steps_per_epoch) * recipe.grad_accum_steps
        batches = (accelerator.skip_first_batches(run.train_loader, done_in_epoch) if done_in_epoch
                   else run.train_loader)
        for batch in window.timed(batches):
            # EndoViT's SWA order: the weights before this step's update enter the average
            if micro_steps == 0 and run.swa_model is not None and schedule.swa_average_before(step):
                run.swa_model.update_parameters(run.mae)
            # micro-step: lr for this step, masks from (seed, step, micro-step, process), forward and backward
            with accelerator.accumulate(run.model):
                set_lr(run.optimizer, lambda scale, step=step: schedule.lr_at(step, scale))
                noise_generator.manual_seed(sample_seed(recipe.seed, step, micro_steps, accelerator.process_index))
                pixels = batch["pixels"]
                noise = torch.rand(pixels.shape[0], run.mae.num_patches, generator=noise_generator,
                                   device=accelerator.device)
                loss = train_step(accelerator, run.model, run.optimizer, pixels, noise, mask_ratio=recipe.mask_ratio,
                                  clip_grad=recipe.clip_grad, pixel_stats=(run.mean, run.std))
            window.add(loss, pixels.shape[0])
            micro_steps += 1
            if not accelerator.sync_gradients:
                continue
            # optimizer step done (fp16 skips a step whose gradients overflowed): count it, average for SWA
            window.skipped += accelerator.optimizer_step_was_skipped
            step, micro_steps = step + 1, 0
            progress.step = step
            bar.update(1)
            if step == first_step and accelerator.is_main_process:
                bar.write(f"first step done {time.perf_counter() - run.started:.1f}s after start-up began "
                          f"(compiling took {run.compile_seconds:.1f}s)")
            if run.swa_model is not None and schedule.swa_average_after(step):
                run.swa_model.update_parameters(run.mae)
            # log: one collective for the loss window
            log_due = step % recipe.log_every_steps == 0 or step == schedule.total_steps
            if log_due:
                _log_train(run, window, step, bar)
            # validate (best/ follows the validation loss, best_swa/ the SWA average's from best_swa_from_epoch on)
            if run.val_loader is not None and schedule.val_due(step):
                val_loss, swa_val_loss = validate_run(run, step, bar.write)
                run.latest["val/loss"] = val_loss
                saver.after_validation(step, val_loss, swa_val_loss if schedule.best_swa_counts(step) else None)
            # probe the encoder on labelled frames (every process takes part)
            if run.probe is not None and (step % recipe.probe_every_steps == 0 or step == schedule.total_steps):
                _log_probe(run, step, bar)
            # stop or save: a requested stop is agreed at log steps and about every 5 s (every step on one process)
            stopped = (log_due or stop.due(accelerator, step)) and stop.agreed(accelerator, step,
                                                                               recipe.log_every_steps)
            if step % recipe.save_every_steps == 0 or step == schedule.last_step or stopped:
                saver.save_training_state(step)
            if stopped or step >= schedule.last_step:
                break
    bar.close()
    return step


def _log_train(run, window: LogWindow, step: int, bar) -> None:
    """Log the window's loss, lr and speed to the trackers and as one ``step=`` line."""
    accelerator = run.accelerator
    metrics = window.read(accelerator)
    if not math.isfinite(metrics["train/loss"]):
        raise FloatingPointError(f"loss is {metrics['train/loss']} at step {step}; try --mixed_precision bf16 or "
                                 "--clip_grad 1.0, and resume from the last checkpoint")
    metrics["train/lr"] = max(g["lr"] for g in run.optimizer.param_groups)
    accelerator.log(metrics, step=step)
    run.latest.update(metrics)
    if accelerator.is_main_process:
        shown = ("train/data_wait", "train/mfu", "train/max_memory_gb", "train/skipped_steps")
        extra = "".join(f" {key[6:]}={metrics[key]:.3g}" for key in shown if key in metrics)
        bar.write(f"step={step} epoch={step / run.schedule.steps_per_epoch:.3f} loss={metrics['train/loss']:.5f} "
                  f"lr={metrics['train/lr']:.4e} images_per_sec={metrics['train/images_per_sec']:.1f}{extra}")


def _log_probe(run, step: int, bar) -> None:
    """Probe the model (and the SWA average once it has weights): metrics to the trackers and as one ``step=``
    line (per-class APs and IoUs to the trackers only); ``best_probe/`` follows the chosen metric; the segmentation
    probe's picture to TensorBoard and ``probe_segmentation.png``."""
    metrics = run.probe.evaluate(run.mae)
    run.saver.after_probe(step, metrics)
    if run.probe.picture is not None:
        run.saver.save_probe_picture(step, run.probe.picture)
    swa_model = run.swa_model
    if swa_model is not None and swa_model.n_averaged.item() > 0:
        metrics |= {k.replace("probe/", "probe_swa/", 1): v for k, v in run.probe.evaluate(swa_model.module).items()}
    run.accelerator.log(metrics, step=step)
    per_class = ("_ap/", "_iou/")  # per-class APs and IoUs: to the trackers only
    run.latest.update({k: v for k, v in metrics.items() if not any(p in k for p in per_class)})
    if run.accelerator.is_main_process:
        bar.write(f"step={step} " + " ".join(f"{k.replace('/', '_')}={v:.4f}" for k, v in metrics.items()
                                             if not any(p in k for p in per_class)))


def validate_run(run, step: int, write) -> tuple[float, float | None]:
    """Validation loss of the model (and of the SWA average once it has weights): logged, one ``step=`` line;
    returns both losses (None for SWA's while it has no weights)."""
    recipe, accelerator = run.recipe, run.accelerator
    fixed = dict(loader=run.val_loader, accelerator=accelerator, mean=run.mean, std=run.std,
                 mask_ratio=recipe.mask_ratio, seed=recipe.seed)
    val_loss = validate(run.mae, mae=run.mae, **fixed)
    metrics = {"val/loss": val_loss}
    swa_model = run.swa_model
    if swa_model is not None and swa_model.n_averaged.item() > 0:
        metrics["val/loss_swa"] = validate(swa_model, mae=swa_model.module, **fixed)
    accelerator.log(metrics, step=step)
    if accelerator.is_main_process:
        write(f"step={step} " + " ".join(f"{k.replace('/', '_')}={v:.5f}" for k, v in metrics.items()))
    return val_loss, metrics.get("val/loss_swa")
