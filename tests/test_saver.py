"""What the Saver writes beside the checkpoints, in-process: ``best/`` is exported into the checkpoint folder and
mirrored, whole (its timm/ and transformers/ folders included), into the output folder."""
from __future__ import annotations

from conftest import TINY_TRAINING

from endovit.recipe import parse_recipe
from endovit.trainer import build_run


def test_best_is_mirrored_into_the_output_folder_with_its_hub_folders(tmp_path, frames_dir, val_frames_dir):
    out = tmp_path / "run"
    run = build_run(parse_recipe([*TINY_TRAINING, "--report_to", "none", "--num_recon_images", "0",
                                  "--num_workers", "0", "--train_data", str(frames_dir), "--val_data",
                                  str(val_frames_dir), "--batch_size", "8", "--output_dir", str(out)]))
    run.saver.after_validation(step=1, val_loss=0.5)
    kept = sorted(p.relative_to(out / "checkpoints" / "best") for p in (out / "checkpoints" / "best").rglob("*"))
    assert {"model.safetensors", "timm", "transformers"} <= {str(p) for p in kept}
    mirrored = sorted(p.relative_to(out / "best") for p in (out / "best").rglob("*"))
    assert mirrored == kept
    for name in kept:
        source, copy = out / "checkpoints" / "best" / name, out / "best" / name
        assert source.is_dir() == copy.is_dir()
        if source.is_file():
            assert source.read_bytes() == copy.read_bytes(), name
