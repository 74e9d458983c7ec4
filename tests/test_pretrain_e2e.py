"""The user's command end to end: `accelerate launch scripts/pretrain.py` on CPU with a tiny model."""
from __future__ import annotations

import json
import re

import pytest
import timm
import torch
from accelerate.commands.config.config_args import load_config_from_file
from helpers.scripts import TINY_TRAINING, accelerate_launch, run_script
from safetensors.torch import load_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from timm.models.vision_transformer import VisionTransformer

from endovit.checkpoint import checkpoint_dirs
from endovit.models.mae import create_mae
from endovit.validation import PICTURE_HEADER

CPU_CONFIG = ("--config_file", "accelerate_configs/cpu.yaml")


def logged_losses(stdout: str) -> list[float]:
    return [float(v) for v in re.findall(r"^step=\d+ epoch=\S+ loss=(\S+)", stdout, flags=re.M)]


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory, frames_dir, val_frames_dir):
    out = tmp_path_factory.mktemp("overfit") / "run"
    result = run_script(
        "scripts/pretrain.py", *TINY_TRAINING, "--train_data", str(frames_dir), "--val_data", str(val_frames_dir),
        "--output_dir", str(out), "--batch_size", "8", "--epochs", "60", "--warmup_epochs", "5", "--lr", "2e-3",
        "--crop_scale", "[1.0, 1.0]", "--swa", "false", "--log_every_steps", "10", "--val_every_steps", "40",
        "--save_every_steps", "40", "--keep_checkpoints", "2",
        launcher=accelerate_launch(*CPU_CONFIG),
    )
    return out, result


def test_training_loss_falls_and_everything_is_written(overfit_run):
    out, result = overfit_run
    losses = logged_losses(result.stdout)
    assert len(losses) == 12
    assert not re.search(r"\| *\d+/\d+ \[", result.stdout + result.stderr), "no progress bar in a pipe, only log lines"
    assert losses[-1] < 0.5 * losses[0], losses
    for name in ["model.safetensors", "encoder.safetensors", "endovit_config.json", "config.yaml",
                 "reconstruction.png", "best/model.safetensors", "best/encoder.safetensors"]:
        assert (out / name).is_file(), name
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == ["step_00000080", "step_00000120"]
    info = json.loads((out / "endovit_config.json").read_text())
    assert info["timm_model"] == "vit_tiny_patch16_224" and info["img_size"] == [32, 32]
    assert info["recipe"]["lr"] == 2e-3 and info["step"] == 120


def test_tensorboard_has_scalars_and_reconstruction_image(overfit_run):
    out, _ = overfit_run
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"images": 0}).Reload()
    tags = events.Tags()
    assert {"train/loss", "train/lr", "train/images_per_sec", "val/loss"} <= set(tags["scalars"])
    assert "val/reconstruction" in tags["images"]
    assert len(events.Scalars("val/loss")) == 3
    image = events.Images("val/reconstruction")[-1]
    assert (image.width, image.height) == (4 * 192, PICTURE_HEADER + 4 * 192)  # 32 px frames shown at 192 px


def test_encoder_loads_into_timm_and_matches_the_mae_encoder(overfit_run):
    out, _ = overfit_run
    encoder_state = load_file(out / "encoder.safetensors")
    assert not any(k.startswith(("decoder", "mask_token")) for k in encoder_state)
    vit = VisionTransformer(img_size=32, patch_size=16, embed_dim=192, depth=12, num_heads=3, num_classes=0)
    vit.load_state_dict(encoder_state, strict=True)
    mae = create_mae("mae_vit_tiny_patch16", img_size=32)
    mae.load_state_dict(load_file(out / "model.safetensors"), strict=True)
    images = torch.randn(2, 3, 32, 32)
    in_order = torch.arange(mae.num_patches, dtype=torch.float32).expand(2, -1)
    latent, _, _ = mae.eval().forward_encoder(images, 0.0, in_order)
    torch.testing.assert_close(vit.eval().forward_features(images), latent)
    via_timm = timm.create_model("vit_tiny_patch16_224", pretrained=True, img_size=32, num_classes=0,
                                 pretrained_cfg_overlay={"file": str(out / "encoder.safetensors")})
    torch.testing.assert_close(via_timm.eval().forward_features(images), latent)


def test_resumed_run_equals_unbroken_run(tmp_path, frames_dir, val_frames_dir, pretrain_main):
    common = [*TINY_TRAINING, "--train_data", str(frames_dir), "--val_data", str(val_frames_dir),
              "--batch_size", "4", "--epochs", "3", "--warmup_epochs", "1", "--num_workers", "2",
              "--swa", "true", "--swa_start_epoch", "1", "--swa_every_steps", "2", "--val_every_steps", "5",
              "--save_every_steps", "4", "--log_every_steps", "3"]
    run_script("scripts/pretrain.py", *common, "--output_dir", str(tmp_path / "unbroken"))
    first = run_script("scripts/pretrain.py", *common, "--output_dir", str(tmp_path / "broken"),
                       "--stop_at_step", "6")
    assert "done at step 6/12" in first.stdout
    (tmp_path / "broken" / "checkpoints" / ".tmp-step_00000099").mkdir()
    second = run_script("scripts/pretrain.py", *common, "--output_dir", str(tmp_path / "broken"), "--resume", "auto")
    assert "resumed from" in second.stdout and "step_00000006" in second.stdout
    for name in ["model.safetensors", "swa/model.safetensors", "best/model.safetensors"]:
        unbroken, resumed = load_file(tmp_path / "unbroken" / name), load_file(tmp_path / "broken" / name)
        assert unbroken.keys() == resumed.keys()
        for key in unbroken:
            assert torch.equal(unbroken[key], resumed[key]), f"{name}:{key}"
    assert not (tmp_path / "broken" / "checkpoints" / ".tmp-step_00000099").exists()
    code, stdout, _ = pretrain_main(*common, "--output_dir", tmp_path / "broken", "--resume", "auto")
    assert code == 0 and "nothing to do" in stdout
    code, _, stderr = pretrain_main(*common, "--output_dir", tmp_path / "broken", "--resume", "auto", "--swa", "false",
                                    "--epochs", "4")
    assert code == 2 and "the run changed (swa: True then, False now)" in stderr


@pytest.mark.parametrize("name, distributed, processes, machines", [
    ("cpu", "NO", 1, 1), ("single_gpu", "NO", 1, 1), ("multi_gpu", "MULTI_GPU", 8, 1),
    ("multi_node", "MULTI_GPU", 16, 2),
])
def test_shipped_accelerate_configs_load(name, distributed, processes, machines):
    config = load_config_from_file(f"accelerate_configs/{name}.yaml")
    assert (config.distributed_type.value, config.num_processes, config.num_machines) == (distributed, processes,
                                                                                           machines)


def test_two_processes_split_the_data_and_the_batch(tmp_path, frames_dir):
    """Runs the shipped multi-GPU config with 2 processes: on a machine without GPUs they form a gloo group."""
    result = run_script(
        "scripts/pretrain.py", *TINY_TRAINING, "--train_data", str(frames_dir), "--output_dir", str(tmp_path / "run"),
        "--batch_size", "8", "--epochs", "2", "--warmup_epochs", "1", "--log_every_steps", "1",
        launcher=accelerate_launch("--config_file", "accelerate_configs/multi_gpu.yaml", "--num_processes", "2",
                                   "--main_process_port", "29531"),
    )
    assert "2 process(es) x 1 accumulation x 4 = batch 8; 2 steps/epoch, 4 steps" in result.stdout
    assert "done at step 4/4" in result.stdout
    assert [p.name for p in checkpoint_dirs(tmp_path / "run" / "checkpoints")] == ["step_00000004"]
    assert len(logged_losses(result.stdout)) == 4

    seen_file = tmp_path / "seen.json"
    run_script("tests/helpers/distributed_samples.py", str(frames_dir), str(seen_file),
               launcher=accelerate_launch("--multi_gpu", "--num_processes", "2", "--main_process_port", "29532"))
    seen = json.loads(seen_file.read_text())
    assert seen["num_processes"] == 2
    first, second = seen["per_process"]
    assert len(first) == len(second) == 8
    assert set(first).isdisjoint(second) and sorted(first + second) == list(range(16))


@pytest.mark.parametrize("flags, message", [
    (["--train_data", "{missing}"], "data path {missing} does not exist"),
    (["--train_data", "{empty}"], "--train_data: no image files"),
    (["--train_data", "{frames}", "--val_data", "{empty}", "--batch_size", "8"], "--val_data: no image files"),
    (["--train_data", "{release}"], "--train_data: {release} holds video files (2 videos, e.g. video01.mp4), not "
     "frames; prepare them first (python scripts/prepare_data.py --input {release} --out PREPARED)"),
    (["--train_data", "{frames}", "--img_size", "40"], "--img_size [40, 40]: each side must be divisible by"),
    (["--train_data", "{frames}", "--mask_ratio", "0"], "--mask_ratio 0.0: must be strictly between 0 and 1"),
    (["--train_data", "{frames}", "--recipe", "{typo_recipe}"], "unknown key 'epoch' (did you mean 'epochs'?)"),
    (["--train_data", "{frames}", "--batch_size", "8", "--resume", "{empty}"],
     "--resume {empty}: not a complete checkpoint folder"),  # refused after the output folder was locked
    (["--train_data", "{frames}", "--batch_size", "8", "--checkpoint_dir", "{a_file}/checkpoints"],
     "--checkpoint_dir {a_file}/checkpoints: {a_file} is a file, not a folder; give a folder this run may write"),
])
def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, frames_dir, pretrain_main, flags, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "a_file").write_text("not a folder")
    for video in ("video01.mp4", "video02.mp4"):  # a Cholec80 release folder: found by their names
        (tmp_path / "cholec80" / "videos").mkdir(parents=True, exist_ok=True)
        (tmp_path / "cholec80" / "videos" / video).write_bytes(b"\0" * 64)
    typo_recipe = tmp_path / "typo.yaml"
    typo_recipe.write_text("model: mae_vit_tiny_patch16\nepoch: 3\n")
    places = {"missing": tmp_path / "missing", "empty": tmp_path / "empty", "frames": frames_dir,
              "typo_recipe": typo_recipe, "a_file": tmp_path / "a_file",
              "release": tmp_path / "cholec80"}
    flags = [f.format(**places) for f in flags]
    message = message.format(**places)
    out = tmp_path / "out"
    code, _, stderr = pretrain_main(*TINY_TRAINING, *flags, "--output_dir", out)
    assert code == 2
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], stderr
    assert not out.exists()


def test_prepared_mixed_sources_train_and_resume_exactly(tmp_path):
    from endovit.data import PrepareSettings, compute_and_store_stats, prepare_frames
    from endovit.data.synthetic import write_sample_frames

    root = tmp_path / "prepared"
    for name, videos, first in [("Cholec80", 3, 11), ("HeiCo", 1, 1)]:
        write_sample_frames(tmp_path / "raw" / name, videos=videos, frames=8, height=60, width=100, first_video=first)
        prepare_frames(tmp_path / "raw" / name / "frames", root / name,
                       PrepareSettings(source=name, short_side=48, image_format="jpeg"), progress=False)
        compute_and_store_stats(root / name, num_proc=1)
    common = [*TINY_TRAINING, "--train_data", str(root), "--train_sources", "Cholec80_for_Segmentation,HeiCo",
              "--source_weights", "1,3", "--val_sources", "Cholec80_for_Validation", "--stats_from_data", "true",
              "--fast_decode", "true", "--batch_size", "4", "--epochs", "2", "--warmup_epochs", "1",
              "--num_workers", "2", "--swa", "false", "--save_every_steps", "3", "--val_every_steps", "4"]
    unbroken = run_script("scripts/pretrain.py", *common, "--output_dir", str(tmp_path / "unbroken"))
    assert "HeiCo                              8 frames  weight 3" in unbroken.stdout
    assert "24 training frames" in unbroken.stdout and "done at step 12/12" in unbroken.stdout
    run_script("scripts/pretrain.py", *common, "--output_dir", str(tmp_path / "broken"), "--stop_at_step", "5")
    resumed = run_script("scripts/pretrain.py", *common, "--output_dir", str(tmp_path / "broken"), "--resume", "auto")
    assert "at step 5" in resumed.stdout
    unbroken_weights = load_file(tmp_path / "unbroken" / "model.safetensors")
    resumed_weights = load_file(tmp_path / "broken" / "model.safetensors")
    for key, value in unbroken_weights.items():
        assert torch.equal(value, resumed_weights[key]), key
    config = json.loads((tmp_path / "unbroken" / "endovit_config.json").read_text())
    assert config["mean"] != [0.3464, 0.2280, 0.2228] and all(0 < m < 1 for m in config["mean"])


def test_unreadable_frame_during_training_stops_with_its_path(tmp_path):
    from endovit.data.synthetic import write_sample_frames

    write_sample_frames(tmp_path, videos=1, frames=8, height=48, width=64)
    broken = tmp_path / "frames" / "video01" / "video01_000003.png"
    broken.write_bytes(broken.read_bytes()[:120])
    result = run_script("scripts/pretrain.py", *TINY_TRAINING, "--train_data", str(tmp_path / "frames"),
                        "--output_dir", str(tmp_path / "out"), "--batch_size", "4", "--epochs", "2",
                        "--warmup_epochs", "0", "--num_workers", "1", check=False)
    assert result.returncode == 2
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith(f"error: cannot decode frame {broken}: "), result.stderr


def test_hyperparameters_sit_beside_the_final_metrics_in_tensorboard(overfit_run):
    """TensorBoard's HParams tab joins a run's hyperparameters to its metrics only within one run folder."""
    out, _ = overfit_run
    runs = [p for p in (out / "tensorboard").rglob("*") if p.is_file() and "tfevents" in p.name]
    assert len({p.parent for p in runs}) == 1, runs
    events = EventAccumulator(str(runs[0].parent)).Reload()
    assert events.PluginTagToContent("hparams"), "no hyperparameters in the run's folder"
    final = events.Scalars("hparams/val_loss")[-1]
    assert final.step == 120 and final.value == pytest.approx(events.Scalars("val/loss")[-1].value)
    assert len(events.Images("val/reconstruction")) == 3, "one picture per validation, none twice at the end"
