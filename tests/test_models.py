"""The MAE model equals the reference algorithm (He et al. 2021) and loads official-format weights."""
from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from endovit.errors import CheckpointError
from endovit.models.mae import MODEL_ARCHS, create_mae, sincos_pos_embed_2d
from endovit.weights import load_pretrained, read_weights


def reference_sincos(embed_dim: int, grid_h: int, grid_w: int) -> np.ndarray:
    """MAE's numpy recipe: meshgrid(w, h), first half encodes grid[0], second grid[1], cls row of zeros."""
    grid = np.meshgrid(np.arange(grid_w, dtype=np.float32), np.arange(grid_h, dtype=np.float32))
    grid = np.stack(grid, axis=0).reshape(2, 1, grid_h, grid_w)

    def one_d(dim, pos):
        omega = 1.0 / 10000 ** (np.arange(dim // 2, dtype=np.float64) / (dim / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    emb = np.concatenate([one_d(embed_dim // 2, grid[0]), one_d(embed_dim // 2, grid[1])], axis=1)
    return np.concatenate([np.zeros([1, embed_dim]), emb], axis=0)


def reference_masking(x: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
    n, length, dim = x.shape
    len_keep = int(length * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    kept = torch.gather(x, 1, ids_shuffle[:, :len_keep].unsqueeze(-1).repeat(1, 1, dim))
    mask = torch.ones([n, length])
    mask[:, :len_keep] = 0
    return kept, torch.gather(mask, 1, ids_restore), ids_restore


def reference_loss(imgs, pred, mask, patch, norm_pix):
    n, c, h, w = imgs.shape
    target = imgs.reshape(n, c, h // patch, patch, w // patch, patch).permute(0, 2, 4, 3, 5, 1)
    target = target.reshape(n, (h // patch) * (w // patch), patch * patch * c)
    if norm_pix:
        target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6) ** 0.5
    loss = ((pred - target) ** 2).mean(-1)
    return (loss * mask).sum() / mask.sum()


def tiny(**kwargs):
    return create_mae("mae_vit_tiny_patch16", img_size=32, **kwargs)


@pytest.mark.parametrize("grid", [(14, 14), (14, 24), (2, 3)])
def test_position_embedding_equals_mae_reference(grid):
    ours = sincos_pos_embed_2d(64, grid).numpy()
    ref = reference_sincos(64, *grid).astype(np.float32)
    np.testing.assert_array_equal(ours, ref)


def test_same_noise_gives_reference_mask_and_tokens():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 8)
    noise = torch.rand(3, 16)
    kept, mask, restore = create_mae("mae_vit_tiny_patch16", img_size=64).random_masking(x, 0.75, noise)
    ref_kept, ref_mask, ref_restore = reference_masking(x, 0.75, noise)
    torch.testing.assert_close(kept, ref_kept, rtol=0, atol=0)
    torch.testing.assert_close(mask, ref_mask, rtol=0, atol=0)
    torch.testing.assert_close(restore, ref_restore, rtol=0, atol=0)
    assert mask.sum(1).tolist() == [12, 12, 12]


@pytest.mark.parametrize("norm_pix", [False, True])
def test_loss_equals_reference_on_masked_patches_only(norm_pix):
    torch.manual_seed(1)
    model = create_mae("mae_vit_tiny_patch16", img_size=(32, 48), norm_pix_loss=norm_pix)
    imgs = torch.randn(2, 3, 32, 48)
    noise = torch.rand(2, model.num_patches)
    loss, pred, mask = model(imgs, 0.75, noise)
    torch.testing.assert_close(loss, reference_loss(imgs, pred, mask, 16, norm_pix))
    per_image = model.forward_loss(imgs, pred, mask, reduction="none")
    torch.testing.assert_close(per_image.mean(), loss)
    assert model.unpatchify(model.patchify(imgs)).equal(imgs)


def test_visible_patches_do_not_change_the_loss_of_masked_ones():
    torch.manual_seed(2)
    model = tiny()
    imgs = torch.randn(1, 3, 32, 32)
    noise = torch.tensor([[0.1, 0.9, 0.8, 0.7]])
    loss, pred, mask = model(imgs, 0.5, noise)
    assert mask.tolist() == [[0.0, 1.0, 1.0, 0.0]]
    target = model.patchify(imgs)
    altered_pred = pred.clone()
    altered_pred[:, 0] = target[:, 0] + 100.0
    assert model.forward_loss(imgs, altered_pred, mask) == loss


def test_official_checkpoint_format_loads_strictly(tmp_path):
    source = create_mae("mae_vit_tiny_patch16", img_size=32, norm_pix_loss=True)
    path = tmp_path / "mae_pretrain_vit_tiny_full.pth"
    args = argparse.Namespace(model="mae_vit_tiny_patch16", norm_pix_loss=True, input_size=32, lr=None, blr=1.5e-4)
    torch.save({"model": source.state_dict(), "args": args, "epoch": 799}, path)
    target = tiny()
    load_pretrained(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(value, target.state_dict()[key]), key


class Payload:
    """An object whose unpickling would run code (writes a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_unpickling_anything_but_tensors_and_namespace_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    marker = tmp_path / "code-ran"
    torch.save({"model": tiny().state_dict(), "hook": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match="cannot read weights"):
        read_weights(path)
    assert not marker.exists()


def test_safetensors_and_file_url_load_with_cache(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    source = tiny()
    path = tmp_path / "weights.safetensors"
    save_file(source.state_dict(), path)
    target = tiny()
    load_pretrained(target, f"file://{path}")
    assert torch.equal(target.blocks[0].attn.qkv.weight, source.blocks[0].attn.qkv.weight)
    cached = list((tmp_path / "torch" / "hub" / "endovit").iterdir())
    assert len(cached) == 1 and cached[0].name.endswith("weights.safetensors")
    path.unlink()
    load_pretrained(tiny(), f"file://{path}")


def test_weights_load_into_non_square_model_with_recomputed_position_embeddings(tmp_path):
    source = tiny()
    path = tmp_path / "square.pth"
    torch.save({"model": source.state_dict()}, path)
    wide = create_mae("mae_vit_tiny_patch16", img_size=(32, 64))
    load_pretrained(wide, path)
    assert wide.pos_embed.shape == (1, 1 + 2 * 4, 192)
    np.testing.assert_array_equal(wide.pos_embed[0].numpy(), reference_sincos(192, 2, 4).astype(np.float32))
    assert torch.equal(wide.blocks[3].mlp.fc1.weight, source.blocks[3].mlp.fc1.weight)
    loss, pred, mask = wide(torch.randn(2, 3, 32, 64), 0.75)
    assert pred.shape == (2, 8, 768) and mask.sum() == 12


def test_mismatched_weights_give_one_error_naming_the_keys(tmp_path):
    state = tiny().state_dict()
    del state["decoder_pred.bias"]
    state["head.weight"] = torch.zeros(3)
    state["blocks.0.attn.qkv.weight"] = torch.zeros(5, 5)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(CheckpointError) as err:
        load_pretrained(tiny(), path)
    message = str(err.value)
    assert "\n" not in message
    assert "missing keys: decoder_pred.bias" in message
    assert "unexpected keys: head.weight" in message
    assert "blocks.0.attn.qkv.weight (5, 5) vs model (576, 192)" in message


def test_named_variants_have_official_mae_sizes():
    expected = {"mae_vit_base_patch16": (768, 12, 12), "mae_vit_large_patch16": (1024, 24, 16),
                "mae_vit_huge_patch14": (1280, 32, 16)}
    for name, (dim, depth, heads) in expected.items():
        arch = MODEL_ARCHS[name]
        assert (arch["embed_dim"], arch["depth"], arch["num_heads"]) == (dim, depth, heads)
        assert (arch["decoder_embed_dim"], arch["decoder_depth"], arch["decoder_num_heads"]) == (512, 8, 16)
    def block(d):
        return 2 * d + (d * 3 * d + 3 * d) + (d * d + d) + 2 * d + (d * 4 * d + 4 * d) + (4 * d * d + d)

    encoder = (768 * 3 * 16 * 16 + 768) + 768 + 12 * block(768) + 2 * 768
    decoder = (768 * 512 + 512) + 512 + 8 * block(512) + 2 * 512 + (512 * 768 + 768)
    base = create_mae("mae_vit_base_patch16")
    assert sum(p.numel() for p in base.parameters() if p.requires_grad) == encoder + decoder
    assert not base.pos_embed.requires_grad and base.pos_embed.shape == (1, 197, 768)


def test_image_size_not_divisible_by_patch_is_rejected():
    with pytest.raises(ValueError, match="not divisible by patch_size 16"):
        create_mae("mae_vit_tiny_patch16", img_size=(32, 40))
