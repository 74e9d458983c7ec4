"""Exports load in timm and transformers with the run's weights and preprocessing, or fail clearly.

A real tiny run (scripts/pretrain.py: final output, best/, swa/, checkpoints/step_N) plus exports written
directly for non-square sizes, then timm.create_model("local-dir:...") and transformers' from_pretrained on every
folder a user might point at, and scripts/export.py from checkpoint folders and official-format .pth files.
"""
from __future__ import annotations

import argparse
import json
import logging
import runpy
import stat

import pytest
import timm
import torch
import transformers  # the dev extra: missing, the suite fails (never skips)
from helpers.scripts import REPO, TINY_TRAINING, run_script
from safetensors.torch import load_file

from endovit import hub
from endovit.checkpoint import checkpoint_dirs
from endovit.models.mae import create_mae
from endovit.recipe import parse_recipe
from endovit.weights import export_info, export_model

transformers.logging.set_verbosity_error()
logging.getLogger("timm").setLevel(logging.ERROR)

TINY = "mae_vit_tiny_patch16"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, frames_dir, val_frames_dir):
    """A finished tiny run with best/, swa/ and two checkpoints, trained with normalized-pixel targets."""
    out = tmp_path_factory.mktemp("export_run") / "run"
    run_script("scripts/pretrain.py", *TINY_TRAINING, "--train_data", str(frames_dir), "--val_data",
               str(val_frames_dir), "--output_dir", str(out), "--batch_size", "8", "--epochs", "3",
               "--warmup_epochs", "1", "--swa", "true", "--swa_start_epoch", "1", "--swa_every_steps", "1",
               "--val_every_steps", "2", "--save_every_steps", "2", "--num_recon_images", "0",
               "--norm_pix_loss", "true", "--report_to", "none")
    return out


def mae_from(folder, **kwargs):
    info = json.loads((folder / "endovit_config.json").read_text())
    mae = create_mae(info["model"], img_size=tuple(info["img_size"]), **kwargs)
    mae.load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return mae.eval(), info


def unmasked_latent(mae, images):
    in_order = torch.arange(mae.num_patches, dtype=torch.float32).expand(images.shape[0], -1)
    with torch.no_grad():
        return mae.forward_encoder(images, 0.0, in_order)[0]


def written_export(tmp_path, img_size, norm_pix_loss=False, seed=0):
    """An export of a freshly initialised MAE through export_model/export_info, as the training loop writes it."""
    torch.manual_seed(seed)
    size = ",".join(str(s) for s in img_size)
    recipe = parse_recipe(["--recipe", "demo", "--train_data", str(tmp_path), "--model", TINY, "--img_size", size,
                           "--mean", "[0.41, 0.27, 0.2]", "--std", "[0.26, 0.22, 0.19]",
                           "--norm_pix_loss", str(norm_pix_loss).lower()])
    mae = create_mae(TINY, img_size=tuple(recipe.img_size), norm_pix_loss=norm_pix_loss).eval()
    out = tmp_path / f"export_{img_size[0]}x{img_size[1]}"
    export_model(mae, out, export_info(recipe.to_dict(), mae, step=7, val_loss=None))
    return out, mae, recipe


@pytest.mark.parametrize("img_size", [(32, 32), (32, 64)])
def test_timm_local_dir_has_the_runs_preprocessing_and_the_encoders_output(tmp_path, img_size):
    out, mae, recipe = written_export(tmp_path, img_size)
    model = timm.create_model(f"local-dir:{out / 'timm'}", pretrained=True).eval()
    cfg = model.pretrained_cfg
    assert list(cfg["mean"]) == recipe.mean and list(cfg["std"]) == recipe.std
    assert tuple(cfg["input_size"]) == (3, *img_size)
    assert cfg["interpolation"] == "bicubic" and "hf_hub_id" not in cfg
    data = timm.data.resolve_data_config({}, model=model)
    assert data["input_size"] == (3, *img_size) and list(data["mean"]) == recipe.mean
    assert data["crop_pct"] == 1.0 and data["crop_mode"] == "squash"
    images = torch.randn(2, 3, *img_size)
    torch.testing.assert_close(model.forward_features(images), unmasked_latent(mae, images))
    classifier = timm.create_model(f"local-dir:{out / 'timm'}", pretrained=True, num_classes=7)
    assert classifier.head.out_features == 7
    assert torch.equal(classifier.blocks[5].attn.qkv.weight, mae.blocks[5].attn.qkv.weight)
    assert (out / "timm" / "model.safetensors").samefile(out / "encoder.safetensors")


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_transformers_pretraining_loss_equals_ours(tmp_path, norm_pix_loss):
    out, mae, _ = written_export(tmp_path, (32, 32), norm_pix_loss=norm_pix_loss)
    torch.manual_seed(1)
    images, noise = torch.randn(3, 3, 32, 32), torch.rand(3, mae.num_patches)
    with torch.no_grad():
        ours = mae(images, 0.75, noise)[0]
        for folder in (out / "transformers", out):
            hf = transformers.ViTMAEForPreTraining.from_pretrained(folder).eval()
            assert hf.config.norm_pix_loss is norm_pix_loss
            theirs = hf(pixel_values=images, noise=noise).loss
            assert abs(theirs.item() - ours.item()) <= 1e-5, (folder, theirs, ours)


@pytest.mark.parametrize("img_size", [(32, 32), (32, 64)])
def test_transformers_encoders_give_the_encoders_output(tmp_path, img_size):
    out, mae, recipe = written_export(tmp_path, img_size)
    images = torch.randn(2, 3, *img_size)
    latent = unmasked_latent(mae, images)
    in_order = torch.arange(mae.num_patches, dtype=torch.float32).expand(2, -1)
    with torch.no_grad():
        for folder in (out / "transformers", out):
            vit = transformers.ViTModel.from_pretrained(folder, add_pooling_layer=False).eval()
            torch.testing.assert_close(vit(pixel_values=images).last_hidden_state, latent)
            encoder = transformers.ViTMAEModel.from_pretrained(folder, mask_ratio=0.0).eval()
            torch.testing.assert_close(encoder(pixel_values=images, noise=in_order).last_hidden_state, latent)
            processor = transformers.AutoImageProcessor.from_pretrained(folder)
            assert (processor.size.height, processor.size.width) == img_size
            assert list(processor.image_mean) == recipe.mean and list(processor.image_std) == recipe.std


def test_non_square_pretraining_model_is_refused_by_transformers_not_built_random(tmp_path):
    out, _, _ = written_export(tmp_path, (32, 64))
    with pytest.raises(RuntimeError):
        transformers.ViTMAEForPreTraining.from_pretrained(out / "transformers")


def test_exported_files_are_readable_by_others(tmp_path):
    out, _, _ = written_export(tmp_path, (32, 32))
    for path in out.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o044 == 0o044, (path, oct(mode))


def test_every_folder_of_a_run_gives_the_right_weights_or_a_clear_error(run_dir):
    torch.manual_seed(2)
    images = torch.randn(2, 3, 32, 32)
    noise = torch.rand(2, 4)
    for name in ("", "best", "swa"):
        folder = run_dir / name
        mae, info = mae_from(folder, norm_pix_loss=True)
        with torch.no_grad():
            ours = mae(images, 0.75, noise)[0]
            for hf_folder in (folder, folder / "transformers"):
                theirs = transformers.ViTMAEForPreTraining.from_pretrained(hf_folder).eval()
                assert abs(theirs(pixel_values=images, noise=noise).loss.item() - ours.item()) <= 1e-5, hf_folder
        vit = timm.create_model(f"local-dir:{folder / 'timm'}", pretrained=True).eval()
        assert list(vit.pretrained_cfg["mean"]) == info["mean"] and list(vit.pretrained_cfg["std"]) == info["std"]
        torch.testing.assert_close(vit.forward_features(images), unmasked_latent(mae, images))
        with pytest.raises(RuntimeError, match=r"Unknown model \(NOT-A-MODEL-FOLDER: .*local-dir:<this folder>/timm"):
            timm.create_model(f"local-dir:{folder}", pretrained=True)
        with pytest.raises(RuntimeError, match=r"NOT-A-MODEL-FOLDER: a transformers folder; for timm use"):
            timm.create_model(f"local-dir:{folder / 'transformers'}", pretrained=True)
        for cls in (transformers.ViTMAEForPreTraining, transformers.ViTModel):
            with pytest.raises(Exception, match="NOT-A-MODEL-FOLDER: a timm folder"):
                cls.from_pretrained(folder / "timm")
    assert not (run_dir / "best" / "model.safetensors").samefile(run_dir / "swa" / "model.safetensors")


def test_checkpoint_folder_with_its_guard_config_is_refused(run_dir):
    """checkpoints/step_N holds our model.safetensors; its config.json (hub.write_guard_config) makes both fail."""
    step = sorted((run_dir / "checkpoints").iterdir())[-1]
    hub.write_guard_config(step)
    for cls in (transformers.ViTMAEForPreTraining, transformers.ViTMAEModel, transformers.ViTModel,
                transformers.AutoModel):
        with pytest.raises(Exception, match="NOT-A-MODEL-FOLDER: an EndoViT training-state folder"):
            cls.from_pretrained(step)
    with pytest.raises(RuntimeError, match="NOT-A-MODEL-FOLDER: an EndoViT training-state folder"):
        timm.create_model(f"local-dir:{step}", pretrained=True)
    assert stat.S_IMODE((step / "config.json").stat().st_mode) & 0o044 == 0o044


# ------------------------------------------------------------------------------------------ scripts/export.py


def export_script(*args, check=True):
    return run_script("scripts/export.py", *args, check=check)


@pytest.fixture(scope="module")
def export_main():
    """scripts/export.py's main, run in this process (a subprocess costs seconds of imports per call)."""
    return runpy.run_path(str(REPO / "scripts" / "export.py"), run_name="export_script")["main"]


def test_export_script_from_a_checkpoint_folder_uses_the_runs_settings(run_dir, tmp_path):
    step = checkpoint_dirs(run_dir / "checkpoints")[0]
    out = tmp_path / "from_step"
    result = export_script(str(step), "--output_dir", str(out))
    assert f"run settings from {run_dir / 'endovit_config.json'}" in result.stdout
    run_info = json.loads((run_dir / "endovit_config.json").read_text())
    info = json.loads((out / "endovit_config.json").read_text())
    assert info["mean"] == run_info["mean"] and info["img_size"] == [32, 32] and info["step"] == int(step.name[5:])
    assert info["architecture"]["norm_pix_loss"] is True
    checkpoint = load_file(step / "model.safetensors")
    exported = load_file(out / "model.safetensors")
    assert checkpoint.keys() == exported.keys() and all(torch.equal(checkpoint[k], exported[k]) for k in checkpoint)
    vit = timm.create_model(f"local-dir:{out / 'timm'}", pretrained=True)
    assert list(vit.pretrained_cfg["mean"]) == run_info["mean"]
    hf = transformers.ViTMAEForPreTraining.from_pretrained(out)
    assert hf.config.norm_pix_loss is True and hf.config.mask_ratio == 0.75


def test_export_script_from_an_official_mae_checkpoint(tmp_path, export_main):
    torch.manual_seed(3)
    source = create_mae(TINY, img_size=32, norm_pix_loss=True)
    path = tmp_path / "mae_pretrain_vit_tiny_full.pth"
    args = argparse.Namespace(model=TINY, norm_pix_loss=True, input_size=32, mask_ratio=0.75, blr=1.5e-4)
    torch.save({"model": source.state_dict(), "args": args, "epoch": 799}, path)
    out = tmp_path / "official"
    assert export_main([str(path), "--output_dir", str(out), "--mean", "0.485", "0.456", "0.406",
                        "--std", "0.229", "0.224", "0.225"]) == 0
    assert json.loads((out / "transformers" / "config.json").read_text())["norm_pix_loss"] is True
    images, noise = torch.randn(2, 3, 32, 32), torch.rand(2, 4)
    hf = transformers.ViTMAEForPreTraining.from_pretrained(out).eval()
    with torch.no_grad():
        assert abs(hf(pixel_values=images, noise=noise).loss.item() - source.eval()(images, 0.75, noise)[0].item()) \
            <= 1e-5
    vit = timm.create_model(f"local-dir:{out / 'timm'}", pretrained=True)
    assert tuple(vit.pretrained_cfg["mean"]) == (0.485, 0.456, 0.406)


def test_export_script_from_released_endovit_weights_writes_the_encoder(tmp_path, export_main, capsys):
    """The public EndoViT file: {'model': encoder state dict} with timm keys, position embedding at 224."""
    torch.manual_seed(4)
    source = create_mae(TINY, img_size=224)
    path = tmp_path / "endovit_seg.pth"
    torch.save({"model": source.encoder_state_dict()}, path)
    out = tmp_path / "endovit"
    assert export_main([str(path), "--output_dir", str(out), "--img_size", "32", "--mean", "0.3464,0.2280,0.2228",
                        "--std", "0.2520", "0.2128", "0.2093"]) == 0  # the README's commas, or spaces
    assert "holds the encoder only" in capsys.readouterr().out
    assert not (out / "model.safetensors").exists() and (out / "encoder.safetensors").is_file()
    vit = timm.create_model(f"local-dir:{out / 'timm'}", pretrained=True).eval()
    assert tuple(vit.pretrained_cfg["input_size"]) == (3, 32, 32)
    assert torch.equal(vit.blocks[11].mlp.fc2.weight, source.blocks[11].mlp.fc2.weight)
    encoder = transformers.ViTModel.from_pretrained(out / "transformers", add_pooling_layer=False)
    assert torch.equal(encoder.state_dict()["layernorm.weight"], source.norm.weight)
    config = json.loads((out / "transformers" / "config.json").read_text())
    assert config["architectures"] == ["ViTMAEModel"]


@pytest.mark.parametrize("make, flags, message", [
    ("encoder", [], "give --mean and --std"),
    ("wrong_arch", ["--model", TINY, "--mean", "0.5", "0.5", "0.5", "--std", "0.2", "0.2", "0.2"],
     "do not fit the model"),
    ("missing", [], "does not exist"),
    ("encoder", ["--model", "mae_vit_tiny", "--mean", "0", "0", "0", "--std", "1", "1", "1"],
     "unknown (did you mean mae_vit_tiny_patch16?)"),
    ("encoder", ["--img_size", "32", "--mean", "88,58,57", "--std", "64,54,53"],
     "--mean 88,58,57: give values in [0, 1] units (pixels are divided by 255 first"),
    ("encoder", ["--img_size", "32", "--mean", "0.5,0.5,0.5", "--std", "0", "0", "0"], "--std 0 0 0: give values in "
                                                                                       "(0, 1] units"),
    ("encoder", ["--img_size", "32", "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2", "--mask_ratio", "0"],
     "--mask_ratio 0.0: must be strictly between 0 and 1"),
    ("encoder", ["--mean", "0.5,0.5"], "--mean 0.5,0.5: give 3 numbers"),
    ("encoder", ["--img_size", "thirty"], "--img_size thirty: give whole numbers"),
    ("encoder", ["--outpu", "x"], "unknown flag --outpu (did you mean --output_dir?)"),
    ("run_folder", ["--img_size", "32", "--mean", "0.5,0.5,0.5", "--std", "0.2,0.2,0.2"],
     "holds a training run (checkpoints/), whose own exports these files would replace"),
])
def test_export_script_errors_are_one_line(tmp_path, export_main, capsys, make, flags, message):
    path = tmp_path / "weights.pth"
    if make == "run_folder":
        (tmp_path / "out" / "checkpoints").mkdir(parents=True)
        (tmp_path / "out" / "model.safetensors").write_bytes(b"the run's own weights")
        make = "encoder"
    if make == "encoder":
        torch.save({"model": create_mae(TINY, img_size=32).encoder_state_dict()}, path)
    elif make == "wrong_arch":
        torch.save({"model": create_mae(TINY, img_size=32, depth=6).encoder_state_dict()}, path)
    try:
        code = export_main([str(path), "--output_dir", str(tmp_path / "out"), *flags])
    except SystemExit as exit_:  # the flag parser's own refusals
        code = exit_.code
    assert code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and len(stderr.splitlines()) == 1, stderr
    if (tmp_path / "out" / "checkpoints").is_dir():
        assert (tmp_path / "out" / "model.safetensors").read_bytes() == b"the run's own weights"
    else:
        assert not (tmp_path / "out").exists()


def test_timm_folder_uploaded_to_the_hub_loads_with_hf_hub(tmp_path, monkeypatch):
    """timm's hf-hub: path reads the same config.json and model.safetensors (downloads served from the folder)."""
    from huggingface_hub.errors import EntryNotFoundError
    from timm.models import _hub

    out, mae, recipe = written_export(tmp_path, (32, 64))
    requested = []

    def from_folder(repo_id, filename, revision=None, cache_dir=None, **kwargs):
        requested.append((repo_id, filename))
        path = out / "timm" / filename
        if not path.is_file():
            raise EntryNotFoundError(f"{filename} not in {repo_id}")
        return str(path)

    monkeypatch.setattr(_hub, "hf_hub_download", from_folder)
    model = timm.create_model("hf-hub:someone/endovit-tiny", pretrained=True).eval()
    assert ("someone/endovit-tiny", "config.json") in requested
    assert ("someone/endovit-tiny", "model.safetensors") in requested
    assert list(model.pretrained_cfg["mean"]) == recipe.mean
    assert tuple(model.pretrained_cfg["input_size"]) == (3, 32, 64)
    images = torch.randn(1, 3, 32, 64)
    torch.testing.assert_close(model.forward_features(images), unmasked_latent(mae, images))
