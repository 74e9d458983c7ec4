"""Amazon SageMaker, inside a training job: the SM_* environment contract, and scripts/pretrain.py in a simulated
training job (one process, a spot restart, two processes) run from the staged source dir."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest
from helpers.sagemaker import REPO, TINY, job_environ, job_folders, metric_definitions, run_job

from endovit.data.synthetic import write_sample_frames
from endovit.recipe import build_parser, recipe_from_args
from endovit.sagemaker.job import job_defaults

# ------------------------------------------------------------------------------------------------ helpers








# ------------------------------------------------------------------------------------------------ in the job

def test_job_environment_supplies_defaults_and_flags_still_win(tmp_path):
    ml = tmp_path / "opt" / "ml"
    environ = job_environ(ml)
    local = recipe_from_args(build_parser().parse_args(["--train_data", "frames"]), environ={})
    assert (local.output_dir, local.resume, local.checkpoint_dir) == ("outputs/run", "none", "")

    job = recipe_from_args(build_parser().parse_args([]), environ=environ,
                           job_defaults=job_defaults(environ))
    assert job.train_data == environ["SM_CHANNEL_TRAIN"] and job.val_data == environ["SM_CHANNEL_VALIDATION"]
    assert job.output_dir == environ["SM_MODEL_DIR"]
    assert job.checkpoints_path == ml / "checkpoints"
    assert job.logging_path == ml / "output" / "tensorboard"
    assert job.resume == "auto"

    flags = recipe_from_args(build_parser().parse_args(["--output_dir", "elsewhere", "--resume", "none"]),
                             environ=environ, job_defaults=job_defaults(environ))
    assert (flags.output_dir, flags.resume) == ("elsewhere", "none")






@pytest.fixture
def simulated_job(tmp_path):
    ml = tmp_path / "opt" / "ml"
    code, env = job_folders(ml)
    return ml, code, env


def test_simulated_job_writes_model_and_checkpoints_and_resumes_after_spot_restart(simulated_job):
    ml, code, env = simulated_job
    first = run_job(code, env, TINY + ["--stop_at_step", "2"])
    assert "done at step 2/4" in first.stdout
    for name in ("model.safetensors", "encoder.safetensors", "endovit_config.json", "config.yaml"):
        assert (ml / "model" / name).is_file(), name
    assert (ml / "checkpoints" / "step_00000002" / "model.safetensors").is_file()
    assert list((ml / "output" / "tensorboard").rglob("events.out.tfevents.*"))
    assert not (ml / "model" / "checkpoints").exists() and not (ml / "model" / "tensorboard").exists()

    probe = ml / "probe"  # labelled frames, so the probe's metric lines appear too
    write_sample_frames(probe, videos=2, frames=6, height=48, width=64, first_video=41, labelled=True)
    restarted = run_job(code, env, TINY + ["--probe_data", str(probe), "--probe_label_format", "cholec80_tool",
                                           "--probe_train_videos", "[41]", "--probe_test_videos", "[42]"])
    # the same job after a spot interruption: same folders, checkpoints restored
    assert f"resumed from {ml / 'checkpoints' / 'step_00000002'} at step 2" in restarted.stdout
    assert "done at step 4/4" in restarted.stdout
    assert (ml / "checkpoints" / "step_00000004").is_dir()
    assert json.loads((ml / "model" / "endovit_config.json").read_text())["step"] == 4

    lines = (first.stdout + restarted.stdout).splitlines()
    for metric in metric_definitions():
        values = [m.group(1) for m in map(re.compile(metric["Regex"]).search, lines) if m]
        assert values, f"{metric['Name']} regex {metric['Regex']!r} matches no line of pretrain.py's output"
        assert all(float(v) >= 0 for v in values)


AUDIT_HOOK = '''
import os, sys
_root = os.environ.get("ENDOVIT_AUDIT_ROOT")
if _root:
    _log = open(os.path.join(os.environ["ENDOVIT_AUDIT_LOGS"], f"{os.getpid()}.log"), "a", buffering=1)
    _log.write(os.environ.get("RANK", "-") + "\\taudited\\n")
    _writing = os.O_WRONLY | os.O_RDWR

    def _record(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = args
            writes = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & _writing)
        elif event == "os.rename":
            path, writes = args[1], True
        else:
            return
        path = os.path.abspath(os.fsdecode(path))
        if writes and path.startswith(_root):
            _log.write(os.environ.get("RANK", "-") + "\\t" + path + "\\n")

    sys.addaudithook(_record)

    import safetensors.torch
    import torch

    def _logged(save, position):
        def wrapper(*args, **kwargs):
            target = args[position] if len(args) > position else next(iter(kwargs.values()))
            if isinstance(target, (str, os.PathLike)):
                _record("os.rename", (None, target))
            return save(*args, **kwargs)
        return wrapper

    torch.save = _logged(torch.save, 1)  # torch.save and safetensors write from C++/Rust, unseen by the audit hook
    safetensors.torch.save_file = _logged(safetensors.torch.save_file, 1)
'''


def test_two_process_job_writes_each_file_once(simulated_job, tmp_path):
    ml, code, env = simulated_job
    hook, logs = tmp_path / "audit", tmp_path / "audit_logs"
    hook.mkdir()
    logs.mkdir()
    (hook / "sitecustomize.py").write_text(AUDIT_HOOK)
    env = dict(env, PYTHONPATH=f"{hook}{os.pathsep}{code}", ENDOVIT_AUDIT_ROOT=str(ml), ENDOVIT_AUDIT_LOGS=str(logs),
               ACCELERATE_USE_CPU="true")  # without CUDA, torchrun's workers would each run alone (DistributedType.NO)
    result = run_job(code, env, TINY, processes=2)
    assert "2 process(es)" in result.stdout

    writers = defaultdict(set)  # path -> ranks that wrote it through Python's open() or os.replace()
    for log in logs.iterdir():
        for line in log.read_text().splitlines():
            rank, path = line.split("\t")
            writers[path].add(rank)
    assert {"0", "1"} <= writers.pop("audited")
    own_rng_state = {path for path, ranks in writers.items() if Path(path).name == "random_states_1.pkl"}
    assert own_rng_state and all(writers.pop(path) == {"1"} for path in own_rng_state)
    assert not {path: ranks for path, ranks in writers.items() if ranks != {"0"}}
    assert any(".tmp-step_" in path and path.endswith("model.safetensors") for path in writers)
    for name in ("model.safetensors", "encoder.safetensors", "endovit_config.json", "config.yaml",
                 "reconstruction.png"):
        assert str(ml / "model" / name) in writers, name
    assert str(ml / "checkpoints" / "step_00000004") in writers
    assert any(Path(p).name.startswith("events.out.tfevents") for p in writers)
    checkpoint = ml / "checkpoints" / "step_00000004"
    assert {"random_states_0.pkl", "random_states_1.pkl", "model.safetensors"} <= {p.name for p in checkpoint.iterdir()}


def test_job_side_imports_neither_the_sdk_nor_the_launcher():
    """A job (and endovit.recipe) runs without the sagemaker extra; the launcher imports the recipe without a cycle."""
    check = ("import sys, endovit.recipe, endovit.sagemaker.job; "
             "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'sagemaker', 'boto3', 'botocore'}); "
             "assert not loaded and 'endovit.sagemaker.launch' not in sys.modules, loaded; "
             "import endovit.sagemaker.launch")
    for code in (check, "import endovit.sagemaker.launch, endovit.recipe"):
        result = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=str(REPO)),
                                capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
