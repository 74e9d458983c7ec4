"""Amazon SageMaker, on the user's machine: the launcher's requests against moto, its refusals, and the
hyperparameter round trip to the recipe the job runs."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import boto3
import pytest
from helpers.sagemaker import (
    BUCKET,
    DLC_IMAGE,
    ISOLATED_IMAGE,
    REGION,
    REPO,
    TINY,
    job_environ,
    metric_definitions,
    toolkit_argv,
    write_config,
)
from moto import mock_aws

from endovit.data.frames import find_image_files
from endovit.data.synthetic import write_sample_frames
from endovit.errors import LaunchError
from endovit.recipe import build_parser, parse_recipe, recipe_from_args
from endovit.sagemaker.job import job_defaults
from endovit.sagemaker.source import plan_upload

JOB_FOLDER_KEYS = {"train_data", "val_data", "output_dir", "checkpoint_dir", "logging_dir", "resume"}


# ------------------------------------------------------------------------------------------------ helpers









@pytest.fixture
def aws(aws_env):
    """An in-process moto AWS with one empty bucket; yields a boto3 session on it."""
    with mock_aws():
        session = boto3.Session(region_name=REGION)
        session.client("s3").create_bucket(Bucket=BUCKET)
        yield session






def create_training_job_request(calls) -> dict:
    requests = [params for service, operation, params in calls if operation == "CreateTrainingJob"]
    assert len(requests) == 1
    return requests[0]


def bucket_keys(session, prefix: str = "") -> list[str]:
    listing = session.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(obj["Key"] for obj in listing.get("Contents", []))

# ------------------------------------------------------------------------------------------------ the launcher

@pytest.fixture
def project(tmp_path, monkeypatch):
    """A user's working folder: the entry script next to data and outputs that must not travel as code."""
    root = tmp_path / "project"
    scripts = root / "scripts"
    scripts.mkdir(parents=True)
    (scripts / "pretrain.py").write_text((REPO / "scripts" / "pretrain.py").read_text())
    write_sample_frames(root / "data" / "train", videos=1, frames=8, height=48, width=64)
    (root / "data" / "train" / ".DS_Store").write_bytes(b"finder")
    (root / "data" / "train" / "frames" / ".cache").mkdir()
    (root / "data" / "train" / "frames" / ".cache" / "index").write_bytes(b"cache")
    write_sample_frames(scripts / "data", videos=1, frames=2, height=48, width=64)
    (scripts / "outputs" / "run").mkdir(parents=True)
    (scripts / "outputs" / "run" / "model.safetensors").write_bytes(b"weights")
    monkeypatch.chdir(root)
    return root


def test_one_gpu_launch_creates_the_training_job(aws, sent, launcher, project, tmp_path, capsys):
    config = write_config(tmp_path, "sagemaker.yaml")
    rc = launcher(["--config_file", str(config), "--job_name", "endovit-test-1", "scripts/pretrain.py", *TINY,
                   "--swa", "false", "--train_data", "data/train", "--val_data", f"s3://{BUCKET}/data/val"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "channel train: 2 hidden file(s) in data/train left out of the upload" in err
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
    assert {"pretrain.py", "requirements.txt", "endovit/__init__.py", "endovit/sagemaker/job.py",
            "endovit/data/frames.py", "endovit/models/mae.py", "endovit/recipes/demo.yaml"} <= names
    assert not [n for n in names if "__pycache__" in n or n.startswith(("data", "outputs", "scripts"))
                or n.endswith((".png", ".safetensors"))]
    tested = dict(line.lower().split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                  if "==" in line)
    pins = dict(line.split("==") for line in requirements.splitlines() if not line.startswith("#"))
    assert {"timm", "accelerate", "datasets", "safetensors", "pyarrow", "numpy"} <= set(pins)
    assert pins == {name: tested[name] for name in pins}  # exactly the versions CI tests
    assert not {"torch", "torchvision"} & set(pins)  # the image's own builds
    described = aws.client("sagemaker").describe_training_job(TrainingJobName="endovit-test-1")
    assert described["AlgorithmSpecification"]["TrainingImage"] == DLC_IMAGE
    assert "endovit-test-1" in out


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
                           environ=job_environ(ml), job_defaults=job_defaults(job_environ(ml)))
    local = parse_recipe(script_args)
    assert {k: v for k, v in job.to_dict().items() if k not in JOB_FOLDER_KEYS} == \
           {k: v for k, v in local.to_dict().items() if k not in JOB_FOLDER_KEYS}
    assert (job.train_data, job.val_data) == (str(ml / "input/data/train"), str(ml / "input/data/validation"))
    assert (job.output_dir, job.checkpoints_path, job.resume) == (str(ml / "model"), ml / "checkpoints", "auto")


@pytest.mark.parametrize("dry_run", [True, False], ids=["dry-run", "launch"])
@pytest.mark.parametrize("launcher_args, changes, message", [
    (["--job_name", "my_job.1"], {}, "--job_name 'my_job.1' is not a valid SageMaker job name: use at most 63 "
     "letters, digits and hyphens, starting and ending with a letter or digit (e.g. my-job-1)"),
    (["--job_name", "j" * 70], {}, "is not a valid SageMaker job name: use at most 63 letters"),
    ([], {"base_job_name": "endovit_pretrain_v1"}, "base_job_name 'endovit_pretrain_v1' is not a valid SageMaker "
     "job name: use at most 39 (63 less the 24-character timestamp the SDK appends) letters, digits and hyphens"),
    ([], {"base_job_name": "b" * 40}, "use at most 39 (63 less the 24-character timestamp the SDK appends)"),
], ids=["characters", "length", "base-characters", "base-length-with-timestamp"])
def test_invalid_job_names_are_refused_before_anything_is_sent(
        offline_aws, sent, launcher, project, tmp_path, capsys, dry_run, launcher_args, changes, message):
    config = write_config(tmp_path, "sagemaker.yaml", **changes)
    rc = launcher(["--config_file", str(config), *launcher_args, *(["--dry-run"] if dry_run else []),
                   "scripts/pretrain.py", "--recipe", "demo", "--train_data", "data/train"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], lines
    assert sent == []


def test_weights_travel_as_input_channel_into_a_network_isolated_job(aws, sent, launcher, project, tmp_path, capsys):
    """A local --init_from is uploaded as channel init; without internet no requirements.txt is shipped."""
    (project / "weights").mkdir()
    (project / "weights" / "mae.pth").write_bytes(b"weights")
    config = write_config(tmp_path, "sagemaker.yaml", image_uri=ISOLATED_IMAGE, transformers_version=None,
                          pytorch_version=None, py_version=None,
                          additional_args={"enable_network_isolation": True, "output_path": f"s3://{BUCKET}/jobs"})
    rc = launcher(["--config_file", str(config), "--job_name", "isolated-1", "scripts/pretrain.py", "--recipe", "demo",
                   "--train_data", f"s3://{BUCKET}/data/train", "--init_from", "weights/mae.pth"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "no requirements.txt is shipped" in err
    request = create_training_job_request(sent)
    assert request["EnableNetworkIsolation"] is True
    assert request["AlgorithmSpecification"]["TrainingImage"] == ISOLATED_IMAGE
    assert json.loads(request["HyperParameters"]["init_from"]) == "/opt/ml/input/data/init/mae.pth"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels["init"] == f"s3://{BUCKET}/jobs/isolated-1/input/init"
    assert bucket_keys(aws, "jobs/isolated-1/input/") == ["jobs/isolated-1/input/init/mae.pth"]
    source = [key for key in bucket_keys(aws) if key.endswith("sourcedir.tar.gz")]
    body = aws.client("s3").get_object(Bucket=BUCKET, Key=source[0])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        assert "pretrain.py" in tar.getnames() and "requirements.txt" not in tar.getnames()


def test_s3_weights_become_the_init_channel_and_urls_stay_urls(offline_aws, sent, launcher, tmp_path, capsys):
    config = write_config(tmp_path, "sagemaker.yaml")
    rc = launcher(["--config_file", str(config), "--dry-run", "scripts/pretrain.py", "--recipe", "demo",
                   "--init_from", f"s3://{BUCKET}/weights/mae_pretrain.pth"])
    request = json.loads(capsys.readouterr().out)
    assert rc == 0
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels["init"] == f"s3://{BUCKET}/weights/mae_pretrain.pth"
    assert json.loads(request["HyperParameters"]["init_from"]) == "/opt/ml/input/data/init/mae_pretrain.pth"

    url = "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base_full.pth"
    rc = launcher(["--config_file", str(config), "--dry-run", "scripts/pretrain.py", "--recipe", "demo",
                   "--init_from", url])
    request = json.loads(capsys.readouterr().out)
    assert rc == 0
    assert json.loads(request["HyperParameters"]["init_from"]) == url
    assert "init" not in {c["ChannelName"] for c in request["InputDataConfig"]}


@pytest.mark.parametrize("secret", [".aws/credentials", ".env", "keys/server.pem", "id_rsa"])
def test_data_folder_with_credentials_is_refused_before_upload(
        offline_aws, sent, launcher, project, tmp_path, capsys, secret):
    (project / "data" / "train" / secret).parent.mkdir(parents=True, exist_ok=True)
    (project / "data" / "train" / secret).write_text("aws_secret_access_key = not-for-s3\n")
    config = write_config(tmp_path, "sagemaker.yaml")
    rc = launcher(["--config_file", str(config), "--dry-run", "scripts/pretrain.py", "--recipe", "demo",
                   "--train_data", "data/train"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        f"error: channel train: {Path('data/train', secret)} looks like a credentials file and would be uploaded to "
        "S3; move it out of the folder (or upload the data yourself and pass its s3:// URI)"]
    assert sent == []


def test_an_upload_walks_linked_folders_as_training_does_and_refuses_links_to_credentials(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "elsewhere"
    for folder in (data / "video01", elsewhere / "video02"):
        folder.mkdir(parents=True)
        (folder / f"{folder.name}_000000.png").write_bytes(b"frame")
    (data / "video02").symlink_to(elsewhere / "video02", target_is_directory=True)
    (data / "video03").symlink_to(elsewhere / "video02", target_is_directory=True)  # walked once, as training does
    keys = [key for _, key in plan_upload("train", str(data), "s3://bucket/train").files]
    assert keys == ["video01/video01_000000.png", "video02/video02_000000.png"]
    with pytest.warns(UserWarning, match="skipped 1 linked folder"):
        assert [str(p.relative_to(data)) for p in find_image_files(data)] == keys
    (tmp_path / "home" / ".aws").mkdir(parents=True)
    (tmp_path / "home" / ".aws" / "credentials").write_text("aws_secret_access_key = not-for-s3\n")
    (data / "video01" / "notes.txt").symlink_to(tmp_path / "home" / ".aws" / "credentials")
    with pytest.raises(LaunchError, match=rf"^channel train: {data / 'video01' / 'notes.txt'} \(a link to "
                                          rf"{tmp_path / 'home' / '.aws' / 'credentials'}\) looks like a credentials"):
        plan_upload("train", str(data), "s3://bucket/train")


@pytest.mark.parametrize("url, secret", [
    ("https://endovit.s3.amazonaws.com/mae.pth?X-Amz-Credential=AKIAEXAMPLE&X-Amz-Signature=deadbeef", "deadbeef"),
    ("https://user:hunter2@weights.example.org/mae.pth", "hunter2"),
    ("https://weights.example.org/mae.pth#token=hunter2", "hunter2"),
], ids=["presigned", "user-info", "fragment"])
def test_url_with_credentials_never_reaches_the_job(offline_aws, sent, launcher, tmp_path, capsys, url, secret):
    config = write_config(tmp_path, "sagemaker.yaml")
    rc = launcher(["--config_file", str(config), "--dry-run", "scripts/pretrain.py", "--recipe", "demo",
                   "--init_from", url])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and sent == []
    assert secret not in err and "AKIAEXAMPLE" not in err
    public = url.split("?")[0].split("#")[0].replace("user:hunter2@", "")
    assert err.strip().splitlines() == [
        f"error: --init_from {public}: the URL carries credentials or a query "
        "token (not shown; e.g. a presigned S3 URL) that would be stored in the job's hyperparameters, readable by "
        "anyone who may describe the job; download the file and pass its local path, or pass its s3:// URI"]


def test_a_sha256_pinned_url_reaches_the_job_as_typed(offline_aws, sent, launcher, tmp_path, capsys):
    url = f"https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base_full.pth#sha256={'ab' * 32}"
    config = write_config(tmp_path, "sagemaker.yaml")
    rc = launcher(["--config_file", str(config), "--dry-run", "scripts/pretrain.py", "--recipe", "demo",
                   "--init_from", url])
    request = json.loads(capsys.readouterr().out)
    assert rc == 0 and json.loads(request["HyperParameters"]["init_from"]) == url


@pytest.mark.parametrize("key, where", [
    ("role", "iam_role_name"), ("entry_point", "the launcher's training_script argument"),
    ("source_dir", "nothing: endovit travels as code"), ("image_uri", "image_uri"),
    ("hyperparameters", "the script's --key value flags"), ("environment", "mixed_precision and dynamo_config"),
    ("instance_count", "num_machines"), ("distribution", "nothing: the launcher runs torchrun"),
    ("container_entry_point", "nothing: the launcher's entry point passes SageMaker's stop on to the trainers; for an "
                              "image of your own set container_arguments to its command"),
])
def test_additional_args_cannot_replace_what_the_launcher_sets(offline_aws, sent, launcher, tmp_path, capsys,
                                                               key, where):
    config = write_config(tmp_path, "sagemaker.yaml", additional_args={key: "anything"})
    rc = launcher(["--config_file", str(config), "--dry-run", "scripts/pretrain.py", "--recipe", "demo"])
    out, err = capsys.readouterr()
    assert rc == 2 and out == "" and sent == []
    assert err.strip().splitlines() == [
        f"error: {config}: additional_args {key} is set by the launcher; remove it (set {where})"]


def test_an_image_of_ones_own_keeps_the_stop_entry_point_in_front_of_its_command(offline_aws, sent, launcher,
                                                                                  tmp_path, capsys):
    command = ["/usr/local/bin/my-entry", "train"]
    config = write_config(tmp_path, "sagemaker.yaml", image_uri=ISOLATED_IMAGE,
                          additional_args={"container_arguments": command})
    assert launcher(["--config_file", str(config), "--dry-run", "scripts/pretrain.py", "--recipe", "demo"]) == 0
    spec = json.loads(capsys.readouterr().out)["AlgorithmSpecification"]
    assert spec["ContainerEntrypoint"][:2] == ["bash", "-c"] and spec["ContainerArguments"] == command

    config = write_config(tmp_path, "sagemaker.yaml", additional_args={"container_arguments": "my-entry train"})
    assert launcher(["--config_file", str(config), "--dry-run", "scripts/pretrain.py", "--recipe", "demo"]) == 2
    assert "additional_args container_arguments must be a list of strings" in capsys.readouterr().err
