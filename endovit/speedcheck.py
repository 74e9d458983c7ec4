"""The GPU speed check of the MAE step in two parts, each one call of ``scripts/device_check.py --part a|b``.

a. Where the time goes: versions, the SDPA backend PyTorch picks for the encoder's and the decoder's attention
   shapes, a bucketed profile of one compiled step, an SDPA backend microbenchmark (forward + backward, max
   difference from the math backend in fp32), and the whole step under each backend.
b. What wins: torch.compile modes over >= 100 steps with their loss traces against the default mode's, the
   side-stream host-to-device copy against the copy on the compute stream, both EndoViT baselines, and a plain
   timm ViT-B/16 classifier's training step as an anchor, all in the same call.

``rehearsal`` runs the same code on a CPU with tiny sizes and Dynamo's eager backend, in seconds. Items that
would run past ``budget_seconds`` are recorded as skipped instead.
"""
from __future__ import annotations

import platform
import time
from dataclasses import replace

import torch
import torch.nn.functional as F

from endovit.benchmark import BenchConfig, baseline_of, endovit_as_ran_of, host_batches, run_benchmark
from endovit.flops import peak_tflops
from endovit.models.attention import sdpa_backend, sdpa_choice

__all__ = ["FULL", "REHEARSAL", "versions", "sdpa_microbenchmark", "timm_vit_anchor", "part_a", "part_b"]

# the two attention shapes of MAE ViT-B/16 at 224 px, batch 256: encoder 49 kept + cls, decoder 196 + cls
FULL = {"model": "mae_vit_base_patch16", "img_size": 224, "batch_size": 256, "steps": 100, "ab_steps": 50,
        "warmup": 5, "attention_shapes": [[256, 12, 50, 64], [256, 16, 197, 32]], "sdpa_iters": 20,
        "anchor_model": "vit_base_patch16_224", "anchor_classes": 1000, "backend": "inductor", "precision": "auto",
        "budget_seconds": 300}  # no item starts later: the slowest (a max-autotune compile) then still fits in 8 min
REHEARSAL = {"model": "mae_vit_tiny_patch16", "img_size": 32, "batch_size": 4, "steps": 3, "ab_steps": 2,
             "warmup": 1, "attention_shapes": [[2, 3, 2, 64], [2, 4, 5, 32]], "sdpa_iters": 2,
             "anchor_model": "vit_tiny_patch16_224", "anchor_classes": 10, "backend": "eager", "precision": "no",
             "budget_seconds": 120, "model_overrides": {"depth": 1, "decoder_depth": 1},
             "anchor_overrides": {"depth": 1}}
GPU_BACKENDS = ("flash", "cudnn", "efficient")


def versions(device: torch.device) -> dict:
    """torch, CUDA, cuDNN, Triton, timm and the device."""
    import timm

    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    cuda = device.type == "cuda"
    return {"torch": torch.__version__, "cuda": torch.version.cuda, "triton": triton_version,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
            "timm": timm.__version__, "python": platform.python_version(),
            "device": torch.cuda.get_device_name(device) if cuda else "cpu",
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device))) if cuda else None}


def _timed(fn, device: torch.device, iters: int) -> float:
    """Milliseconds per call of ``fn`` after two warm-up calls (CUDA events on GPUs)."""
    for _ in range(2):
        fn()
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        for _ in range(iters):
            fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / iters
    began = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - began) * 1000 / iters


def sdpa_microbenchmark(shape, device: torch.device, iters: int, backends=GPU_BACKENDS + ("math",)) -> dict:
    """Forward + backward of ``scaled_dot_product_attention`` on q, k, v of ``shape`` under each backend (bf16 on
    GPUs, fp32 on CPUs): ms per call and the largest difference of output and dq from the math backend in fp32.
    A backend that cannot run the shape records its error."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    generator = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(shape, device=device, dtype=dtype, generator=generator) for _ in range(3))
    grad = torch.randn(shape, device=device, dtype=dtype, generator=generator)

    def run(name: str, tensors):
        leaves = [t.detach().requires_grad_() for t in tensors]
        with sdpa_backend(name):
            out = F.scaled_dot_product_attention(*leaves)
            out.backward(grad.to(out.dtype))
        return out.detach(), leaves[0].grad

    ref_out, ref_dq = run("math", [t.float() for t in (q, k, v)])
    results = {"shape": list(shape), "dtype": str(dtype).replace("torch.", ""),
               "default_choice": sdpa_choice(shape, dtype, device)}
    for name in backends:
        try:
            out, dq = run(name, (q, k, v))
            ms = _timed(lambda name=name: run(name, (q, k, v)), device, iters)
        except RuntimeError as err:
            results[name] = {"error": str(err).splitlines()[0][:160]}
            continue
        results[name] = {"ms_fwd_bwd": round(ms, 4), "max_abs_diff_out": float((out.float() - ref_out).abs().max()),
                         "max_abs_diff_dq": float((dq.float() - ref_dq).abs().max())}
    return results


def timm_vit_anchor(sizes: dict, device: torch.device) -> dict:
    """A plain timm ViT classifier's training step (bf16 autocast on GPUs, compiled, fused AdamW, random images and
    labels): images/s and MFU on the same GPU as the MAE figures."""
    import timm
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    size, batch = sizes["img_size"], sizes["batch_size"]
    model = timm.create_model(sizes["anchor_model"], img_size=size, num_classes=sizes["anchor_classes"],
                              **sizes.get("anchor_overrides", {})).to(device)
    with FlopCounterMode(display=False) as counter:
        model(torch.randn(1, 3, size, size, device=device))
    flops = 3 * counter.get_total_flops()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    compiled = torch.compile(model, backend=sizes["backend"])
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, sizes["anchor_classes"], (batch,), device=device)
    bf16 = device.type == "cuda"

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(compiled(images), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    began = time.perf_counter()
    step()
    compile_seconds = time.perf_counter() - began
    ms = _timed(step, device, sizes["steps"])
    images_per_sec = batch * 1000 / ms
    peak = peak_tflops(device, "bf16")
    return {"model": sizes["anchor_model"], "img_size": size, "batch_size": batch, "steps": sizes["steps"],
            "precision": "bf16" if bf16 else "no", "compile_seconds": round(compile_seconds, 1),
            "ms_per_step": round(ms, 2), "images_per_sec": round(images_per_sec, 1),
            "train_gflops_per_image": round(flops / 1e9, 2),
            "mfu": round(images_per_sec * flops / (peak * 1e12), 4) if peak else None}


def _ours(sizes: dict, steps_key: str = "steps", **changes) -> BenchConfig:
    config = BenchConfig(name="endovit", model=sizes["model"], img_size=[sizes["img_size"]] * 2,
                         batch_size=sizes["batch_size"], mixed_precision=sizes["precision"], torch_compile=True,
                         compile_backend=sizes["backend"], steps=sizes[steps_key], warmup=sizes["warmup"],
                         model_overrides=sizes.get("model_overrides", {}))
    return replace(config, **changes)


def _brief(result: dict) -> dict:
    keys = ("name", "precision", "compiled", "compile_mode", "coordinate_descent", "sdpa_backend", "prefetch",
            "attention", "compile_seconds", "images_per_sec", "ms_per_step", "data_wait_ms_per_step", "mfu",
            "peak_device_mem_mb", "recompiles_after_trial", "host_syncs_per_step", "loss_first", "loss_last")
    return {k: result.get(k) for k in keys}


class _Budget:
    """Runs items until ``seconds`` have passed since the part began; later items are recorded as skipped."""

    def __init__(self, seconds: float, skipped: list):
        self.end, self.skipped = time.perf_counter() + seconds, skipped

    def allows(self, item: str) -> bool:
        if time.perf_counter() < self.end:
            return True
        self.skipped.append(item)
        print(f"skipped (time budget): {item}", flush=True)
        return False


def part_a(sizes: dict, device: torch.device) -> dict:
    """Part a: versions, SDPA choice per shape, the profile of one compiled step, SDPA microbenchmark, and the
    whole step under each SDPA backend."""
    report = {"part": "a", "versions": versions(device), "skipped": []}
    budget = _Budget(sizes["budget_seconds"], report["skipped"])
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    report["sdpa_choice"] = {"x".join(map(str, s)): sdpa_choice(s, dtype, device) for s in sizes["attention_shapes"]}
    print(f"versions {report['versions']}; SDPA picks {report['sdpa_choice']}", flush=True)
    report["sdpa_microbenchmark"] = [sdpa_microbenchmark(s, device, sizes["sdpa_iters"])
                                     for s in sizes["attention_shapes"]]
    for row in report["sdpa_microbenchmark"]:
        print(f"SDPA {row['shape']}: " + ", ".join(
            f"{b} {row[b].get('ms_fwd_bwd', 'n/a')} ms (diff {row[b].get('max_abs_diff_out', '-')})"
            for b in GPU_BACKENDS + ("math",)), flush=True)
    profiled = run_benchmark(_ours(sizes, profile_steps=1), device)
    report["profile"] = {"step": _brief(profiled), **profiled["profile"]}
    print(f"profile of one step ({profiled['profile']['source']}): {profiled['profile']['ms_per_step']}", flush=True)
    report["backend_ab"] = [_brief(profiled)]
    backends = GPU_BACKENDS if device.type == "cuda" else ("flash", "math")
    for name in backends:
        if not budget.allows(f"whole step with SDPA backend {name}"):
            continue
        try:
            result = run_benchmark(_ours(sizes, "ab_steps", name=f"endovit sdpa={name}", sdpa_backend=name), device)
        except RuntimeError as err:
            report["backend_ab"].append({"name": f"endovit sdpa={name}", "error": str(err).splitlines()[0][:160]})
            continue
        report["backend_ab"].append(_brief(result))
        print(f"step with SDPA {name}: {result['images_per_sec']} img/s", flush=True)
    return report


def _worst_relative_gap(trace: list[float], reference: list[float]) -> float:
    pairs = list(zip(trace, reference, strict=False))  # a skipped step would shorten one
    return max((abs(a - b) / max(abs(b), 1e-12) for a, b in pairs), default=float("nan"))


def part_b(sizes: dict, device: torch.device) -> dict:
    """Part b: compile modes with loss traces, the side-stream copy, both EndoViT baselines and the timm anchor."""
    report = {"part": "b", "versions": versions(device), "skipped": []}
    budget = _Budget(sizes["budget_seconds"], report["skipped"])
    default = run_benchmark(_ours(sizes), device)
    runs = {"default": default}
    shape = (sizes["batch_size"], 3, sizes["img_size"], sizes["img_size"])
    # the copy of each host batch: on the compute stream (as accelerate's loader does) vs on a side stream
    for prefetch in (False, True):
        name = f"endovit host batches, side-stream copy {'on' if prefetch else 'off'}"
        if budget.allows(name):
            runs[name] = run_benchmark(_ours(sizes, name=name, prefetch=prefetch), device, host_batches(shape))
    for make in (baseline_of, endovit_as_ran_of):
        config = make(_ours(sizes))
        if budget.allows(config.name):
            runs[config.name] = run_benchmark(config, device)
    if budget.allows("timm ViT anchor"):
        report["timm_anchor"] = timm_vit_anchor(sizes, device)
        print(f"timm anchor {report['timm_anchor']['model']}: {report['timm_anchor']['images_per_sec']} img/s "
              f"(mfu {report['timm_anchor']['mfu']})", flush=True)
    # the slowest compiles last: coordinate descent tunes every Triton kernel, max-autotune every GEMM too
    for mode, descent in (("max-autotune-no-cudagraphs", True), ("max-autotune", False)):
        name = f"endovit mode={mode}{' + coordinate descent' if descent else ''}"
        if budget.allows(name):
            runs[name] = run_benchmark(_ours(sizes, name=name, compile_mode=mode, coordinate_descent=descent), device)
    report["runs"] = []
    for name, result in runs.items():
        row = _brief(result)
        row["name"] = name
        row["vs_default"] = round(result["images_per_sec"] / default["images_per_sec"], 3)
        row["loss_trace_worst_relative_gap_vs_default"] = round(
            _worst_relative_gap(result["loss_trace"], default["loss_trace"]), 6)
        report["runs"].append(row)
        print(f"{name}: {row['images_per_sec']} img/s ({row['vs_default']}x default), loss trace gap "
              f"{row['loss_trace_worst_relative_gap_vs_default']}", flush=True)
    report["default_loss_trace"] = default["loss_trace"]
    ratios = {}
    for key in ("baseline (EndoViT settings)", "EndoViT code as it ran"):
        if key in runs:
            ratios[f"default / {key}"] = round(default["images_per_sec"] / runs[key]["images_per_sec"], 3)
    if "timm_anchor" in report:
        ratios["default / timm anchor"] = round(default["images_per_sec"] / report["timm_anchor"]["images_per_sec"], 3)
    report["ratios"] = ratios
    print(f"ratios {ratios}", flush=True)
    return report
