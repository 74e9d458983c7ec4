"""Reading weights: encoder-only and transformers sources, sha256 pins, plain-http warnings, URL redaction."""
from __future__ import annotations

import hashlib
import re
import shutil

import pytest
import torch
from safetensors.torch import save_file

from endovit import hub
from endovit.errors import CheckpointError
from endovit.io import redact_url
from endovit.models.mae import create_mae
from endovit.weights import export_model, load_pretrained, read_weights


def tiny(**kwargs):
    return create_mae("mae_vit_tiny_patch16", img_size=32, **kwargs)


def sha256_of(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_released_endovit_format_loads_the_encoder_and_says_the_decoder_is_fresh(tmp_path):
    """The public EndoViT .pth: {'model': encoder state dict} (timm keys), position embedding for 224x224."""
    torch.manual_seed(0)
    source = create_mae("mae_vit_tiny_patch16", img_size=224)
    path = tmp_path / "endovit_seg.pth"
    torch.save({"model": source.encoder_state_dict()}, path)
    torch.manual_seed(1)
    target = tiny()
    fresh_decoder = {k: v.clone() for k, v in target.state_dict().items() if k.startswith(("decoder", "mask_token"))}
    logged = []
    note = load_pretrained(target, path, log=logged.append)
    assert logged == [note] and "\n" not in note
    assert note.startswith(f"note: {path} holds the encoder only") and "fresh initialisation" in note
    assert torch.equal(target.blocks[7].attn.qkv.weight, source.blocks[7].attn.qkv.weight)
    assert torch.equal(target.cls_token, source.cls_token)
    for key, value in fresh_decoder.items():
        assert torch.equal(target.state_dict()[key], value), key
    assert load_pretrained(tiny(), tmp_path / "endovit_seg.pth", log=None) is not None
    full = tmp_path / "full.pth"
    torch.save({"model": tiny().state_dict()}, full)
    assert load_pretrained(tiny(), full) is None


def test_encoder_of_another_architecture_is_still_refused(tmp_path):
    path = tmp_path / "small.pth"
    torch.save({"model": tiny(depth=6).encoder_state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"do not fit the model \(missing keys: blocks\.10\.") as refused:
        load_pretrained(tiny(), path)
    assert re.search(r"blocks\.10\.attn\.qkv\.weight, and 100 more\)$", str(refused.value))  # 4 of 104 named
    torch.save({"model": tiny().encoder_state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys: .* and 68 more \| the weights are "
                                              r"mae_vit_tiny_patch16's\)$"):
        load_pretrained(tiny(depth=6), path)
    partial = tiny().state_dict()
    del partial["decoder_pred.bias"]
    torch.save({"model": partial}, path)
    with pytest.raises(CheckpointError, match="missing keys: decoder_pred.bias"):
        load_pretrained(tiny(), path)


def test_export_folders_and_transformers_checkpoints_work_as_init_from(tmp_path):
    torch.manual_seed(2)
    source = tiny(norm_pix_loss=True)
    info = {"model": "mae_vit_tiny_patch16", "timm_model": "vit_tiny_patch16_224", "architecture": source.config,
            "img_size": [32, 32], "patch_size": 16, "mean": [0.5] * 3, "std": [0.25] * 3, "step": 1}
    out = export_model(source, tmp_path / "export", info)
    for where in (out, out / "model.safetensors", out / "transformers", out / "transformers" / "model.safetensors"):
        target = tiny()
        assert load_pretrained(target, where) is None, where
        for key, value in source.state_dict().items():
            assert torch.equal(target.state_dict()[key], value), (where, key)
    for where in (out / "timm", out / "encoder.safetensors"):
        assert "holds the encoder only" in load_pretrained(tiny(), where, log=None)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CheckpointError, match=f"{empty} holds no weights"):
        read_weights(empty)


def test_transformers_names_round_trip():
    state = tiny().state_dict()
    theirs = hub.to_transformers_state_dict(state)
    assert "vit.encoder.layer.3.attention.attention.key.weight" in theirs
    assert "decoder.decoder_layers.1.output.dense.bias" in theirs
    back = hub.from_transformers_state_dict(theirs)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
    with pytest.raises(CheckpointError, match="unknown transformers weight 'vit.encoder.layer.0.extra.weight'"):
        hub.from_transformers_state_dict({**theirs, "vit.encoder.layer.0.extra.weight": torch.zeros(1)})


def test_sha256_pin_is_checked_for_files_and_on_every_load_of_a_cached_url(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    path = tmp_path / "weights.safetensors"
    save_file(tiny().state_dict(), path)
    digest = sha256_of(path)
    assert read_weights(path, sha256=digest).state.keys() == tiny().state_dict().keys()
    with pytest.raises(CheckpointError, match=f"have sha256 {digest}, not the pinned 0{{63}}"):
        read_weights(path, sha256="0" * 64)
    with pytest.raises(CheckpointError, match="is not 64 hex digits"):
        read_weights(path, sha256="abc")

    url = f"file://{path}"
    load_pretrained(tiny(), url, sha256=digest)
    cached = list((tmp_path / "torch" / "hub" / "endovit").iterdir())
    assert [p.name for p in cached] == [f"{digest[:16]}-weights.safetensors"]
    shutil.copyfile(path, tmp_path / "keep.safetensors")
    path.unlink()
    load_pretrained(tiny(), url, sha256=digest)  # from the cache, verified again
    load_pretrained(tiny(), f"{url}#sha256={digest}")  # the pin carried by the URL
    with pytest.raises(CheckpointError, match="two different sha256 pins"):
        read_weights(f"{url}#sha256={digest}", sha256="2" * 64)
    save_file(tiny(depth=6).state_dict(), cached[0])  # the cached file changed on disk
    with pytest.raises(CheckpointError, match="not the pinned .* delete it to download again"):
        read_weights(url, sha256=digest)
    with pytest.raises(CheckpointError, match="not the pinned"):  # a new download that does not match
        read_weights(f"file://{tmp_path / 'keep.safetensors'}", sha256="1" * 64)
    assert not list((tmp_path / "torch" / "hub" / "endovit").glob("1111*"))


def test_plain_http_warns_and_credentials_never_show(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    payload = tmp_path / "w.safetensors"
    save_file(tiny().state_dict(), payload)

    def fake_download(url, dst, progress=True):
        if "missing" in url:
            raise OSError(f"HTTP Error 404 for {url}")
        shutil.copyfile(payload, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    with pytest.warns(UserWarning, match=r"plain http \(http://example.org/w.safetensors\)"):
        read_weights("http://user:secret@example.org/w.safetensors?token=abc")
    with pytest.raises(CheckpointError) as err:
        read_weights("https://user:secret@example.org/missing.pth?X-Amz-Signature=abc")
    message = str(err.value)
    assert "secret" not in message and "abc" not in message
    assert "https://example.org/missing.pth" in message


@pytest.mark.parametrize("text, expected", [
    ("https://u:p@host.org:8443/a/b.pth?sig=1&x=2#f", "https://host.org:8443/a/b.pth"),
    ("from http://token@h/w.pth, and s3://bucket/k.pth?versionId=3", "from http://h/w.pth, and s3://bucket/k.pth"),
    ("init_from: /data/w.pth", "init_from: /data/w.pth"),
    ("'https://h/w.pth?a=1'", "'https://h/w.pth'"),
])
def test_redact_url(text, expected):
    assert redact_url(text) == expected
