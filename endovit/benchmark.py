"""Training-step speed: timed runs of the real step under chosen switches, and the input pipelines compared."""
from __future__ import annotations

import math
import resource
import time
import warnings
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from endovit.data.transforms import normalize
from endovit.engine import compile_model, compile_trial, compiled_graphs, sdpa_active, train_step
from endovit.flops import peak_tflops as peak_tflops_of
from endovit.flops import train_flops
from endovit.hardware import measured_cpu_precision, resolve_mixed_precision
from endovit.models.attention import sdpa_backend, use_timm045_attention
from endovit.models.mae import create_mae
from endovit.optim import build_optimizer, param_groups
from endovit.prefetch import prefetched
from endovit.profiling import profile_buckets
from endovit.recipe import Recipe
from endovit.recipes import ENDOVIT_MEAN, ENDOVIT_STD

__all__ = ["BenchConfig", "EXACT_LEVERS", "baseline_of", "endovit_as_ran_of", "host_batches", "run_benchmark",
           "run_probe_benchmark", "endovit_loader", "endovit_batches",
           "our_batches"]

MEAN, STD = ENDOVIT_MEAN, ENDOVIT_STD
@dataclass
class BenchConfig:
    """One configuration of the training step to time."""

    name: str = "endovit"
    model: str = "mae_vit_base_patch16"
    model_overrides: dict = field(default_factory=dict)  # architecture changes, e.g. {"depth": 1} for rehearsals
    img_size: list = field(default_factory=lambda: [224, 224])
    batch_size: int = 8
    mask_ratio: float = 0.75
    mixed_precision: str = "auto"
    torch_compile: bool = False
    compile_backend: str = "inductor"  # "eager" checks Dynamo's graph capture and guards without compiling kernels
    fused_optimizer: bool = True
    grad_scaler_fp16: bool = False  # EndoViT: fp16 autocast with a GradScaler (CUDA only)
    sync_every_step: bool = False  # EndoViT: loss.item(), grad norm and synchronize every step
    steps: int = 10
    warmup: int = 3
    seed: int = 0
    # exact levers (same loss and gradients to float rounding), on by default
    normalize_in_forward: bool = True  # uint8 pixels into the (compiled) forward, no eager fp32 pass before it
    loss_only: bool = True  # the training forward returns the loss alone (nothing for accelerate to convert)
    kept_patch_embed: bool = True  # embed the kept patches only
    gather_unshuffle: bool = True  # the decoder unshuffle's backward as a gather
    # GPU-dependent choices
    attention: str = "timm"  # "timm045": EndoViT's explicit attention (q @ k^T * scale, softmax, @ v)
    sdpa_backend: str = "auto"  # auto, flash, cudnn, efficient, math (see endovit.models.attention)
    compile_mode: str | None = None  # torch.compile's mode: None (default), max-autotune-no-cudagraphs, ...
    coordinate_descent: bool = False  # inductor's coordinate-descent kernel tuning
    prefetch: bool = False  # copy the next host batch on a side stream (CUDA; with host batches)
    profile_steps: int = 0  # then profile this many steps after the timed ones (``endovit.profiling``)


EXACT_LEVERS = ("normalize_in_forward", "loss_only", "kept_patch_embed", "gather_unshuffle")


def baseline_of(config: BenchConfig) -> BenchConfig:
    """EndoViT's settings on current timm: the same step with every optimisation off (fused SDPA attention stays,
    as today's timm Block computes it)."""
    return BenchConfig(**{**asdict(config), "name": "baseline (EndoViT settings)", "mixed_precision": "no",
                          "torch_compile": False, "fused_optimizer": False, "grad_scaler_fp16": True,
                          "sync_every_step": True, "compile_mode": None, "coordinate_descent": False,
                          "sdpa_backend": "auto", "prefetch": False, **dict.fromkeys(EXACT_LEVERS, False)})


def endovit_as_ran_of(config: BenchConfig) -> BenchConfig:
    """EndoViT's code path as it ran (timm 0.4.5, torch 1.13): ``baseline_of`` with explicit attention."""
    return replace(baseline_of(config), name="EndoViT code as it ran", attention="timm045")


def _fresh_accelerator(mixed_precision: str, device: torch.device) -> Accelerator:
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _host_syncs_per_step(step, next_batch, device: torch.device, steps: int = 2) -> float | None:
    """Host synchronisations per step, counted by CUDA's sync debug mode (None on CPUs). Only its
    "called a synchronizing CUDA operation" warnings count (setting the mode warns too)."""
    if device.type != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                step(next_batch())
        finally:
            torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize(device)
    return sum("called a synchronizing" in str(w.message) for w in caught) / steps


def host_batches(shape, count: int = 4, seed: int = 0):
    """Endless uint8 batches in host memory (pinned where CUDA is), cycling through ``count`` of them: the
    host-to-device copy of every step without a DataLoader's cost."""
    generator = torch.Generator().manual_seed(seed)
    pinned = torch.cuda.is_available()
    pool = [torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator) for _ in range(count)]
    pool = [b.pin_memory() for b in pool] if pinned else pool
    while True:
        for pixels in pool:
            yield {"pixels": pixels}


def _uses_cudagraphs(config: BenchConfig) -> bool:
    return config.torch_compile and config.compile_mode in ("max-autotune", "reduce-overhead")


def run_benchmark(config: BenchConfig, device: torch.device, batches=None, peak_tflops: float | None = None) -> dict:
    """Time ``config.steps`` optimizer steps after ``config.warmup`` and return every figure as a dict.

    ``batches`` iterates dicts with uint8 ``pixels`` (normalised on the device, in the forward unless
    ``normalize_in_forward`` is off) or already normalised float ``images``; by default one random uint8 batch
    already on the device is reused, so only the step is timed. On CUDA the timed loop is measured with CUDA events.
    """
    with sdpa_backend(config.sdpa_backend):  # active while compiling: the backend is chosen at trace time
        return _run_benchmark(config, device, batches, peak_tflops)


def _run_benchmark(config: BenchConfig, device: torch.device, batches, peak_tflops: float | None) -> dict:
    precision, _ = resolve_mixed_precision(config.mixed_precision, device, lambda: measured_cpu_precision(
        config.model, config.img_size, config.batch_size))
    if config.grad_scaler_fp16:
        precision = "fp16" if device.type == "cuda" else "no"
    accelerator = _fresh_accelerator(precision, device)
    torch.manual_seed(config.seed)
    mae = create_mae(config.model, img_size=tuple(config.img_size), **config.model_overrides)
    mae.kept_patch_embed, mae.gather_unshuffle = config.kept_patch_embed, config.gather_unshuffle
    if config.attention == "timm045":
        use_timm045_attention(mae)
    elif config.attention != "timm":
        raise ValueError(f"attention {config.attention!r}: choose timm or timm045")
    optimizer = build_optimizer(param_groups(mae, 0.05, 0.75), 1e-4, config.fused_optimizer, accelerator.device)
    model, optimizer = accelerator.prepare(mae, optimizer)
    mae = accelerator.unwrap_model(model)
    generator = torch.Generator(device=accelerator.device).manual_seed(config.seed)
    shape = (config.batch_size, 3, *config.img_size)
    fixed_batch = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator, device=accelerator.device)
    clip = math.inf if config.sync_every_step else None
    mean, std = (torch.tensor(v, device=accelerator.device).view(1, -1, 1, 1) for v in (MEAN, STD))
    stats = (mean, std) if config.normalize_in_forward else None
    cudagraphs = _uses_cudagraphs(config)

    def step(batch: tuple) -> torch.Tensor:
        images, pixel_stats = batch
        noise = torch.rand(images.shape[0], mae.num_patches, generator=generator, device=accelerator.device)
        if cudagraphs:
            torch.compiler.cudagraph_mark_step_begin()
        with accelerator.accumulate(model):
            loss = train_step(accelerator, model, optimizer, images, noise, mask_ratio=config.mask_ratio,
                              clip_grad=clip, pixel_stats=pixel_stats, loss_only=config.loss_only)
        if config.sync_every_step:
            loss.item()
            _synchronize(accelerator.device)
        return loss.clone() if cudagraphs else loss  # a CUDA graph's output is overwritten by its next replay

    trial = compile_trial(accelerator, model, num_patches=mae.num_patches, batch_size=config.batch_size,
                          img_size=config.img_size, mask_ratio=config.mask_ratio,
                          pixel_stats=stats, loss_only=config.loss_only)
    model, compile_seconds = compile_model(model, trial, enabled=config.torch_compile, backend=config.compile_backend,
                                           mode=config.compile_mode, coordinate_descent=config.coordinate_descent)
    graphs_after_trial = compiled_graphs()
    source = None if batches is None else iter(batches)
    if source is not None and config.prefetch:
        source = prefetched(source, accelerator.device)

    def next_batch() -> tuple:
        batch = {"pixels": fixed_batch} if source is None else next(source)
        if "images" in batch:
            return batch["images"].to(accelerator.device, non_blocking=True), None
        pixels = batch["pixels"].to(accelerator.device, non_blocking=True)
        return (pixels, stats) if stats is not None else (normalize(pixels, mean, std), None)

    losses = [step(next_batch()).float() for _ in range(config.warmup)]
    _synchronize(accelerator.device)
    cuda = accelerator.device.type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(accelerator.device)
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
    data_wait = 0.0
    start = time.perf_counter()
    if cuda:
        events[0].record()
    for _ in range(config.steps):
        waited = time.perf_counter()
        pixels = next_batch()
        data_wait += time.perf_counter() - waited
        losses.append(step(pixels).float())
    if cuda:
        events[1].record()
    _synchronize(accelerator.device)
    elapsed = events[0].elapsed_time(events[1]) / 1000 if cuda else time.perf_counter() - start
    host_syncs = None if config.sync_every_step else _host_syncs_per_step(step, next_batch, accelerator.device)
    profile = profile_buckets(step, next_batch, accelerator.device, config.profile_steps) if config.profile_steps \
        else None

    timings = {"elapsed": elapsed, "data_wait": data_wait, "compile_seconds": compile_seconds,
               "recompiles": compiled_graphs() - graphs_after_trial if model is not mae else None,
               "host_syncs": host_syncs, "losses": losses, "profile": profile}
    peak = peak_tflops if peak_tflops is not None else peak_tflops_of(accelerator.device, precision)
    return _result(config, mae, model, accelerator.device, precision, peak, batches is None, timings)


def run_probe_benchmark(model: str, img_size: int, frames: int, device: torch.device) -> dict:
    """Seconds of one in-training probe of ``model`` on ``frames`` frames kept on the device: features (cls and
    mean-pooled patch tokens, unmasked, batches of 64, bf16 on GPUs that run it natively), then k-NN and the linear
    probe with half the frames on each side. Random pixels and tool labels: this measures the cost, not a score.
    One probe first, untimed, warms the kernels up."""
    import datasets

    from endovit.probes import TOOLS, Labels, ProbeSettings, probe_metrics
    from endovit.probes.features import features_from_pixels
    from endovit.probes.probe import ProbeData

    precision, _ = resolve_mixed_precision("auto", device, lambda: ("no", "the probe runs as the CPU step runs"))
    accelerator = _fresh_accelerator(precision, device)
    generator = torch.Generator(device=accelerator.device).manual_seed(0)
    pixels = torch.randint(0, 256, (frames, 3, img_size, img_size), dtype=torch.uint8, generator=generator,
                           device=accelerator.device)
    videos = ["video01"] * (frames // 2) + ["video02"] * (frames - frames // 2)  # the first half fits the probe
    labels = Labels(np.random.default_rng(0).integers(0, 2, (frames, len(TOOLS))), list(TOOLS))
    data = ProbeData(datasets.Dataset.from_dict({"video": videos}), labels, frames // 2,
                     {"train": ["video01"], "test": ["video02"]})
    settings = ProbeSettings(data="random pixels", label_format="cholec80_tool", kind="both")
    mae = create_mae(model, img_size=(img_size, img_size)).to(accelerator.device).eval()
    mean, std = (torch.tensor(v, device=accelerator.device).view(1, -1, 1, 1) for v in (MEAN, STD))
    seconds = {}
    for _ in range(2):
        start = time.perf_counter()
        features = features_from_pixels(mae, pixels, accelerator, mean=mean, std=std, batch_size=settings.batch_size)
        _synchronize(accelerator.device)
        seconds["features"] = time.perf_counter() - start
        start = time.perf_counter()
        probe_metrics(features, data, settings)
        seconds["classifiers"] = time.perf_counter() - start
    return {"model": model, "img_size": img_size, "frames": frames, "precision": precision,
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "pixels_gb": round(pixels.numel() / 1e9, 2), "features_seconds": round(seconds["features"], 3),
            "classifiers_seconds": round(seconds["classifiers"], 3),
            "probe_seconds": round(seconds["features"] + seconds["classifiers"], 3)}


def _result(config: BenchConfig, mae, model, device: torch.device, precision: str, peak: float | None,
            synthetic: bool, t: dict) -> dict:
    """Every figure of one timed configuration, as ``run_benchmark`` returns it."""
    images_per_sec = config.steps * config.batch_size / t["elapsed"]
    flops = train_flops(mae, config.mask_ratio)
    achieved = flops * images_per_sec / 1e12
    cpu = f"cpu ({torch.get_num_threads()} threads)"
    return {
        **asdict(config),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else cpu,
        "precision": precision,
        "compiled": model is not mae,
        "recompiles_after_trial": t["recompiles"],
        "host_syncs_per_step": t["host_syncs"],
        "compile_seconds": round(t["compile_seconds"], 2),
        "fused_attention": sdpa_active(mae),
        "data": "synthetic on device" if synthetic else "DataLoader",
        "images_per_sec": round(images_per_sec, 2),
        "ms_per_step": round(1000 * t["elapsed"] / config.steps, 2),
        "data_wait_ms_per_step": round(1000 * t["data_wait"] / config.steps, 2),
        "compute_ms_per_step": round(1000 * (t["elapsed"] - t["data_wait"]) / config.steps, 2),
        "train_gflops_per_image": round(flops / 1e9, 3),
        "achieved_tflops": round(achieved, 3),
        "peak_tflops": peak,
        "mfu": round(achieved / peak, 4) if peak else None,
        "peak_host_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_device_mem_mb": (round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
                               if device.type == "cuda" else None),
        "loss_first": round(t["losses"][0].item(), 5),
        "loss_last": round(t["losses"][-1].item(), 5),
        "loss_trace": [round(v, 6) for v in torch.stack(t["losses"]).tolist()],
        **({"profile": t["profile"]} if t.get("profile") else {}),
    }


def _cycle(loader, set_epoch=None):
    epoch = 0
    while True:
        if set_epoch is not None:
            set_epoch(epoch)
        yield from loader
        epoch += 1


def endovit_loader(frames_dir, img_size, batch_size: int, num_workers: int) -> torch.utils.data.DataLoader:
    """EndoViT's input pipeline: torchvision ImageFolder + RandomResizedCrop(0.6-1, bicubic) + flip + ToTensor +
    Normalize, with its loader settings (shuffle, pin_memory on CUDA, drop_last, workers not persistent)."""
    from torchvision import datasets as tv_datasets
    from torchvision import transforms as T

    transform = T.Compose([
        T.RandomResizedCrop(list(img_size), scale=(0.6, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD),
    ])
    return torch.utils.data.DataLoader(
        tv_datasets.ImageFolder(str(frames_dir), transform=transform), batch_size=batch_size, shuffle=True,
        num_workers=num_workers, pin_memory=torch.cuda.is_available(), drop_last=True)


def endovit_batches(frames_dir: str, img_size, batch_size: int, num_workers: int):
    """Endless normalised float batches from ``endovit_loader``."""
    return ({"images": images} for images, _ in _cycle(endovit_loader(frames_dir, img_size, batch_size,
                                                                       num_workers)))


def our_batches(frames_dir: str, img_size, batch_size: int, num_workers: int):
    """Our input pipeline (the one pretrain.py uses) over the same frames. Yields uint8 batches."""
    from endovit.data import build_train_loader, load_frames

    loader = build_train_loader(load_frames(frames_dir), img_size=img_size, crop_scale=[0.6, 1.0],
                                batch_size=batch_size, seed=0,
                                num_workers=num_workers, fast_decode=Recipe.fast_decode)
    return _cycle(loader, loader.sampler.set_epoch)


def run_segmentation_probe_benchmark(model: str, img_size: int, frames: int, device: torch.device, *, mask_size,
                                     classes: int = 8, batch_size: int = 16) -> dict:
    """Seconds of each stage of the segmentation probe of ``model`` on ``frames`` random frames (half fit, half
    scored) with random blocky masks of ``mask_size`` (H, W): features (bf16 on GPUs that run it natively, as the
    in-training probe), fit, predict (upsampled to the masks), scores. Each stage ends when its GPU work has run."""
    from endovit.probes.features import features_from_pixels
    from endovit.probes.segmentation import class_names, fit_segmentation_probe, predict_masks, segmentation_scores

    precision, _ = resolve_mixed_precision("auto", device, lambda: ("no", "the probe runs as the CPU step runs"))
    accelerator = _fresh_accelerator(precision, device)
    mae = create_mae(model, img_size=(img_size, img_size)).to(accelerator.device).eval()
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (frames, 3, img_size, img_size), generator=generator, dtype=torch.uint8)
    blocks = torch.randint(0, classes, (frames, 1, 8, 14), generator=generator).float()
    masks = torch.nn.functional.interpolate(blocks, size=tuple(mask_size), mode="nearest")[:, 0].to(torch.uint8)
    n, seconds = frames // 2, {}
    last = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal last
        _synchronize(accelerator.device)
        seconds[name], last = round(time.perf_counter() - last, 3), time.perf_counter()

    tokens = features_from_pixels(mae, pixels, accelerator, mean=MEAN, std=STD, batch_size=batch_size,
                                  dense=True)["patch"]
    stage("features_s")
    probe = fit_segmentation_probe(tokens[:n], masks[:n].to(tokens.device), num_classes=classes)
    stage("fit_s")
    pred = predict_masks(probe, tokens[n:], tuple(mask_size))
    stage("predict_s")
    segmentation_scores(pred.numpy(), masks[n:].numpy(), class_names(classes))
    stage("scores_s")
    return {"model": model, "img_size": img_size, "frames": frames, "mask_size": list(mask_size),
            "precision": precision, **seconds, "total_s": round(sum(seconds.values()), 3)}
