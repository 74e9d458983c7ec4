"""The data layer's shape: light imports, no recipe or model inside it, one copy of each check, atomic writes,
files and functions of readable size."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import endovit.data
from endovit.data import DataError, PrepareSettings, prepare_frames
from endovit.data.splits import CHOLEC80_SPLITS, check_split_name
from endovit.data.synthetic import write_sample_frames

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("datasets", "torch", "torchvision", "pyarrow")


def modules_after(code: str) -> set[str]:
    """Top-level module names imported by a fresh interpreter that runs ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}).stdout
    return set(json.loads(out.strip().splitlines()[-1]))


@pytest.mark.parametrize("code", ["import endovit.data.splits", "from endovit.data import CHOLEC80_SPLITS",
                                  "from endovit.data import DataError, check_split_name"])
def test_splits_and_the_package_import_without_datasets_or_torch(code):
    loaded = modules_after(code)
    assert not loaded & set(HEAVY), f"{code!r} imported {sorted(loaded & set(HEAVY))}"


def test_the_data_layer_imports_neither_the_recipe_nor_the_model():
    modules = [f"endovit.data.{p.stem}" for p in (REPO / "endovit" / "data").glob("*.py") if p.stem != "__init__"]
    loaded = modules_after("\n".join(f"import {m}" for m in modules))
    assert "datasets" in loaded  # the probe really imported the layer
    assert not {m for m in loaded if m in ("endovit.recipe", "timm", "sagemaker") or m.startswith("endovit.models")}


def test_prepare_data_script_does_not_import_the_recipe():
    code = ("import runpy, sys\nsys.argv = ['prepare_data.py', '--help']\n"
            "try:\n    runpy.run_path('scripts/prepare_data.py', run_name='__main__')\nexcept SystemExit:\n    pass")
    loaded = modules_after(code)
    assert "endovit.data.prepare" in loaded
    assert not loaded & {"endovit.recipe", "timm", "sagemaker"}


def test_every_exported_name_resolves_lazily():
    for name in endovit.data.__all__:
        assert getattr(endovit.data, name) is not None, name
        assert name in dir(endovit.data)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        endovit.data.nope  # noqa: B018


def test_split_name_check_is_one_function_with_a_hint():
    for name in CHOLEC80_SPLITS:
        assert check_split_name(name) == name
    with pytest.raises(DataError, match=r"unknown Cholec80 split 'Cholec80_for_Validaton' \(did you mean "
                                        r"Cholec80_for_Validation\?\); choose one of Cholec80_for_Segmentation"):
        check_split_name("Cholec80_for_Validaton")


@pytest.mark.parametrize("settings, message", [
    (PrepareSettings(image_format="jpg"), r"--image_format 'jpg': choose one of jpeg, png, keep \(did you mean jpeg"),
    (PrepareSettings(image_format="keep"), "--image_format 'keep': 'keep' stores original bytes"),
    (PrepareSettings(quality=0), "--quality 0: JPEG quality must be in 1..100"),
    (PrepareSettings(on_error="skipp"), r"--on_error 'skipp': choose one of skip, stop \(did you mean skip"),
    (PrepareSettings(shard_size=0), "--shard_size 0: must be a positive number"),
])
def test_prepare_settings_errors_name_flag_value_and_choices(settings, message):
    with pytest.raises(DataError, match=message):
        settings.validate()


def test_a_failed_shard_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    write_sample_frames(tmp_path / "in", videos=1, frames=2, height=16, width=16)

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        prepare_frames(tmp_path / "in" / "frames", tmp_path / "out", PrepareSettings(short_side=0), progress=False)
    assert sorted(p.name for p in (tmp_path / "out" / "shards").iterdir()) == ["shard-00000.json"]


def _owned_python_files() -> list[Path]:
    data = [p for p in (REPO / "endovit" / "data").glob("*.py") if p.name != "synthetic.py"]
    scripts = [REPO / "scripts" / n for n in ("prepare_data.py", "compute_stats.py", "benchmark_data.py")]
    return [*data, *scripts, *(REPO / "tests").glob("test_data*.py")]


def test_no_file_over_400_lines_and_no_function_over_80():
    too_long = []
    for path in _owned_python_files():
        text = path.read_text()
        if text.count("\n") > 400:
            too_long.append(f"{path.name}: {text.count(chr(10))} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 80:
                too_long.append(f"{path.name}:{node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long
