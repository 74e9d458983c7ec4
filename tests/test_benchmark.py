"""The speed switches change speed, not results; the benchmark reports every figure; FLOPs are counted right."""
from __future__ import annotations

import json
import warnings
from dataclasses import replace

import pytest
import torch
from helpers.scripts import run_script
from torch.utils.flop_counter import FlopCounterMode

from endovit.benchmark import BenchConfig, baseline_of, run_benchmark
from endovit.engine import compile_model
from endovit.flops import forward_flops, train_flops
from endovit.models.mae import MaskedAutoencoderViT, create_mae

TINY = BenchConfig(model="mae_vit_tiny_patch16", img_size=[32, 32], batch_size=4, steps=3, warmup=1,
                   mixed_precision="no")
FIELDS = {"name", "model", "img_size", "batch_size", "device", "precision", "compiled", "compile_seconds",
          "fused_attention", "fused_optimizer", "sync_every_step", "data", "images_per_sec", "ms_per_step",
          "data_wait_ms_per_step", "compute_ms_per_step", "train_gflops_per_image", "achieved_tflops", "peak_tflops",
          "mfu", "peak_host_rss_mb", "peak_device_mem_mb", "loss_first", "loss_last"}


def test_flops_match_a_hand_count():
    mae = MaskedAutoencoderViT(img_size=32, patch_size=16, embed_dim=8, depth=1, num_heads=2, decoder_embed_dim=4,
                               decoder_depth=1, decoder_num_heads=1)
    # 4 patches, mask 0.75 keeps 1 (+cls = 2 encoder tokens), decoder sees 5 tokens, 768 values per patch.
    patch_embed = 2 * 4 * 768 * 8
    encoder = 2 * 2 * 8 * 8 * 12 + 4 * 2 * 2 * 8
    decoder_embed = 2 * 2 * 8 * 4
    decoder = 2 * 5 * 4 * 4 * 12 + 4 * 5 * 5 * 4
    head = 2 * 5 * 4 * 768
    assert forward_flops(mae, 0.75) == patch_embed + encoder + decoder_embed + decoder + head
    assert train_flops(mae, 0.75) == 3 * forward_flops(mae, 0.75)


def test_flops_match_torch_flop_counter_on_a_real_forward():
    mae = create_mae("mae_vit_tiny_patch16", img_size=(32, 48))
    for module in mae.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
    with FlopCounterMode(display=False) as counter:
        mae(torch.randn(1, 3, 32, 48), 0.75)
    assert counter.get_total_flops() == forward_flops(mae, 0.75)


def test_benchmark_script_writes_every_field_and_the_ratio(tmp_path):
    out = tmp_path / "bench.json"
    result = run_script("scripts/benchmark.py", "--model", "mae_vit_tiny_patch16", "--img_size", "32",
                        "--batch_size", "4", "--steps", "2", "--warmup", "1", "--configs", "endovit,baseline",
                        "--json", str(out))
    rows = json.loads(out.read_text())
    assert [r["name"] for r in rows] == ["endovit", "baseline (EndoViT settings)"]
    for row in rows:
        assert FIELDS <= set(row)
        assert row["images_per_sec"] > 0 and row["ms_per_step"] > 0 and row["train_gflops_per_image"] > 0
        assert row["fused_attention"] is True and row["device"].startswith("cpu")
    assert rows[1]["sync_every_step"] and not rows[1]["fused_optimizer"] and rows[1]["precision"] == "no"
    assert "endovit / baseline:" in result.stdout and "img/s" in result.stdout


def test_switches_do_not_change_the_loss():
    cpu = torch.device("cpu")
    fp32 = run_benchmark(TINY, cpu)
    unfused = run_benchmark(replace(TINY, fused_optimizer=False), cpu)
    baseline = run_benchmark(baseline_of(TINY), cpu)
    bf16 = run_benchmark(replace(TINY, mixed_precision="bf16"), cpu)
    assert baseline["loss_first"] == unfused["loss_first"] == fp32["loss_first"]
    assert baseline["loss_last"] == unfused["loss_last"]
    assert fp32["loss_last"] == pytest.approx(unfused["loss_last"], rel=1e-4)
    assert bf16["precision"] == "bf16"
    assert bf16["loss_last"] == pytest.approx(fp32["loss_last"], rel=3e-2)


def test_activation_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    plain = create_mae("mae_vit_tiny_patch16", img_size=32)
    checkpointed = create_mae("mae_vit_tiny_patch16", img_size=32)
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing(True)
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 4)
    for model in (plain, checkpointed):
        model(images, 0.5, noise)[0].backward()
    for (name, a), (_, b) in zip(plain.named_parameters(), checkpointed.named_parameters(), strict=True):
        if a.grad is not None:
            torch.testing.assert_close(a.grad, b.grad, msg=name)


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    model = create_mae("mae_vit_tiny_patch16", img_size=32)

    def broken_trial(candidate):
        raise RuntimeError("inductor is unavailable")

    with pytest.warns(UserWarning, match="torch.compile failed, training eagerly instead: RuntimeError"):
        result, seconds = compile_model(model, broken_trial, enabled=True)
    assert result is model and seconds == 0.0

    def no_compiler(*args, **kwargs):
        raise ImportError("no torch._dynamo on this platform")

    monkeypatch.setattr(torch, "compile", no_compiler)
    with pytest.warns(UserWarning, match="ImportError"):
        assert compile_model(model, lambda m: None, enabled=True)[0] is model
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert compile_model(model, broken_trial, enabled=False) == (model, 0.0)
