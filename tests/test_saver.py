"""What the Saver writes beside the checkpoints, in-process: ``best/`` is exported into the checkpoint folder and
mirrored, whole (its timm/ and transformers/ folders included), into the output folder; ``best_probe/`` follows the
highest probe score after the init."""
from __future__ import annotations

import json

from helpers.scripts import TINY_TRAINING

from endovit.data.synthetic import write_sample_frames
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


def test_best_probe_follows_the_highest_score_after_the_init(tmp_path, frames_dir):
    out, probe = tmp_path / "run", tmp_path / "probe"
    write_sample_frames(probe, videos=2, frames=2, height=48, width=64, first_video=41, labelled=True)
    run = build_run(parse_recipe([*TINY_TRAINING, "--report_to", "none", "--num_recon_images", "0",
                                  "--train_data", str(frames_dir), "--batch_size", "8", "--output_dir", str(out),
                                  "--probe_data", str(probe), "--probe_label_format", "cholec80_tool",
                                  "--probe_best_metric", "knn_avg_map"]))
    config = out / "best_probe" / "endovit_config.json"
    for step, score in [(0, 0.9), (10, 0.3), (20, 0.5), (30, 0.4), (40, 0.5)]:
        run.saver.after_probe(step, {"probe/knn_avg_map": score})
        if step == 0:
            assert not config.exists(), "the init is the baseline, never best_probe/"
    info = json.loads(config.read_text())
    assert (info["step"], info["probe_knn_avg_map"], run.progress.best_probe) == (20, 0.5, 0.5)
