"""Amazon SageMaker: the launcher's requests against moto, the hyperparameter round trip, and
scripts/pretrain.py in a simulated training job (one process, a spot restart, two processes)."""
from __future__ import annotations

import io
import json
import os
import re
import runpy
import subprocess
import sys
import tarfile
from collections import defaultdict
from pathlib import Path

import pytest
import yaml

from endovit.data.synthetic import write_sample_frames
from endovit.recipe import build_parser, parse_recipe, recipe_from_args
from endovit.sagemaker import stage_source_dir

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "accelerate_configs"
BUCKET = "endovit-test"
REGION = "us-east-1"
DLC_IMAGE = ("763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:"
             "2.8.0-transformers4.56.2-gpu-py312-cu129-ubuntu22.04")
JOB_FOLDER_KEYS = {"train_data", "val_data", "output_dir", "checkpoint_dir", "logging_dir", "resume"}
TINY = ["--recipe", "demo", "--model", "mae_vit_tiny_patch16", "--img_size", "32", "--batch_size", "4",
        "--epochs", "2", "--warmup_epochs", "0.5", "--num_workers", "0", "--val_every_steps", "1000"]


# ------------------------------------------------------------------------------------------------ helpers

def metric_definitions() -> list[dict]:
    rows = (CONFIGS / "sagemaker_metrics.tsv").read_text().splitlines()[1:]
    return [dict(zip(("Name", "Regex"), row.split("\t"), strict=True)) for row in rows if row.strip()]


def toolkit_argv(hyperparameters: dict[str, str]) -> list[str]:
    """What the SageMaker training toolkit passes the entry script: JSON-decoded values, str()-ed, sorted,
    without the SDK's own sagemaker_* entries."""
    argv = []
    for key in sorted(hyperparameters):
        if not key.startswith("sagemaker_"):
            argv += [f"--{key}", str(json.loads(hyperparameters[key]))]
    return argv


def job_environ(ml: Path) -> dict[str, str]:
    """The SM_* variables of a one-host job whose /opt/ml is ``ml``."""
    return {
        "SM_MODEL_DIR": str(ml / "model"),
        "SM_OUTPUT_DIR": str(ml / "output"),
        "SM_OUTPUT_DATA_DIR": str(ml / "output" / "data"),
        "SM_CHANNEL_TRAIN": str(ml / "input" / "data" / "train"),
        "SM_CHANNEL_VALIDATION": str(ml / "input" / "data" / "validation"),
        "SM_HOSTS": '["algo-1"]',
        "SM_CURRENT_HOST": "algo-1",
        "SM_NUM_GPUS": "0",
    }


def write_config(tmp_path: Path, name: str, **changes) -> Path:
    """A shipped config with a real bucket and absolute TSV paths; ``changes`` replace (None: drop) keys."""
    text = (CONFIGS / name).read_text().replace("YOUR-BUCKET", BUCKET)
    config = yaml.safe_load(text.replace("accelerate_configs/", f"{CONFIGS}/"))
    inputs = tmp_path / "inputs.tsv"
    inputs.write_text((CONFIGS / "sagemaker_inputs.tsv").read_text().replace("YOUR-BUCKET", BUCKET))
    config["sagemaker_inputs_file"] = str(inputs)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def launcher():
    return runpy.run_path(str(REPO / "scripts" / "launch_sagemaker.py"), run_name="launch_sagemaker")["main"]


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials and region, no AWS config files, no instance metadata, SDK telemetry off."""
    pytest.importorskip("sagemaker")
    for key in list(os.environ):
        if key.startswith(("AWS_", "SAGEMAKER_")):
            monkeypatch.delenv(key)
    sdk_defaults = tmp_path / "sagemaker_defaults.yaml"
    sdk_defaults.write_text(yaml.safe_dump({"SchemaVersion": "1.0",
                                            "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}))
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(sdk_defaults))
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)


@pytest.fixture
def aws(aws_env):
    """An in-process moto AWS with one empty bucket; yields a boto3 session on it."""
    import boto3
    from moto import mock_aws

    with mock_aws():
        session = boto3.Session(region_name=REGION)
        session.client("s3").create_bucket(Bucket=BUCKET)
        yield session


@pytest.fixture
def offline_aws(aws_env):
    """moto without its own fake credentials: a launch that wrongly goes ahead still reaches no real AWS."""
    from moto import mock_aws

    with mock_aws(config={"core": {"mock_credentials": False}}):
        yield


@pytest.fixture
def sent(monkeypatch):
    """Every AWS API call the code under test makes: (service, operation, params as passed to botocore)."""
    import botocore.client

    calls = []
    make_api_call = botocore.client.BaseClient._make_api_call

    def record(client, operation, params):
        calls.append((client.meta.service_model.service_name, operation, json.loads(json.dumps(params, default=str))))
        return make_api_call(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    return calls


def create_training_job_request(calls) -> dict:
    requests = [params for service, operation, params in calls if operation == "CreateTrainingJob"]
    assert len(requests) == 1
    return requests[0]


def bucket_keys(session, prefix: str = "") -> list[str]:
    listing = session.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))


# ------------------------------------------------------------------------------------------------ in the job

def test_job_environment_supplies_defaults_and_flags_still_win(tmp_path):
    ml = tmp_path / "opt" / "ml"
    environ = job_environ(ml)
    local = recipe_from_args(build_parser().parse_args(["--train_data", "frames"]), environ={})
    assert (local.output_dir, local.resume, local.checkpoint_dir) == ("outputs/run", "none", "")

    job = recipe_from_args(build_parser().parse_args([]), environ=environ)
    assert job.train_data == environ["SM_CHANNEL_TRAIN"] and job.val_data == environ["SM_CHANNEL_VALIDATION"]
    assert job.output_dir == environ["SM_MODEL_DIR"]
    assert job.checkpoints_path == ml / "checkpoints"
    assert job.logging_path == ml / "output" / "tensorboard"
    assert job.resume == "auto"

    flags = recipe_from_args(build_parser().parse_args(["--output_dir", "elsewhere", "--resume", "none"]),
                             environ=environ)
    assert (flags.output_dir, flags.resume) == ("elsewhere", "none")


def run_job(code: Path, env: dict, argv: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    runner = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
              if processes > 1 else [sys.executable])
    result = subprocess.run(runner + ["pretrain.py", *argv], cwd=code, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture
def simulated_job(tmp_path):
    """/opt/ml-like folders under tmp: channels with frames, the staged source dir as /opt/ml/code."""
    ml = tmp_path / "opt" / "ml"
    environ = job_environ(ml)
    write_sample_frames(environ["SM_CHANNEL_TRAIN"], videos=1, frames=8, height=48, width=64)
    write_sample_frames(environ["SM_CHANNEL_VALIDATION"], videos=1, frames=4, height=48, width=64, first_video=2)
    code = stage_source_dir(REPO / "scripts" / "pretrain.py", ml / "code")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SM_", "ACCELERATE_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
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

    restarted = run_job(code, env, TINY)  # the same job after a spot interruption: same folders, checkpoints restored
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


# ------------------------------------------------------------------------------------------------ the launcher

@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's working folder: the entry script next to data and outputs that must not travel as code."""
    root = tmp_path / "project"
    scripts = root / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "pretrain.py").write_text((REPO / "scripts" / "pretrain.py").read_text())
    write_sample_frames(root / "data" / "train", videos=1, frames=8, height=48, width=64)
    write_sample_frames(scripts / "data", videos=1, frames=2, height=48, width=64)
    (scripts / "outputs" / "run").mkdir(parents=True)
    (scripts / "outputs" / "run" / "model.safetensors").write_bytes(b"weights")
    monkeypatch.chdir(root)
    return root


def test_one_gpu_launch_creates_the_training_job(aws, sent, launcher, project, tmp_path, capsys):
    config = write_config(tmp_path, "sagemaker.yaml")
    rc = launcher(["--config_file", str(config), "--job_name", "endovit-test-1", "scripts/pretrain.py", *TINY,
                   "--swa", "false", "--train_data", "data/train", "--val_data", f"s3://{BUCKET}/data/val"])
    assert rc == 0, capsys.readouterr().err
    request = create_training_job_request(sent)
    job = f"{BUCKET}/endovit/jobs/endovit-test-1"

    assert request["AlgorithmSpecification"]["TrainingImage"] == DLC_IMAGE
    assert request["AlgorithmSpecification"]["MetricDefinitions"] == metric_definitions()
    assert request["ResourceConfig"]["InstanceType"] == "ml.g5.2xlarge"
    assert request["ResourceConfig"]["InstanceCount"] == 1
    hyperparameters = {k: json.loads(v) for k, v in request["HyperParameters"].items()}
    assert {k: v for k, v in hyperparameters.items() if not k.startswith("sagemaker_")} == {
        "recipe": "demo", "model": "mae_vit_tiny_patch16", "img_size": 32, "batch_size": 4, "epochs": 2,
        "warmup_epochs": 0.5, "num_workers": 0, "val_every_steps": 1000, "swa": "false"}
    assert hyperparameters["sagemaker_program"] == "pretrain.py"
    assert "sagemaker_torch_distributed_enabled" not in hyperparameters
    assert request["EnableManagedSpotTraining"] is True
    stopping = request["StoppingCondition"]
    assert stopping["MaxWaitTimeInSeconds"] >= stopping["MaxRuntimeInSeconds"] > 0
    assert request["CheckpointConfig"] == {"S3Uri": f"s3://{BUCKET}/endovit/checkpoints/endovit-test-1",
                                           "LocalPath": "/opt/ml/checkpoints"}
    assert request["TensorBoardOutputConfig"] == {"S3OutputPath": f"s3://{BUCKET}/endovit/tensorboard/endovit-test-1",
                                                  "LocalPath": "/opt/ml/output/tensorboard"}
    assert request["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/endovit/jobs"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels == {"train": f"s3://{job}/input/train", "validation": f"s3://{BUCKET}/data/val"}
    assert request["Environment"]["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert request["Environment"]["ACCELERATE_SAGEMAKER_DISTRIBUTED_TYPE"] == "NO"

    assert bucket_keys(aws, "endovit/jobs/endovit-test-1/input/train/") == [
        f"endovit/jobs/endovit-test-1/input/train/frames/video01/video01_{i:06d}.png" for i in range(8)]
    source = hyperparameters["sagemaker_submit_directory"]
    body = aws.client("s3").get_object(Bucket=BUCKET, Key=source.split(f"s3://{BUCKET}/", 1)[1])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names = set(tar.getnames())
        requirements = tar.extractfile("requirements.txt").read().decode()
    assert {"pretrain.py", "requirements.txt", "endovit/__init__.py", "endovit/sagemaker.py",
            "endovit/data/frames.py", "endovit/models/mae.py", "endovit/recipes/demo.yaml"} <= names
    assert not [n for n in names if "__pycache__" in n or n.startswith(("data", "outputs", "scripts"))
                or n.endswith((".png", ".safetensors"))]
    assert {"timm", "accelerate", "datasets", "safetensors"} <= {re.split(r"[<>=!~; ]", line)[0]
                                                                 for line in requirements.splitlines()}
    described = aws.client("sagemaker").describe_training_job(TrainingJobName="endovit-test-1")
    assert described["AlgorithmSpecification"]["TrainingImage"] == DLC_IMAGE
    assert "endovit-test-1" in capsys.readouterr().out


def test_multi_gpu_launch_runs_torchrun_on_every_instance(aws, sent, launcher, tmp_path, capsys):
    config = write_config(tmp_path, "sagemaker_multi_gpu.yaml")
    rc = launcher(["--config_file", str(config), "--job_name", "endovit-test-16", "--wait", "scripts/pretrain.py",
                   "--recipe", "endovit_seg"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "training job endovit-test-16 finished" in out  # moto completes jobs at once
    calls = [(service, operation) for service, operation, _ in sent]
    assert calls.index(("sagemaker", "DescribeTrainingJob")) > calls.index(("sagemaker", "CreateTrainingJob"))
    assert ("logs", "DescribeLogStreams") in calls  # --wait followed the job and its CloudWatch logs
    request = create_training_job_request(sent)
    assert request["ResourceConfig"]["InstanceType"] == "ml.p4d.24xlarge"
    assert request["ResourceConfig"]["InstanceCount"] == 2
    hyperparameters = request["HyperParameters"]
    assert hyperparameters["sagemaker_torch_distributed_enabled"] == "true"
    assert not [k for k in hyperparameters if "smdistributed" in k or "dataparallel" in k or k.endswith("mpi")]
    assert request["Environment"]["ACCELERATE_SAGEMAKER_DISTRIBUTED_TYPE"] == "NO"
    assert request["AlgorithmSpecification"]["TrainingInputMode"] == "FastFile"
    assert request["EnableManagedSpotTraining"] is True
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels == {"train": f"s3://{BUCKET}/endovit/data/train",
                        "validation": f"s3://{BUCKET}/endovit/data/validation"}


def test_dry_run_prints_the_request_sends_nothing_and_round_trips_to_the_local_recipe(
        aws, sent, launcher, tmp_path, capsys):
    config = write_config(tmp_path, "sagemaker.yaml")
    script_args = ["--recipe", "demo", "--lr", "1e-3", "--warmup_epochs", "1.0", "--img_size", "[32,64]",
                   "--swa", "true", "--mean", "[0.3,0.2,0.25]", "--stop_at_step", "none", "--init_from", "",
                   "--clip_grad", "1.0", "--batch_size", "8", "--train_data", f"s3://{BUCKET}/frames/train",
                   "--val_data", f"s3://{BUCKET}/frames/val"]
    rc = launcher(["--config_file", str(config), "--dry-run", "scripts/pretrain.py", *script_args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    request = create_training_job_request(sent)
    assert json.loads(out) == json.loads(json.dumps(request))
    assert bucket_keys(aws) == []
    assert aws.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []

    ml = Path("/opt/ml")
    job = recipe_from_args(build_parser().parse_args(toolkit_argv(request["HyperParameters"])),
                           environ=job_environ(ml))
    local = parse_recipe(script_args)
    assert {k: v for k, v in job.to_dict().items() if k not in JOB_FOLDER_KEYS} == \
           {k: v for k, v in local.to_dict().items() if k not in JOB_FOLDER_KEYS}
    assert (job.train_data, job.val_data) == (str(ml / "input/data/train"), str(ml / "input/data/validation"))
    assert (job.output_dir, job.checkpoints_path, job.resume) == (str(ml / "model"), ml / "checkpoints", "auto")


def fake_sdk_v3(monkeypatch, tmp_path, config):
    dist_info = tmp_path / "site" / "sagemaker-3.0.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: sagemaker\nVersion: 3.0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    return config


def no_credentials(monkeypatch, tmp_path, config):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    return config


def no_region(monkeypatch, tmp_path, config):
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    return write_config(tmp_path, "sagemaker.yaml", region=None)


@pytest.mark.parametrize("prepare, changes, script_args, message", [
    (fake_sdk_v3, {}, [], "sagemaker 3.0.0 is installed"),
    (None, {"ec2_instance_type": "ml.g5.2xlarg"}, [], "(did you mean ml.g5.2xlarge?)"),
    (None, {"transformers_version": "4.17.0", "pytorch_version": "1.10.2", "py_version": "py38"}, [],
     "pytorch_version 1.10.2 / py_version py38 cannot run endovit"),
    (None, {"compute_environment": "LOCAL_MACHINE"}, [], "not AMAZON_SAGEMAKER"),
    (None, {"additional_args": {"use_spot_instances": True, "max_wait": 90000}}, [], "without checkpoint_s3_uri"),
    (None, {"additional_args": {"use_spot_instance": True}}, [],
     "'use_spot_instance' is not a SageMaker estimator argument (did you mean use_spot_instances?)"),
    (None, {}, ["--batch_sise", "8"], "no flag --batch_sise (did you mean --batch_size?)"),
    (None, {}, ["--swa"], "--swa has no value"),
    (None, {}, ["--epochs", "many"], "cannot read 'many' as int"),
    (None, {}, ["--mask_ratio", "1.5"], "--mask_ratio 1.5: must be strictly between 0 and 1"),
    (None, {}, ["--output_dir", "outputs/x"], "--output_dir: a SageMaker job sets it"),
    (no_credentials, {}, [], "no AWS credentials found"),
    (no_region, {}, [], "no AWS region"),
], ids=["sdk-v3", "instance-type", "old-dlc", "local-config", "spot-without-checkpoints", "estimator-arg-typo",
        "unknown-flag",
        "bare-flag", "bad-type", "bad-value", "job-folder-flag", "no-credentials", "no-region"])
def test_launch_refuses_bad_setups_with_one_clear_line_and_sends_nothing(
        offline_aws, sent, launcher, tmp_path, monkeypatch, capsys, prepare, changes, script_args, message):
    config = write_config(tmp_path, "sagemaker.yaml", **changes)
    if prepare:
        config = prepare(monkeypatch, tmp_path, config)
    rc = launcher(["--config_file", str(config), "scripts/pretrain.py", "--recipe", "demo", *script_args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sent == []
