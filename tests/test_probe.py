"""Frozen-feature probes: classifiers and metrics equal scikit-learn, Cholec80 labels map frame by frame,
splits keep videos apart, the in-training probe leaves the run untouched (the demo's margin: test_demo.py)."""
from __future__ import annotations

import dataclasses
import json
import random
import re
import runpy
import shutil

import datasets
import numpy as np
import pytest
import timm
import torch
from accelerate import Accelerator
from helpers.scripts import REPO, run_script
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, f1_score
from sklearn.neighbors import NearestNeighbors

from endovit.data import synthetic
from endovit.data.frames import load_frames
from endovit.data.synthetic import write_sample_frames
from endovit.errors import CheckpointError, DataError, RecipeError
from endovit.models.mae import create_mae
from endovit.probes import PHASES, TOOLS, ProbeSettings, build_probe, metric_names
from endovit.probes import probe as probe_module
from endovit.probes.classifiers import knn_scores, linear_probe_scores, standardize
from endovit.probes.evaluate import weights_source
from endovit.probes.features import load_encoder
from endovit.probes.labels import cholec80_labels, column_labels, csv_labels
from endovit.probes.metrics import average_precision, macro_f1
from endovit.probes.probe import decode_frames, load_probe_data
from endovit.probes.split import split_by_video
from endovit.recipe import load_recipe, parse_recipe
from endovit.weights import export_model

MEAN, STD = [0.35, 0.23, 0.22], [0.25, 0.21, 0.21]


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    """Labelled synthetic probe frames (8 videos x 16 s) and unlabelled-use pretraining frames (8 other videos)."""
    root = tmp_path_factory.mktemp("labelled")
    write_sample_frames(root / "probe", videos=8, frames=16, height=64, width=64, seed=1, labelled=True)
    write_sample_frames(root / "pretrain", videos=8, frames=16, height=64, width=64, seed=2, labelled=True,
                        first_video=9)
    return root


def test_labelled_frames_keep_their_noise_at_the_models_input_size(tmp_path, monkeypatch):
    """The demo renders 426-px-wide frames for a 96-px model: per-pixel noise would lose two thirds of its std in that
    resize (measured 0.184 -> 0.061); grains sized to the frame keep 0.125."""
    [noisy] = write_sample_frames(tmp_path / "noisy", videos=1, frames=1, height=240, width=426, labelled=True)
    monkeypatch.setattr(synthetic, "SENSOR_NOISE", 0.0)
    [clean] = write_sample_frames(tmp_path / "clean", videos=1, frames=1, height=240, width=426, labelled=True)

    def noise_std(size):
        pixels = [np.asarray(Image.open(path).resize(size, Image.BILINEAR), dtype=float) for path in (noisy, clean)]
        return (pixels[0] - pixels[1]).std() / 255

    assert noise_std((426, 240)) > 0.15
    assert noise_std((170, 96)) > 0.6 * noise_std((426, 240))


def test_forward_features_equals_timm_vision_transformer():
    mae = create_mae("mae_vit_tiny_patch16", img_size=32)
    with torch.no_grad():
        for p in mae.parameters():
            p.add_(0.02 * torch.randn_like(p))
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, num_classes=0)
    vit.load_state_dict(mae.encoder_state_dict(), strict=True)
    images = torch.randn(3, 3, 32, 32)
    tokens = mae.eval().forward_features(images)
    assert tokens.shape == (3, 1 + 4, 192)
    torch.testing.assert_close(tokens, vit.eval().forward_features(images))


def dino_reference(train, labels, test, k, temperature, num_classes):
    """DINO's weighted vote over scikit-learn's cosine neighbours."""
    distances, neighbours = NearestNeighbors(n_neighbors=k, metric="cosine").fit(train).kneighbors(test)
    weights = np.exp((1 - distances) / temperature)
    votes = np.zeros((len(test), num_classes))
    for row in range(len(test)):
        np.add.at(votes[row], labels[neighbours[row]], weights[row])
    return votes


def test_knn_predicts_as_dino_over_sklearn_neighbours():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 16))
    labels = rng.integers(0, 5, 300)
    train = centres[labels] + rng.normal(scale=1.5, size=(300, 16))
    test_labels = rng.integers(0, 5, 120)
    test = centres[test_labels] + rng.normal(scale=1.5, size=(120, 16))
    for k, temperature in [(20, 0.07), (5, 0.5)]:
        ours = knn_scores(torch.tensor(train), torch.tensor(labels), torch.tensor(test), num_classes=5, k=k,
                          temperature=temperature, chunk=50)
        reference = dino_reference(train, labels, test, k, temperature, 5)
        np.testing.assert_array_equal(ours.argmax(1).numpy(), reference.argmax(1))
        assert 0.4 < (reference.argmax(1) == test_labels).mean() < 1.0


def test_knn_multilabel_scores_are_weighted_fractions_of_neighbours():
    rng = np.random.default_rng(1)
    train, test = rng.normal(size=(80, 8)), rng.normal(size=(30, 8))
    targets = rng.integers(0, 2, (80, 3))
    ours = knn_scores(torch.tensor(train), torch.tensor(targets), torch.tensor(test), num_classes=3, k=10,
                      temperature=0.1)
    distances, neighbours = NearestNeighbors(n_neighbors=10, metric="cosine").fit(train).kneighbors(test)
    weights = np.exp((1 - distances) / 0.1)
    reference = np.einsum("mk,mkc->mc", weights, targets[neighbours]) / weights.sum(1, keepdims=True)
    np.testing.assert_allclose(ours.numpy(), reference, rtol=1e-4)


def test_linear_probe_matches_sklearn_logistic_regression():
    rng = np.random.default_rng(2)
    centres = rng.normal(size=(4, 32))
    labels, test_labels = rng.integers(0, 4, 400), rng.integers(0, 4, 300)
    scale = rng.uniform(0.5, 5, 32)  # unequal feature scales: the batch norm matters
    train = (centres[labels] + rng.normal(scale=2.0, size=(400, 32))) * scale
    test = (centres[test_labels] + rng.normal(scale=2.0, size=(300, 32))) * scale
    l2 = 1e-2
    probs = linear_probe_scores(torch.tensor(train), torch.tensor(labels), torch.tensor(test), num_classes=4, l2=l2)
    ours = (probs.argmax(1).numpy() == test_labels).mean()
    train_std, test_std = (x.numpy() for x in standardize(torch.tensor(train).float(), torch.tensor(test).float()))
    sklearn = LogisticRegression(C=1 / (l2 * len(train)), max_iter=5000).fit(train_std, labels)
    assert abs(ours - sklearn.score(test_std, test_labels)) <= 0.01
    np.testing.assert_allclose(probs.numpy(), sklearn.predict_proba(test_std), atol=2e-3)
    assert 0.5 < ours < 1.0


def test_metrics_equal_sklearn_including_ties():
    rng = np.random.default_rng(3)
    target, pred = rng.integers(0, 5, 200), rng.integers(0, 4, 200)
    assert macro_f1(pred, target) == pytest.approx(f1_score(target, pred, average="macro"))
    scores, positives = rng.integers(0, 6, 200) / 5, rng.integers(0, 2, 200)
    assert average_precision(scores, positives) == pytest.approx(average_precision_score(positives, scores))
    assert np.isnan(average_precision(scores, np.zeros(200, dtype=int)))


def write_cholec80_video(root, video: str, seconds: int, phase_change: int, tools: list[list[int]]):
    """Frames at 1 fps and Cholec80 annotations at 25 fps whose phase changes at annotation frame ``phase_change``."""
    (root / "frames" / video).mkdir(parents=True)
    for i in range(seconds):
        Image.new("RGB", (8, 8)).save(root / "frames" / video / f"{video}_{i:06d}.png")
    (root / "phase_annotations").mkdir(exist_ok=True)
    (root / "tool_annotations").mkdir(exist_ok=True)
    rows = [f"{f}\t{PHASES[0] if f < phase_change else PHASES[1]}" for f in range(25 * len(tools))]
    (root / "phase_annotations" / f"{video}-phase.txt").write_text("Frame\tPhase\n" + "\n".join(rows) + "\n")
    rows = [f"{25 * t}\t" + "\t".join(map(str, row)) for t, row in enumerate(tools)]
    (root / "tool_annotations" / f"{video}-tool.txt").write_text("Frame\t" + "\t".join(TOOLS) + "\n" +
                                                                 "\n".join(rows) + "\n")


def test_cholec80_annotations_map_one_fps_frames_to_every_25th_row(tmp_path):
    tools = [[1, 0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0, 0]]
    write_cholec80_video(tmp_path, "video01", seconds=3, phase_change=26, tools=tools)
    frames = load_frames(tmp_path / "frames")
    phases = cholec80_labels(frames, tmp_path, "phase")
    assert phases.values.tolist() == [0, 0, 1] and phases.names == list(PHASES)  # row 25 is before the change
    assert cholec80_labels(frames, tmp_path, "tool").values.tolist() == tools[:3]
    assert cholec80_labels(frames, tmp_path, "tool", first_frame=-1).values.tolist() == tools[1:]
    shifted = cholec80_labels(frames, tmp_path, "phase", first_frame=-1)
    assert shifted.values.tolist() == [0, 1, 1]  # frame i -> row (i + 1) * 25


def test_frames_without_labels_are_refused_naming_the_first(tmp_path):
    write_cholec80_video(tmp_path, "video01", seconds=4, phase_change=30, tools=[[1] * 7] * 3)
    frames = load_frames(tmp_path / "frames")
    for task in ("phase", "tool"):
        with pytest.raises(DataError, match=r"frame .*video01_000003\.png \(index 3 -> annotation frame 75\) has no "
                                            r"label in .*video01-" + task):
            cholec80_labels(frames, tmp_path, task)
    with pytest.raises(DataError, match="annotation frame 12.5"):
        cholec80_labels(frames, tmp_path, "tool", frame_fps=2)
    (tmp_path / "phase_annotations" / "video01-phase.txt").write_text("Frame\tPhase\n0\tPreperation\n")
    with pytest.raises(DataError, match="unknown phase 'Preperation' .did you mean Preparation"):
        cholec80_labels(frames, tmp_path, "phase")


@pytest.mark.parametrize("video", ["../elsewhere/video01", "/abs/video01", "..", ""])
def test_a_video_name_that_is_a_path_is_refused_before_any_file_is_read(tmp_path, video):
    write_cholec80_video(tmp_path / "elsewhere", "video01", seconds=1, phase_change=0, tools=[[1] * 7])
    frames = load_frames(tmp_path / "elsewhere" / "frames").map(lambda row: {"video": video})
    message = (rf"has video '{re.escape(video)}', not a plain name: its labels would be read from outside "
               rf"{tmp_path / 'cholec80' / 'phase_annotations'}$" if video else
               r"is not in a video folder: give the folder that holds the video folders")
    with pytest.raises(DataError, match=message):
        cholec80_labels(frames, tmp_path / "cholec80", "phase")


def test_pretraining_probe_takes_every_probe_setting_evaluate_takes(tmp_path):
    defaults = {f.name: getattr(ProbeSettings(), f.name) for f in dataclasses.fields(ProbeSettings)}
    recipe = parse_recipe(["--recipe", "demo", "--train_data", "x"])
    assert {name: getattr(recipe, f"probe_{name}") for name in defaults} == defaults
    tools = [[1, 0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 1, 1, 0]]
    for video in ("video01", "video41"):  # numbered from 1, as ffmpeg writes frames
        write_cholec80_video(tmp_path, video, seconds=3, phase_change=0, tools=tools)
        for i in reversed(range(3)):
            (tmp_path / "frames" / video / f"{video}_{i:06d}.png").rename(
                tmp_path / "frames" / video / f"{video}_{i + 1:06d}.png")
    flags = ["--recipe", "demo", "--train_data", "x", "--probe_data", str(tmp_path / "frames"),
             "--probe_label_format", "cholec80_tool"]
    with pytest.raises(DataError, match=r"first_frame 0 \(evaluate.py's --<name>, pretrain.py's --probe_<name>\)"):
        load_probe_data(ProbeSettings.from_recipe(parse_recipe(flags)))
    data = load_probe_data(ProbeSettings.from_recipe(parse_recipe([*flags, "--probe_first_frame", "1"])))
    assert data.labels.values.tolist() == tools + tools and data.videos == {"train": ["video01"], "test": ["video41"]}
    assert data.summary() == "3 train frames (1 video), 3 test frames (1 video), 7 labels"


def test_csv_and_column_labels(tmp_path):
    write_cholec80_video(tmp_path, "video01", seconds=3, phase_change=0, tools=[[0] * 7])
    frames = load_frames(tmp_path / "frames")
    paths = [f"video01/video01_{i:06d}.png" for i in range(3)]
    rows = "".join(f"{p},{c}\n" for p, c in zip(paths, "bab", strict=True))
    (tmp_path / "single.csv").write_text("path,label\n" + rows)
    single = csv_labels(frames, tmp_path / "single.csv", tmp_path / "frames")
    assert single.names == ["a", "b"] and single.values.tolist() == [1, 0, 1]
    (tmp_path / "multi.csv").write_text("path,smoke,blood\n" + "".join(f"{p},1,{i % 2}\n" for i, p in
                                                                       enumerate(paths)))
    multi = csv_labels(frames, tmp_path / "multi.csv", tmp_path / "frames")
    assert multi.multilabel and multi.values.tolist() == [[1, 0], [1, 1], [1, 0]]
    (tmp_path / "short.csv").write_text("path,label\n" + f"{paths[0]},a\n")
    with pytest.raises(DataError, match="video01_000001.png has no row in"):
        csv_labels(frames, tmp_path / "short.csv", tmp_path / "frames")
    table = datasets.Dataset.from_dict(
        {"image": [str(tmp_path / "frames" / p) for p in paths], "video": ["v1"] * 3, "phase": [2, 0, 1],
         "tools": [[0], [], [1, 2]]},
        features=datasets.Features({"image": datasets.Image(decode=False), "video": datasets.Value("string"),
                                    "phase": datasets.ClassLabel(names=["x", "y", "z"]),
                                    "tools": datasets.Sequence(datasets.ClassLabel(names=["p", "q", "r"]))}))
    assert column_labels(table, "phase").values.tolist() == [2, 0, 1]
    assert column_labels(table, "tools").values.tolist() == [[1, 0, 0], [0, 0, 0], [0, 1, 1]]
    with pytest.raises(DataError, match="expected ClassLabel"):
        column_labels(table, "video")


def test_split_keeps_every_video_on_one_side():
    cholec = [f"video{n:02d}" for n in range(1, 81) for _ in range(3)]
    train, test = split_by_video(cholec)
    assert {cholec[i] for i in train} == {f"video{n:02d}" for n in range(1, 41)}
    assert {cholec[i] for i in test} == {f"video{n:02d}" for n in range(41, 81)}
    few = ["video03", "video01", "video07", "video05", "video01", "other"]
    train, test = split_by_video(few)
    assert {few[i] for i in train} == {"video01", "video03", "video05"} and {few[i] for i in test} == {"video07",
                                                                                                        "other"}
    train, test = split_by_video(few, train_videos=["1-3"])
    assert {few[i] for i in train} == {"video01", "video03"} and not {few[i] for i in train} & {few[i] for i in test}
    with pytest.raises(DataError, match="video01 are in both"):
        split_by_video(few, train_videos=["1", "3"], test_videos=["video01"])
    with pytest.raises(DataError, match="test set is empty"):
        split_by_video(few, train_videos=["1-7", "other"])
    with pytest.raises(DataError, match="video 'video09' is not in the probe data"):
        split_by_video(few, test_videos=["video09"])


def test_probe_leaves_rng_modes_and_grads_untouched(labelled):
    accelerator = Accelerator(cpu=True)
    settings = ProbeSettings(data=str(labelled / "probe" / "frames"), label_format="cholec80_tool", kind="both")
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    probe = build_probe(settings, img_size=(32, 32), mean=MEAN, std=STD, accelerator=accelerator, num_workers=2)
    assert probe.pixels.dtype == torch.uint8 and probe.pixels.shape == (128, 3, 32, 32)
    assert torch.equal(probe.pixels, decode_frames(probe.data.frames, (32, 32))), "workers decode as one process"

    def unchanged(before) -> bool:
        return (torch.equal(torch.get_rng_state(), before[0]) and np.array_equal(np.random.get_state()[1], before[1])
                and random.getstate() == before[2])

    assert unchanged(states), "building the probe (its DataLoader) drew random numbers"
    assert set(probe.data.videos["train"]).isdisjoint(probe.data.videos["test"])
    mae = create_mae("mae_vit_tiny_patch16", img_size=32, depth=2).train()
    mae.blocks[0].eval()
    mae(torch.randn(2, 3, 32, 32))[0].backward()
    grads = {n: p.grad.clone() for n, p in mae.named_parameters() if p.grad is not None}
    states = torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()
    metrics = probe.evaluate(mae)
    assert unchanged(states)
    assert mae.training and not mae.blocks[0].training and mae.blocks[1].training
    assert all(torch.equal(p.grad, grads[n]) for n, p in mae.named_parameters() if p.grad is not None)
    assert "probe/knn_cls_ap/Grasper" in metrics
    named = {f"probe/{name}" for name in metric_names("both", multilabel=True)}
    assert {k for k in metrics if "_ap/" not in k} == named, "--probe_best_metric checks against these names"
    assert metrics == probe.evaluate(mae)


def test_frame_step_keeps_every_nth_frame_of_each_video(labelled):
    folder = str(labelled / "probe" / "frames")
    full = load_probe_data(ProbeSettings(data=folder, label_format="cholec80_tool"))
    sparse = load_probe_data(ProbeSettings(data=folder, label_format="cholec80_tool", frame_step=5))

    def keys(data):
        return list(zip(data.frames["video"], data.frames["frame_index"], strict=True))

    kept = [key for key in keys(full) if key[1] % 5 == 0]  # 16 frames a video, indices 0-15
    assert keys(sparse) == kept and len(kept) == 8 * 4 and sparse.videos == full.videos
    assert sparse.num_train == sum(video in full.videos["train"] for video, _ in kept)
    rows = [keys(full).index(key) for key in kept]
    assert np.array_equal(np.asarray(sparse.labels.values), np.asarray(full.labels.values)[rows])


def test_probe_frames_too_big_for_the_device_are_refused_naming_the_frame_step(labelled, monkeypatch):
    settings = ProbeSettings(data=str(labelled / "probe" / "frames"), label_format="cholec80_tool")
    monkeypatch.setattr(probe_module, "probe_memory_budget", lambda device, processes: (100_000, "the test's budget"))
    decoded = []
    monkeypatch.setattr(probe_module, "decode_frames", lambda *args: decoded.append(args) or decode_frames(*args))
    with pytest.raises(RecipeError, match=r"^--probe_data .*: 128 probe frames at 32x32 take 0\.0 GB as uint8, more "
                                          r"than 0\.0 GB \(the test's budget\); .* --probe_frame_step 4$"):
        build_probe(settings, img_size=(32, 32), mean=MEAN, std=STD, accelerator=Accelerator(cpu=True))
    assert not decoded, "refused before decoding"
    probe = build_probe(dataclasses.replace(settings, frame_step=4), img_size=(32, 32), mean=MEAN, std=STD,
                        accelerator=Accelerator(cpu=True))
    assert probe.pixels.shape == (32, 3, 32, 32) and probe.pixels.numel() <= 100_000


def test_load_encoder_refuses_another_architecture(tmp_path):
    export_model(create_mae("mae_vit_tiny_patch16", img_size=32), tmp_path, {"model": "mae_vit_tiny_patch16"},
                 hub_folders=False)
    mae = create_mae("mae_vit_tiny_patch16", img_size=32, depth=2)
    with pytest.raises(CheckpointError, match=r"unexpected keys: blocks\.10\..* and \d+ more \| the weights are "
                                              r"mae_vit_tiny_patch16's\); check --model$"):
        load_encoder(mae, tmp_path / "encoder.safetensors")


def test_evaluate_script_prints_table_and_writes_json(labelled, tmp_path, monkeypatch):
    source = create_mae("mae_vit_tiny_patch16", img_size=32)
    info = {"model": "mae_vit_tiny_patch16", "img_size": [32, 32], "mean": MEAN, "std": STD, "step": 7}
    export_model(source, tmp_path / "export", info)
    other_stats = {**info, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}
    export_model(source, tmp_path / "other_stats", other_stats, hub_folders=False)
    torch.save({"model": source.state_dict()}, tmp_path / "official.pth")  # official MAE layout, same weights
    url = f"file://{tmp_path / 'official.pth'}"
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))  # the weights cache a URL downloads into
    output = tmp_path / "probe.json"
    result = run_script("scripts/evaluate.py", "--weights", str(tmp_path / "export"), "random", url,
                        str(tmp_path / "other_stats"), "random:0", "random:1", "--data",
                        str(labelled / "probe"), "--kind", "both", "--test_videos", "7-8", "--output", str(output),
                        "--num_workers", "0", "--batch_size", "24")
    assert "probe: 96 train frames (6 videos), 32 test frames (2 videos), 7 classes; mae_vit_tiny" in result.stdout
    lines = result.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["model", "probe"])
    assert lines[header].split()[2:] == ["acc", "f1"] and lines[header + 25].startswith("results: ")  # 6 x 4 rows
    assert list((tmp_path / "torch_home" / "hub" / "endovit").glob("*official.pth"))
    summary = json.loads(output.read_text())
    assert summary["videos"] == {"train": [f"video0{n}" for n in range(1, 7)], "test": ["video07", "video08"]}
    assert summary["frames"] == {"train": 96, "test": 32} and summary["classes"] == list(PHASES)
    exported, random_init = summary["results"][str(tmp_path / "export")], summary["results"]["random"]
    assert exported["step"] == 7 and set(exported["metrics"]) == {"knn_cls", "knn_avg", "linear_cls", "linear_avg"}
    assert exported["metrics"] != random_init["metrics"]
    assert summary["results"]["random:0"]["metrics"] == random_init["metrics"]  # --seed 0 is plain random's seed
    assert summary["results"]["random:1"]["metrics"] != random_init["metrics"]
    assert summary["results"][url]["metrics"] == exported["metrics"]
    means = {name: (r["mean"], r["std"]) for name, r in summary["results"].items()}
    assert means == {str(tmp_path / "export"): (MEAN, STD), "random": (MEAN, STD), url: (MEAN, STD),
                     "random:0": (MEAN, STD), "random:1": (MEAN, STD),
                     str(tmp_path / "other_stats"): ([0.5] * 3, [0.25] * 3)}, "each weights with its own stats"
    assert list((tmp_path / "tensorboard").iterdir())


@pytest.mark.parametrize("case, flags, message", [
    ("size", ["--img_size", "40"], "--img_size 40 40: each side must be divisible by the patch size 16"),
    ("output", ["--output", "{folder}"], "--output {folder} is a folder; give the JSON file to write"),
    ("frame", ["--num_workers", "1"], "cannot decode frame {frame}: "),
    ("mean", ["--mean", "88,58,57"], "--mean 88,58,57: give values in [0, 1] units"),
    ("videos", ["--data", "{videos}"], "--data: {videos} holds video files (1 video, e.g. video01.mp4), not frames; "
                                       "prepare them first (python scripts/prepare_data.py --input {videos} --out"),
    ("seg", ["--data", "{missing}", "--label_format", "cholecseg8k"],
     "--data: {missing} does not exist; give the CholecSeg8k folder"),
    ("labels", ["--data", "{bare}"],
     "no phase_annotations folder in {bare} or {bare.parent}; give --labels, the folder that holds it"),
])
def test_evaluate_errors_are_one_line_before_anything_is_written(tmp_path, capsys, case, flags, message):
    tools = [[1, 0, 0, 0, 0, 0, 0]] * 4
    for video in ("video01", "video02"):
        write_cholec80_video(tmp_path / "data", video, seconds=4, phase_change=50, tools=tools)
    frame = tmp_path / "data" / "frames" / "video02" / "video02_000001.png"
    if case == "frame":
        frame.write_bytes(frame.read_bytes()[:40])
    folder = tmp_path / "a_folder"
    folder.mkdir()
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "video01.mp4").write_bytes(b"\0" * 64)  # found by its name
    shutil.copytree(tmp_path / "data" / "frames", tmp_path / "bare" / "frames")  # no annotations beside these
    places = {"folder": folder, "frame": frame, "videos": tmp_path / "videos", "missing": tmp_path / "missing",
              "bare": tmp_path / "bare" / "frames"}
    main = runpy.run_path(str(REPO / "scripts" / "evaluate.py"), run_name="evaluate_script")["main"]
    flags = [f.format(**places) for f in flags]
    try:
        code = main(["--weights", "random", "--model", "mae_vit_tiny_patch16", "--data", str(tmp_path / "data"),
                     "--img_size", "32", "--output", str(tmp_path / "probe.json"), "--num_workers", "0", *flags])
    except SystemExit as exit_:  # the flag parser's own refusals
        code = exit_.code
    stderr = capsys.readouterr().err
    assert code == 2 and stderr.splitlines() == [stderr.strip()], stderr
    assert stderr.startswith("error: " + message.format(**places)), stderr
    assert not (tmp_path / "probe.json").exists() and not (tmp_path / "tensorboard").exists()


def test_imagenet_mae_weights_are_the_endovit_recipes_init():
    seg = load_recipe("endovit_seg")
    imagenet = {"model": "mae_vit_base_patch16", "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    assert weights_source("imagenet_mae") == (seg["init_from"], imagenet, 0)
    assert seg["init_from"].startswith("https://") and seg["model"] == "mae_vit_base_patch16"
