"""The GPU check rehearsed on the CPU, in an environment shaped like the GPU machine's image: only the packages
that image has (torch, accelerate, timm, safetensors, tensorboard, ... but not ``datasets``), plus the wheels
the check carries (``make device-wheels``). A check that cannot start there would waste a rare GPU lease."""
from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from helpers.scripts import REPO

# What the GPU machine's image has (from the device tool's KINDS.md), as far as endovit touches it; their own
# requirements come along. It has no datasets, dill or multiprocess: the check brings those as wheels.
GPU_IMAGE = ["accelerate", "torch", "torchvision", "timm", "safetensors", "tensorboard", "numpy", "pyarrow", "pillow",
             "pyyaml", "tqdm", "psutil", "fsspec", "filelock", "pandas", "xxhash", "packaging", "pip", "setuptools"]
NOT_IN_IMAGE = {"datasets", "dill", "multiprocess"}
pytestmark = pytest.mark.wheels  # run by `make test-wheels` (and .ci/run), not by `make test`
WHEELS = REPO / ".whl-local"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def shaped_environment(root: Path) -> Path:
    """A virtual environment holding only the GPU image's packages (links into this one); returns its python."""
    venv.EnvBuilder(with_pip=False).create(root)
    site = next(root.glob("lib/python*/site-packages"))
    installed = {_norm(d.metadata["Name"]): d for d in importlib.metadata.distributions()}
    wanted, todo = set(), [_norm(n) for n in GPU_IMAGE]
    while todo:
        name = todo.pop()
        if name in wanted or name in NOT_IN_IMAGE or name not in installed:
            continue
        wanted.add(name)
        todo += [_norm(re.split(r"[\s<>=!~;\[(]", r, maxsplit=1)[0]) for r in installed[name].requires or []
                 if "extra ==" not in r]
    for dist in (installed[name] for name in wanted):
        tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            source = Path(dist.locate_file(top))
            if source.exists() and not (site / top).exists():
                (site / top).symlink_to(source)
    return root / "bin" / "python"


def test_device_check_runs_in_the_gpu_image_shape(tmp_path):
    assert WHEELS.is_dir() and list(WHEELS.glob("datasets-*.whl")), "run make device-wheels first"
    python = shaped_environment(tmp_path / "env")
    lacks = subprocess.run([str(python), "-c", "import datasets"], capture_output=True, text=True)
    assert lacks.returncode != 0, "the shaped environment must not have datasets"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHON=str(python), WHEELS=str(WHEELS), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run(["bash", "scripts/device_check.sh", "--cpu_rehearsal", "--out", str(tmp_path / "out")],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "device_check.json").read_text())
    ours, baseline = report["step_benchmark"]
    assert ours["compiled"] and ours["recompiles_after_trial"] == 0
    assert not baseline["compiled"] and baseline["sync_every_step"]
    bf16, fp16 = report["pretrain"], report["pretrain_fp16"]
    assert [r["step"] for r in bf16["log"]] == [2, 4, 6, 8] and bf16["checkpoint_seconds"] is not None
    assert all(0 <= r["data_wait"] <= 1 for r in bf16["log"]) and bf16["first_step_seconds"] > 0
    assert [r["step"] for r in fp16["log"]] == [2, 4, 6] and report["failures"] == []
    assert report["probe"]["frames"] == 64 and report["probe"]["probe_seconds"] > 0


def test_step_benchmark_needs_no_datasets(tmp_path):
    """The step benchmark imports nothing of the data layer's storage (``datasets``/``pyarrow``)."""
    code = ("import sys; import endovit.benchmark, endovit.engine; "
            "print(sorted(m for m in ('datasets', 'pyarrow', 'sagemaker') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
