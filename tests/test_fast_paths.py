"""The step's fast paths compute the official MAE step: same loss and gradients to float rounding (fp32, CPU),
official-format weights still load with strict=True, and EndoViT's explicit attention equals the fused one."""
from __future__ import annotations

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState

from endovit.data.transforms import normalize
from endovit.engine import train_step
from endovit.models.attention import sdpa_backend, sdpa_choice, use_timm045_attention
from endovit.models.mae import PermutationGather, create_mae
from endovit.prefetch import prefetched

MEAN, STD = torch.tensor([0.3, 0.2, 0.1]).view(1, 3, 1, 1), torch.tensor([0.2, 0.25, 0.3]).view(1, 3, 1, 1)


def official_key_names(depth: int, decoder_depth: int) -> set[str]:
    """The parameter and buffer names of facebookresearch/mae's ``MaskedAutoencoderViT`` state dict."""
    block = [f"{m}.{p}" for m in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2")
             for p in ("weight", "bias")]
    names = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias",
             "decoder_embed.weight", "decoder_embed.bias", "mask_token", "decoder_pos_embed", "decoder_norm.weight",
             "decoder_norm.bias", "decoder_pred.weight", "decoder_pred.bias"}
    names |= {f"blocks.{i}.{b}" for i in range(depth) for b in block}
    return names | {f"decoder_blocks.{i}.{b}" for i in range(decoder_depth) for b in block}


def official(model):
    """The same model on the official path (conv over every patch, then masking; scatter-add unshuffle)."""
    model.kept_patch_embed = model.gather_unshuffle = False
    return model


def pair(**kwargs):
    torch.manual_seed(0)
    fast = create_mae("mae_vit_tiny_patch16", img_size=(32, 48), depth=2, decoder_depth=1, **kwargs)
    reference = official(create_mae("mae_vit_tiny_patch16", img_size=(32, 48), depth=2, decoder_depth=1, **kwargs))
    reference.load_state_dict(fast.state_dict(), strict=True)
    return fast, reference


def grads(model) -> dict[str, torch.Tensor]:
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("norm_pix", [False, True])
def test_fast_forward_gives_the_official_loss_and_gradients(norm_pix):
    fast, reference = pair(norm_pix_loss=norm_pix)
    pixels = torch.randint(0, 256, (3, 3, 32, 48), dtype=torch.uint8)
    noise = torch.rand(3, fast.num_patches)
    loss = fast(pixels, 0.75, noise, pixel_stats=(MEAN, STD), loss_only=True)
    ref_loss, ref_pred, ref_mask = reference(normalize(pixels, MEAN, STD), 0.75, noise)
    assert loss.shape == () and ref_loss.shape == ()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    loss.backward()
    ref_loss.backward()
    fast_grads, ref_grads = grads(fast), grads(reference)
    assert fast_grads.keys() == ref_grads.keys() and "patch_embed.proj.weight" in fast_grads
    for name, grad in ref_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    _, pred, mask = fast(normalize(pixels, MEAN, STD), 0.75, noise)  # pictures and validation still get pred
    torch.testing.assert_close(pred, ref_pred, rtol=1e-4, atol=1e-5)
    assert torch.equal(mask, ref_mask)


def test_kept_patch_embedding_equals_conv_then_gather():
    model = create_mae("mae_vit_tiny_patch16", img_size=(32, 64))
    images, noise = torch.randn(2, 3, 32, 64), torch.rand(2, model.num_patches)
    ids_shuffle, _, _ = model.masking_ids(noise, 0.5)
    kept = ids_shuffle[:, :4]
    conv = model.patch_embed(images) + model.pos_embed[:, 1:, :]
    expected = torch.gather(conv, 1, kept.unsqueeze(-1).expand(-1, -1, conv.shape[-1]))
    torch.testing.assert_close(model.embed_kept_patches(images, kept), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="input is 32x32, the model takes 32x64"):
        model.embed_kept_patches(torch.randn(1, 3, 32, 32), kept[:1])


def test_unshuffle_backward_by_gather_is_exact():
    torch.manual_seed(0)
    noise = torch.rand(3, 10)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    x = torch.randn(3, 10, 5, requires_grad=True)
    upstream = torch.randn(3, 10, 5)
    ours = PermutationGather.apply(x, ids_restore, ids_shuffle)
    (ours_grad,) = torch.autograd.grad(ours, x, upstream)
    plain = torch.gather(x, 1, ids_restore.unsqueeze(-1).expand(-1, -1, 5))
    (plain_grad,) = torch.autograd.grad(plain, x, upstream)
    assert torch.equal(ours, plain) and torch.equal(ours_grad, plain_grad)


def test_official_format_weights_load_strictly_into_the_fast_model():
    fast, _ = pair()
    assert set(fast.state_dict()) == official_key_names(2, 1)
    state = {k: v.clone() for k, v in fast.state_dict().items()}
    other = create_mae("mae_vit_tiny_patch16", img_size=(32, 48), depth=2, decoder_depth=1)
    assert other.load_state_dict(state, strict=True).missing_keys == []


def test_train_step_on_uint8_pixels_equals_the_eager_normalised_step():
    """Two optimizer steps each way: uint8 + stats in the forward vs the official call on normalised floats (SGD:
    Adam's first step would turn float rounding in near-zero gradients into +-lr)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(cpu=True, mixed_precision="no")
    fast, reference = pair()
    pixels = torch.randint(0, 256, (2, 3, 32, 48), dtype=torch.uint8)
    noise = torch.rand(2, fast.num_patches)
    results = []
    for model, kwargs in ((fast, {"pixel_stats": (MEAN, STD)}), (reference, {"loss_only": False})):
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        images = pixels if "pixel_stats" in kwargs else normalize(pixels, MEAN, STD)
        losses = [train_step(accelerator, model, optimizer, images, noise, mask_ratio=0.75, clip_grad=None,
                             **kwargs) for _ in range(2)]
        results.append((torch.stack(losses), dict(model.named_parameters())))
    AcceleratorState._reset_state(reset_partial_state=True)
    (fast_losses, fast_params), (ref_losses, ref_params) = results
    torch.testing.assert_close(fast_losses, ref_losses, rtol=1e-5, atol=1e-6)
    assert not torch.equal(fast_losses[0], fast_losses[1])  # the optimizer did step
    for name, param in ref_params.items():
        torch.testing.assert_close(fast_params[name], param, rtol=1e-4, atol=1e-6, msg=name)


def test_endovit_explicit_attention_equals_the_fused_one():
    fast, _ = pair()
    explicit, _ = pair()
    assert use_timm045_attention(explicit) == 3
    images, noise = torch.randn(2, 3, 32, 48), torch.rand(2, fast.num_patches)
    loss = fast(images, 0.75, noise, loss_only=True)
    with sdpa_backend("math"):
        math_loss = fast(images, 0.75, noise, loss_only=True)
    explicit_loss = explicit(images, 0.75, noise, loss_only=True)
    torch.testing.assert_close(explicit_loss, loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(math_loss, loss, rtol=1e-5, atol=1e-6)
    loss.backward()
    explicit_loss.backward()
    explicit_grads = grads(explicit)
    for name, grad in grads(fast).items():
        torch.testing.assert_close(explicit_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    assert sdpa_choice((2, 3, 5, 16), torch.float32, torch.device("cpu")) in {"flash", "math"}
    with pytest.raises(ValueError, match="choose one of auto, flash"):
        sdpa_backend("fast")


def test_prefetched_batches_arrive_in_order_on_the_device():
    batches = [{"pixels": torch.full((2, 3), i, dtype=torch.uint8), "index": [i]} for i in range(3)]
    got = list(prefetched(iter(batches), torch.device("cpu")))
    assert [int(b["pixels"][0, 0]) for b in got] == [0, 1, 2] and [b["index"] for b in got] == [[0], [1], [2]]
    assert list(prefetched(iter([]), torch.device("cpu"))) == []
