"""The oldest timm that setup.cfg allows trains the same MAE and writes and loads the same export.

pip keeps a user's installed timm when it is inside our range, and the GPU machine's image came with timm 1.0.29:
its ``save_config_for_hf`` lacks an argument of 1.0.31's, and the export at the end of a whole run crashed there.
The floor's wheel (``make test-wheels`` downloads it into .whl-local/) is imported straight from the zip in a
subprocess; its results are compared with this environment's timm."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from helpers.scripts import REPO, script_env
from helpers.timm_floor import train_export_load

pytestmark = pytest.mark.wheels  # run by `make test-wheels` (and .ci/run), not by `make test`
FLOOR = re.search(r"^\s*timm>=([\d.]+)", (REPO / "setup.cfg").read_text(), re.M).group(1)


def _under_the_floor(wheel: Path, out: Path) -> dict:
    """``train_export_load`` in a subprocess that imports timm from the floor's wheel."""
    env = script_env()
    env["PYTHONPATH"] = os.pathsep.join([str(wheel), str(REPO), str(REPO / "tests")])
    code = ("import sys, torch; from pathlib import Path; from helpers.timm_floor import train_export_load; "
            "torch.save(train_export_load(Path(sys.argv[1])), sys.argv[2])")
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code, str(out), str(out / "results.pt")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return torch.load(out / "results.pt")


def test_the_oldest_allowed_timm_trains_and_exports_what_the_pinned_one_does(tmp_path):
    wheel = REPO / ".whl-local" / f"timm-{FLOOR}-py3-none-any.whl"
    assert wheel.is_file(), f"{wheel} is missing: run make test-wheels (it downloads the wheel)"
    assert timm.__version__ != FLOOR, "the pinned timm is the floor: nothing to compare"
    floor = _under_the_floor(wheel, tmp_path / "floor")
    pinned = train_export_load(tmp_path / "pinned")
    assert (floor["version"], pinned["version"]) == (FLOOR, timm.__version__)
    assert torch.equal(floor["loss"], pinned["loss"])
    assert torch.equal(floor["features"], pinned["features"])
    config = json.loads((tmp_path / "floor" / "timm" / "config.json").read_text())
    assert config == json.loads((tmp_path / "pinned" / "timm" / "config.json").read_text())
    assert config["model_args"]["img_size"] == [32, 48] and config["pretrained_cfg"]["mean"] == [0.41, 0.27, 0.2]
