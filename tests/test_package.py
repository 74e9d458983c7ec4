"""The package a user installs: sdist and wheel build without warnings of ours and carry what a user needs; an
installed (non-editable) wheel trains with a checkout's scripts."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest
from helpers.scripts import REPO, TINY_TRAINING


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    source = tmp_path_factory.mktemp("source")
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return out, result.stdout + result.stderr


def test_build_warns_about_nothing_of_ours(dist):
    _, log = dist
    ours = [line for line in log.splitlines() if "warn" in line.lower() and "byte-compil" not in line]
    assert not ours, ours


def test_sdist_and_wheel_carry_what_a_user_needs(dist):
    out, _ = dist
    sdist = {name.split("/", 1)[1] for name in tarfile.open(next(out.glob("*.tar.gz"))).getnames() if "/" in name}
    for needed in ("LICENSE", "README.md", "constraints.txt", "scripts/pretrain.py", "scripts/device_check.sh",
                   "accelerate_configs/sagemaker.yaml", "accelerate_configs/sagemaker_metrics.tsv",
                   "endovit/recipes/endovit_seg.yaml", "tests/conftest.py", "tests/test_package.py"):
        assert needed in sdist, needed
    wheel = set(zipfile.ZipFile(next(out.glob("*.whl"))).namelist())
    assert {"endovit/recipes/demo.yaml", "endovit/recipes/endovit_seg.yaml", "endovit/sagemaker/job.py"} <= wheel
    assert any(name.endswith("licenses/LICENSE") for name in wheel)


def test_an_installed_wheel_trains_with_the_checkouts_scripts(dist, tmp_path, frames_dir):
    out, _ = dist
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                    str(next(out.glob("*.whl")))], check=True, capture_output=True)
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    where = subprocess.run([sys.executable, "-c", "import endovit; print(endovit.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(site)), where
    result = subprocess.run([sys.executable, str(REPO / "scripts" / "pretrain.py"), *TINY_TRAINING, "--train_data",
                             str(frames_dir), "--output_dir", str(tmp_path / "run"), "--batch_size", "8",
                             "--epochs", "1", "--warmup_epochs", "0"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and "done at step 2/2" in result.stdout, result.stdout + result.stderr
