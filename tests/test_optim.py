"""EndoViT's optimizer recipe: layer-wise lr decay over encoder and decoder, decay exclusions, schedule."""
from __future__ import annotations

import math

import pytest
import torch

from endovit.models.mae import create_mae
from endovit.optim import lr_at_step, param_groups, set_lr


@pytest.fixture(scope="module")
def base_groups():
    return param_groups(create_mae("mae_vit_base_patch16"), weight_decay=0.05, layer_decay=0.75)


def scale_of(groups, name):
    return next(g["lr_scale"] for g in groups if name in g["param_names"])


def decay_of(groups, name):
    return next(g["weight_decay"] for g in groups if name in g["param_names"])


def test_layer_scales_follow_endovit_v_shape(base_groups):
    expected_ids = {
        "patch_embed.proj.weight": 0, "cls_token": 0,
        "blocks.0.attn.qkv.weight": 1, "blocks.11.mlp.fc2.weight": 12,
        "decoder_blocks.0.attn.qkv.weight": 12, "decoder_blocks.7.mlp.fc1.weight": 5,
        "decoder_norm.weight": 4, "decoder_pred.weight": 4,
        "norm.weight": 13, "decoder_embed.weight": 13, "mask_token": 13,
    }
    for name, layer in expected_ids.items():
        assert scale_of(base_groups, name) == pytest.approx(0.75 ** (13 - layer)), name


def test_no_weight_decay_for_biases_norms_tokens(base_groups):
    for name in ["cls_token", "mask_token", "blocks.3.norm1.weight", "blocks.3.attn.qkv.bias", "decoder_pred.bias"]:
        assert decay_of(base_groups, name) == 0.0, name
    for name in ["blocks.3.attn.qkv.weight", "patch_embed.proj.weight", "decoder_embed.weight"]:
        assert decay_of(base_groups, name) == 0.05, name
    names = [n for g in base_groups for n in g["param_names"]]
    assert "pos_embed" not in names and "decoder_pos_embed" not in names
    model = create_mae("mae_vit_base_patch16")
    assert len(names) == len(set(names)) == sum(1 for p in model.parameters() if p.requires_grad)


def test_schedule_warmup_then_half_cycle_cosine():
    kwargs = dict(steps_per_epoch=100, lr=1.5e-3, min_lr=1e-6, epochs=15, warmup_epochs=1.0)
    assert lr_at_step(step=0, **kwargs) == 0.0
    assert lr_at_step(step=50, **kwargs) == pytest.approx(0.75e-3)
    assert lr_at_step(step=100, **kwargs) == pytest.approx(1.5e-3)
    midpoint = 100 + 700
    assert lr_at_step(step=midpoint, **kwargs) == pytest.approx(1e-6 + (1.5e-3 - 1e-6) * 0.5)
    assert lr_at_step(step=1500, **kwargs) == pytest.approx(1e-6)
    step = 937
    progress = (step / 100 - 1.0) / 14.0
    expected = 1e-6 + (1.5e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * progress))
    assert lr_at_step(step=step, **kwargs) == pytest.approx(expected)


def test_swa_anneals_to_swa_lr_over_one_epoch_then_holds():
    kwargs = dict(steps_per_epoch=100, lr=1.5e-3, min_lr=1e-6, epochs=15, warmup_epochs=1.0,
                  swa=True, swa_start_epoch=10, swa_lr=4e-4)
    at_start = lr_at_step(step=1000, **{**kwargs, "swa": False})
    assert lr_at_step(step=999, **kwargs) == lr_at_step(step=999, **{**kwargs, "swa": False})
    assert lr_at_step(step=1000, **kwargs) == pytest.approx(at_start)
    assert lr_at_step(step=1050, **kwargs) == pytest.approx((at_start + 4e-4) / 2)
    assert lr_at_step(step=1100, **kwargs) == pytest.approx(4e-4)
    assert lr_at_step(step=1499, **kwargs) == pytest.approx(4e-4)


def test_set_lr_applies_layer_scale():
    model = create_mae("mae_vit_tiny_patch16", img_size=32)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05, 0.5), lr=1.0)
    set_lr(optimizer, 1e-3)
    assert sorted({round(g["lr"] / 1e-3, 8) for g in optimizer.param_groups}) == sorted(
        {round(0.5 ** (13 - i), 8) for i in [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]})
