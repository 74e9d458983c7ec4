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
import torch
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
    seg = report["segmentation_probe"]
    assert (seg["frames"], seg["mask_size"]) == (8, [48, 64]) and seg["total_s"] > 0


def test_step_benchmark_needs_no_datasets(tmp_path):
    """The step benchmark imports nothing of the data layer's storage (``datasets``/``pyarrow``)."""
    code = ("import sys; import endovit.benchmark, endovit.engine; "
            "print(sorted(m for m in ('datasets', 'pyarrow', 'sagemaker') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.stdout.strip() == "[]", result.stdout + result.stderr


def test_speed_check_parts_rehearse_on_the_cpu(tmp_path):
    """Both parts of the step's speed check run end to end on tiny sizes and write every section."""
    from endovit.profiling import BUCKETS

    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "scripts/device_check.py", "--cpu_rehearsal", "--part", "ab", "--out",
                             str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    a = json.loads((tmp_path / "speed_a.json").read_text())
    assert a["versions"]["torch"] == torch.__version__ and set(a["sdpa_choice"]) == {"2x3x2x64", "2x4x5x32"}
    assert set(a["profile"]["ms_per_step"]) == set(BUCKETS) and a["profile"]["ms_per_step"]["gemm"] > 0
    for row in a["sdpa_microbenchmark"]:
        assert row["math"]["max_abs_diff_out"] == 0 and row["flash"]["max_abs_diff_out"] < 1e-5
        assert "error" in row["cudnn"]  # no cuDNN attention on a CPU: recorded, not fatal
    assert [r["name"] for r in a["backend_ab"]] == ["endovit", "endovit sdpa=flash", "endovit sdpa=math"]
    b = json.loads((tmp_path / "speed_b.json").read_text())
    names = [r["name"] for r in b["runs"]]
    assert names == ["default", "endovit host batches, side-stream copy off",
                     "endovit host batches, side-stream copy on", "baseline (EndoViT settings)",
                     "EndoViT code as it ran",
                     "endovit mode=max-autotune-no-cudagraphs + coordinate descent", "endovit mode=max-autotune"]
    modes = [r for r in b["runs"] if "mode=" in r["name"]]
    assert all(r["loss_trace_worst_relative_gap_vs_default"] == 0 for r in modes)  # eager backend: same math
    assert b["runs"][4]["attention"] == "timm045" and b["timm_anchor"]["images_per_sec"] > 0
    assert set(b["ratios"]) == {"default / baseline (EndoViT settings)", "default / EndoViT code as it ran",
                                "default / timm anchor"}
    assert a["failures"] == [] and b["failures"] == [] and a["skipped"] == b["skipped"] == []
