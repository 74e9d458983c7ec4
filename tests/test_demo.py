"""`make demo`'s own commands on its own frames: the pretrained encoder must beat the same architecture at random
init on the k-NN probe, as the README reports."""
from __future__ import annotations

import json
import re
import shlex

import pytest
from helpers.scripts import REPO, accelerate_launch, run_script

from endovit.data.synthetic import write_demo_frames
from endovit.data.synthetic_seg import write_demo_seg_frames

DEMO_RULE = re.compile(r"^demo:.*\n((?:\t.*\n)+)", re.M)
# Measured on this 2-core AMD EPYC: k-NN tool mAP on the mean of patches 0.674 for the demo's encoder here (one
# thread; 0.684 with make demo's two) against 0.604, 0.607 and 0.610 for random, random:1 and random:2. Pretraining
# seeds 1 and 2 gave 0.695 and 0.743, random seeds 3 and 4 gave 0.534 and 0.559.
MARGIN = 0.04


def demo_commands(sample, out) -> list[list[str]]:
    """The Makefile's ``demo`` recipe, one argument list per command, with its folders filled in."""
    rule = DEMO_RULE.search((REPO / "Makefile").read_text().replace("\\\n", " ")).group(1)
    commands = []
    for line in rule.splitlines():
        launch, _, command = line.strip().partition(" ")
        assert launch == "$(CPU_LAUNCH)", line
        commands.append(shlex.split(command.replace("$(SAMPLE)", str(sample)).replace("$(DEMO_OUT)", str(out))))
    return commands


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    write_demo_frames(root / "sample")
    write_demo_seg_frames(root / "sample" / "seg")
    launcher = accelerate_launch("--config_file", "accelerate_configs/cpu.yaml", "--num_cpu_threads_per_process", "1")
    results = [run_script(*command, launcher=launcher) for command in demo_commands(root / "sample", root / "out")]
    return root / "out", results


def test_the_demos_encoder_beats_random_init_on_knn(demo):
    out, _ = demo
    results = json.loads((out / "probe.json").read_text())["results"]
    knn = {name: result["metrics"]["knn_avg"]["map"] for name, result in results.items()}
    pretrained = knn.pop(str(out))
    assert sorted(knn) == ["random", "random:1", "random:2"]
    assert all(pretrained > baseline + MARGIN for baseline in knn.values()), (pretrained, knn)


def test_the_demo_reports_the_segmentation_probe_against_three_random_inits(demo):
    # Measured here (2026-12-03): the demo's encoder scores a lower mIoU than random init on these frames (see
    # docs/probing-segmentation.md), so this asserts the report, not a margin.
    out, (*_, segmentation) = demo
    results = json.loads((out / "probe_seg.json").read_text())["results"]
    assert sorted(results) == sorted([str(out), "random", "random:1", "random:2"])
    assert all(0 < result["metrics"]["seg"]["miou"] < 1 for result in results.values()), results
    assert re.search(r"^random:2 +seg ", segmentation.stdout, re.M)


def test_the_demo_probes_while_pretraining_and_keeps_the_best(demo):
    out, (pretraining, *_) = demo
    probed = re.findall(r"^step=(\d+) probe_knn_cls_map=\S+ probe_knn_avg_map=(\S+)", pretraining.stdout, re.M)
    assert [int(step) for step, _ in probed] == [0, 105, 210]
    best_step = json.loads((out / "best_probe" / "endovit_config.json").read_text())["step"]
    assert best_step == int(max(probed, key=lambda row: float(row[1]))[0])


def test_the_demos_frames_come_in_its_own_layout_only(tmp_path):
    result = run_script("scripts/make_sample_data.py", "--demo", "--out", str(tmp_path), "--videos", "3", check=False)
    assert (result.returncode, result.stderr) == (2, "error: --demo sets the frames' layout itself; drop --videos\n")
    assert not any(tmp_path.iterdir())
