"""`make demo`'s own commands, from writing its videos to probing: the pretrained encoder must beat the same
architecture at random init on the k-NN probe, as the README reports."""
from __future__ import annotations

import json
import re
import shlex

import pytest
from helpers.scripts import REPO, accelerate_launch, run_script

from endovit.data.store import MANIFEST

SAMPLE_RULE = re.compile(r"^\$\(SAMPLE\)/\.complete:.*\n((?:\t.*\n)+)", re.M)
DEMO_RULE = re.compile(r"^demo:.*\n((?:\t.*\n)+)", re.M)
# Measured 2026-12-04 on this 2-core AMD EPYC (avx2 only): k-NN tool mAP on the mean of patches 0.693 for the demo's
# encoder here (one thread; 0.690 with make demo's two) against 0.648, 0.617 and 0.633 for random, random:1 and
# random:2; pretraining seeds 1 and 2 gave 0.724 and 0.727, random seeds 3 and 4 gave 0.565 and 0.582. The smallest
# gap measured is 0.045 (random, seed 0; H.264's chroma subsampling smooths some of the sensor noise a random ViT
# cannot see past, which lifts random init); the margin keeps 0.015 of it for other CPUs' kernels.
MARGIN = 0.03


def rule_commands(rule: re.Pattern, program: str, sample, out=None, *, skip=()) -> list[list[str]]:
    """A Makefile rule's recipe, one argument list per ``program`` line (every other line must be in ``skip``),
    with its folders filled in."""
    lines = rule.search((REPO / "Makefile").read_text().replace("\\\n", " ")).group(1).splitlines()
    commands = []
    for line in (line.strip() for line in lines):
        if line in skip:
            continue
        launch, _, command = line.partition(" ")
        assert launch == program, line
        command = command.replace("$(SAMPLE)", str(sample)).replace("$(DEMO_OUT)", str(out))
        commands.append(shlex.split(command))
    return commands


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    sample, out = root / "sample", root / "out"
    for command in rule_commands(SAMPLE_RULE, "$(BIN)/python", sample, skip=("rm -rf $(SAMPLE)", "touch $@")):
        run_script(*command)
    launcher = accelerate_launch("--config_file", "accelerate_configs/cpu.yaml", "--num_cpu_threads_per_process", "1")
    results = [run_script(*command, launcher=launcher)
               for command in rule_commands(DEMO_RULE, "$(CPU_LAUNCH)", sample, out)]
    return sample, out, results


def test_the_demo_pretrains_and_probes_on_frames_prepared_from_its_videos(demo):
    sample, out, _ = demo
    for name, videos, first in (("train", 4, 1), ("val", 1, 5), ("probe", 64, 9)):
        names = [f"video{n:02d}" for n in range(first, first + videos)]
        assert sorted(p.name for p in (sample / name / "videos").iterdir()) == [f"{v}.mp4" for v in names]
        tools = sorted(p.name for p in (sample / name / "tool_annotations").iterdir())
        assert tools == [f"{v}-tool.txt" for v in names]
        manifest = json.loads((sample / "prepared" / name / MANIFEST).read_text())
        assert (manifest["video_count"], sorted(manifest["videos"])) == (videos, names), manifest
    recipe = json.loads((out / "endovit_config.json").read_text())["recipe"]
    prepared = str(sample / "prepared")
    assert (recipe["train_data"], recipe["probe_data"]) == (f"{prepared}/train", f"{prepared}/probe")


def test_the_demos_encoder_beats_random_init_on_knn(demo):
    _, out, _ = demo
    results = json.loads((out / "probe.json").read_text())["results"]
    knn = {name: result["metrics"]["knn_avg"]["map"] for name, result in results.items()}
    pretrained = knn.pop(str(out))
    assert sorted(knn) == ["random", "random:1", "random:2"]
    assert all(pretrained > baseline + MARGIN for baseline in knn.values()), (pretrained, knn)


def test_the_demo_reports_the_segmentation_probe_against_three_random_inits(demo):
    # Measured here (2026-12-03): the demo's encoder scores a lower mIoU than random init on these frames (see
    # docs/probing-segmentation.md), so this asserts the report, not a margin.
    _, out, (*_, segmentation) = demo
    results = json.loads((out / "probe_seg.json").read_text())["results"]
    assert sorted(results) == sorted([str(out), "random", "random:1", "random:2"])
    assert all(0 < result["metrics"]["seg"]["miou"] < 1 for result in results.values()), results
    assert re.search(r"^random:2 +seg ", segmentation.stdout, re.M)


def test_the_demo_probes_while_pretraining_and_keeps_the_best(demo):
    _, out, (pretraining, *_) = demo
    probed = re.findall(r"^step=(\d+) probe_knn_cls_map=\S+ probe_knn_avg_map=(\S+)", pretraining.stdout, re.M)
    assert [int(step) for step, _ in probed] == [0, 105, 210]
    best_step = json.loads((out / "best_probe" / "endovit_config.json").read_text())["step"]
    assert best_step == int(max(probed, key=lambda row: float(row[1]))[0])


def test_the_demos_data_comes_in_its_own_layout_only(tmp_path):
    result = run_script("scripts/make_sample_data.py", "--demo", "--out", str(tmp_path), "--videos", "3", check=False)
    assert (result.returncode, result.stderr) == (2, "error: --demo sets the data's layout itself; drop --videos\n")
    assert not any(tmp_path.iterdir())
