"""Everything the user sets reaches the training-job request: each option of the SageMaker config and each
hyperparameter, empty values and custom local paths included."""
from __future__ import annotations

import json

import pytest
import yaml
from helpers.sagemaker import BUCKET, ISOLATED_IMAGE, toolkit_argv, write_config

from endovit.recipe import settings_fields
from endovit.sagemaker.script import to_script_args

# every recipe flag a job may take (the job sets the folders; data flags become channels), with a value that is not
# its default; empty values as a user types them ("" and []) included
EVERY_FLAG = {
    "img_size": "[32,64]", "crop_scale": "[0.5,1.0]", "mean": "[0.3,0.2,0.25]", "std": "[0.2,0.2,0.2]",
    "num_workers": "0", "train_sources": "[]", "source_weights": "[]", "val_sources": "[]",
    "stats_from_data": "false", "fast_decode": "false", "model": "mae_vit_tiny_patch16", "norm_pix_loss": "true",
    "mask_ratio": "0.6", "init_from": "", "epochs": "3", "warmup_epochs": "0.5", "batch_size": "8",
    "grad_accum_steps": "2", "blr": "1e-3", "lr": "none", "min_lr": "0.0", "weight_decay": "0.04",
    "layer_decay": "0.65", "clip_grad": "1.0", "mixed_precision": "no", "torch_compile": "false",
    "fused_optimizer": "false", "grad_checkpointing": "true", "seed": "-5", "swa": "true", "swa_start_epoch": "1",
    "swa_every_steps": "10", "swa_lr": "4e-4", "val_every_steps": "7", "val_batch_size": "2", "log_every_steps": "1",
    "save_every_steps": "9", "keep_checkpoints": "2", "num_recon_images": "1", "report_to": "none",
    "stop_at_step": "5", "train_split": "training", "val_split": "valid", "tf32": "false", "ddp_comm_hook": "bf16",
    "dist_timeout": "600", "probe_data": "", "probe_label_format": "cholec80_tool", "probe_labels": "",
    "probe_kind": "both", "probe_train_videos": "[1-4]", "probe_test_videos": "[]", "probe_frame_step": "2",
    "probe_k": "5", "probe_temperature": "0.1", "probe_l2": "0.0", "probe_batch_size": "16", "probe_frame_fps": "0.5",
    "probe_annotation_fps": "30", "probe_first_frame": "1", "probe_every_steps": "3", "probe_best_metric": "",
    "probe_seg_classes": "13", "swa_schedule": "endovit", "best_swa_from_epoch": "2", "val_schedule": "epoch",
    "reshuffle_each_epoch": "false",
}
JOB_SET = {"train_data", "val_data", "output_dir", "checkpoint_dir", "logging_dir", "resume"}


def dry_run_request(launcher, capsys, config, *script_args: str, launcher_args: tuple[str, ...] = ()) -> dict:
    rc = launcher(["--config_file", str(config), "--dry-run", *launcher_args, "scripts/pretrain.py", "--recipe",
                   "demo", *script_args])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return json.loads(out)


def test_every_hyperparameter_reaches_the_job_exactly_as_typed(offline_aws, launcher, tmp_path, capsys):
    assert set(EVERY_FLAG) == {f.name for f in settings_fields()} - JOB_SET  # a new field needs a row here
    flags = dict(EVERY_FLAG, recipe="demo")
    request = dry_run_request(launcher, capsys, write_config(tmp_path, "sagemaker.yaml"),
                              *[token for key, value in EVERY_FLAG.items() for token in (f"--{key}", value)])
    assert toolkit_argv(request["HyperParameters"]) == to_script_args(flags)
    assert request["HyperParameters"]["init_from"] == '""'


def custom_checkpoints(config):
    config["additional_args"]["checkpoint_local_path"] = "/opt/ml/my_checkpoints"


def custom_tensorboard(config):
    config["additional_args"]["tensorboard_output_config"]["container_local_output_path"] = "/opt/ml/output/tb"


def dynamo(config):
    config["dynamo_config"] = {"dynamo_backend": "INDUCTOR"}


def vpc(config):
    config["additional_args"].update(subnets=["subnet-1"], security_group_ids=["sg-1"])


@pytest.mark.parametrize("change, field, expected", [
    ({"ec2_instance_type": "ml.g6.xlarge"}, ("ResourceConfig", "InstanceType"), "ml.g6.xlarge"),
    ({"num_machines": 3}, ("ResourceConfig", "InstanceCount"), 3),
    ({"iam_role_name": "arn:aws:iam::123456789012:role/other"}, ("RoleArn",), "arn:aws:iam::123456789012:role/other"),
    ({"iam_role_name": "other"}, ("RoleArn",), "arn:aws:iam::<account-id>:role/other"),
    ({"region": "eu-central-1"}, ("AlgorithmSpecification", "TrainingImage"),
     "763104351884.dkr.ecr.eu-central-1.amazonaws.com/huggingface-pytorch-training:"
     "2.8.0-transformers4.56.2-gpu-py312-cu129-ubuntu22.04"),
    ({"image_uri": ISOLATED_IMAGE}, ("AlgorithmSpecification", "TrainingImage"), ISOLATED_IMAGE),
    ({"mixed_precision": "fp16"}, ("Environment", "ACCELERATE_MIXED_PRECISION"), "fp16"),
    (dynamo, ("Environment", "ACCELERATE_DYNAMO_BACKEND"), "INDUCTOR"),
    ({"sagemaker_metrics_file": None}, ("AlgorithmSpecification", "MetricDefinitions"), None),
    ({"additional_args": {"output_path": f"s3://{BUCKET}/out"}}, ("OutputDataConfig", "S3OutputPath"),
     f"s3://{BUCKET}/out"),
    ({"additional_args": {"max_run": 3600}}, ("StoppingCondition", "MaxRuntimeInSeconds"), 3600),
    ({"additional_args": {"volume_size": 200}}, ("ResourceConfig", "VolumeSizeInGB"), 200),
    ({"additional_args": {"input_mode": "FastFile"}}, ("AlgorithmSpecification", "TrainingInputMode"), "FastFile"),
    ({"additional_args": {"enable_network_isolation": True}, "image_uri": ISOLATED_IMAGE},
     ("EnableNetworkIsolation",), True),
    (vpc, ("VpcConfig",), {"Subnets": ["subnet-1"], "SecurityGroupIds": ["sg-1"]}),
    (custom_checkpoints, ("CheckpointConfig", "LocalPath"), "/opt/ml/my_checkpoints"),
    (custom_checkpoints, ("HyperParameters", "checkpoint_dir"), '"/opt/ml/my_checkpoints"'),
    (custom_tensorboard, ("TensorBoardOutputConfig", "LocalPath"), "/opt/ml/output/tb"),
    (custom_tensorboard, ("HyperParameters", "logging_dir"), '"/opt/ml/output/tb"'),
], ids=lambda value: getattr(value, "__name__", None))
def test_every_config_option_reaches_the_request(offline_aws, launcher, tmp_path, capsys, change, field, expected):
    if callable(change):
        config = write_config(tmp_path, "sagemaker.yaml")
        values = yaml.safe_load(config.read_text())
        change(values)
        config.write_text(yaml.safe_dump(values))
    else:
        config = write_config(tmp_path, "sagemaker.yaml", **change)
    request = dry_run_request(launcher, capsys, config)
    for key in field:
        request = request.get(key) if isinstance(request, dict) else None
    assert request == expected


def test_base_job_name_and_profile_reach_the_request(offline_aws, launcher, tmp_path, capsys, monkeypatch):
    (tmp_path / "aws_config").write_text("[profile lab]\nregion = ap-southeast-2\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws_config"))
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    config = write_config(tmp_path, "sagemaker.yaml", base_job_name="mae-lab", profile="lab", region=None)
    request = dry_run_request(launcher, capsys, config)
    assert request["TrainingJobName"].startswith("mae-lab-")
    assert ".ap-southeast-2." in request["AlgorithmSpecification"]["TrainingImage"]
