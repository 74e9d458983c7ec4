"""First contact: config files as `accelerate config` writes them dry-run as they are, offline, with the request as
the only thing on stdout."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from accelerate.commands.config.config_args import SageMakerConfig
from accelerate.utils import ComputeEnvironment, SageMakerDistributedType
from helpers.sagemaker import CONFIGS, REPO

from endovit.sagemaker.entry import DLC_COMMAND, ENTRY_DIR, ENTRY_DIR_ENV

DLC = "763104351884.dkr.ecr.eu-west-1.amazonaws.com/huggingface-pytorch-training:2.8.0-transformers4.56.2-gpu-py312"
ACCELERATE_DEFAULTS = "transformers_version 4.17.0, pytorch_version 1.10.2, py_version py38"


def write_accelerate_config(folder: Path, instance_type: str, machines: int) -> Path:
    """What `accelerate config` (1.15, Amazon SageMaker, AWS profile, role name, TSVs, bf16) writes."""
    (folder / "inputs.tsv").write_text("channel_name\tdata_location\ntrain\ts3://my-data/endovit/train\n")
    (folder / "metrics.tsv").write_text((CONFIGS / "sagemaker_metrics.tsv").read_text())
    config = SageMakerConfig(
        image_uri=None, compute_environment=ComputeEnvironment.AMAZON_SAGEMAKER,
        distributed_type=SageMakerDistributedType.DATA_PARALLEL if machines > 1 else SageMakerDistributedType.NO,
        use_cpu=False, dynamo_config={}, ec2_instance_type=instance_type, profile="endovit", region="eu-west-1",
        iam_role_name="endovit-sagemaker", mixed_precision="bf16", num_machines=machines,
        sagemaker_inputs_file="inputs.tsv", sagemaker_metrics_file="metrics.tsv", debug=False)
    path = folder / "accelerate_sagemaker.yaml"
    config.to_yaml_file(path)
    return path


def offline_environ(folder: Path) -> dict[str, str]:
    """The user's AWS profile without credentials; every AWS endpoint a closed local port (a request would fail)."""
    (folder / "aws_config").write_text("[profile endovit]\nregion = eu-west-1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SAGEMAKER_"))}
    env.update(PYTHONPATH=str(REPO), HOME=str(folder), AWS_CONFIG_FILE=str(folder / "aws_config"),
               AWS_SHARED_CREDENTIALS_FILE=str(folder / "no-credentials"), AWS_EC2_METADATA_DISABLED="true",
               AWS_ENDPOINT_URL="http://127.0.0.1:9")
    return env


def dry_run(folder: Path, config: Path, *script_args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "launch_sagemaker.py"), "--config_file",
                           str(config), "--dry-run", str(REPO / "scripts" / "pretrain.py"), *script_args],
                          cwd=folder, env=offline_environ(folder), capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("instance_type, machines", [("ml.g5.xlarge", 1), ("ml.g5.12xlarge", 2)])
def test_accelerate_config_file_dry_runs_offline_as_written(tmp_path, instance_type, machines):
    config = write_accelerate_config(tmp_path, instance_type, machines)
    assert "pytorch_version: 1.10.2" in config.read_text() and "iam_role_name: endovit-sagemaker" in config.read_text()
    (tmp_path / "frames").mkdir()
    (tmp_path / "frames" / "a.png").write_bytes(b"png")
    result = dry_run(tmp_path, config, "--recipe", "endovit_seg", "--val_data", "frames")
    assert result.returncode == 0, result.stderr
    request = json.loads(result.stdout)  # the whole of stdout is one JSON document

    assert request["RoleArn"] == "arn:aws:iam::<account-id>:role/endovit-sagemaker"
    assert request["AlgorithmSpecification"]["TrainingImage"].startswith(DLC)
    assert request["ResourceConfig"]["InstanceType"] == instance_type
    assert request["ResourceConfig"]["InstanceCount"] == machines
    if machines > 1:  # torchrun on every instance (for one ml.g5.xlarge too: the SDK's GPU table lacks it)
        assert request["HyperParameters"]["sagemaker_torch_distributed_enabled"] == "true"
    assert request["Environment"]["ACCELERATE_MIXED_PRECISION"] == "bf16"
    spec = request["AlgorithmSpecification"]  # the entry point that passes a stop on, in front of the DLC's command
    assert spec["ContainerEntrypoint"][:2] == ["bash", "-c"] and spec["ContainerArguments"] == list(DLC_COMMAND)
    assert request["Environment"][ENTRY_DIR_ENV] == ENTRY_DIR
    job = request["TrainingJobName"]
    assert job.startswith("accelerate-sagemaker-1-")
    bucket = "s3://sagemaker-eu-west-1-<account-id>"
    assert request["OutputDataConfig"]["S3OutputPath"] == f"{bucket}/"
    assert json.loads(request["HyperParameters"]["sagemaker_submit_directory"]) == \
        f"{bucket}/{job}/source/sourcedir.tar.gz"
    channels = {c["ChannelName"]: c["DataSource"]["S3DataSource"]["S3Uri"] for c in request["InputDataConfig"]}
    assert channels == {"train": "s3://my-data/endovit/train", "validation": f"{bucket}/{job}/input/validation"}
    metric_rows = (CONFIGS / "sagemaker_metrics.tsv").read_text().splitlines()[1:]
    assert len(request["AlgorithmSpecification"]["MetricDefinitions"]) == len(metric_rows)

    notes = result.stderr.splitlines()
    assert [line for line in notes if ACCELERATE_DEFAULTS in line and "transformers_version 4.56.2" in line]
    assert f"would upload frames -> {bucket}/{job}/input/validation (channel validation)" in notes
    assert not [line for line in notes if "Traceback" in line or "error" in line.lower()], notes


def test_versions_the_user_chose_are_checked_not_replaced(tmp_path):
    config = write_accelerate_config(tmp_path, "ml.g5.xlarge", 1)
    config.write_text(config.read_text().replace("py_version: py38", "py_version: py39"))
    result = dry_run(tmp_path, config, "--recipe", "demo")
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        f"error: {config}: pytorch_version 1.10.2 / py_version py39 cannot run endovit (needs torch<2.15,>=2.6, "
        "python>=3.10); use transformers_version: 4.56.2, pytorch_version: 2.8.0, py_version: py312, or an image_uri"]
