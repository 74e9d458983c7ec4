"""What the SageMaker tests share: the shipped configs with a test bucket, a simulated job's folders and the
toolkit's argv, the tiny recipe flags. The fixtures built on these (``aws_env``, ``offline_aws``, ``sent``,
``launcher``) are in conftest.py."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from helpers.scripts import REPO

from endovit.data.synthetic import write_sample_frames
from endovit.sagemaker.source import stage_source_dir

CONFIGS = REPO / "accelerate_configs"


TINY = ["--recipe", "demo", "--model", "mae_vit_tiny_patch16", "--img_size", "32", "--batch_size", "4",
        "--epochs", "2", "--warmup_epochs", "0.5", "--num_workers", "0", "--val_every_steps", "1000"]


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


def run_job(code: Path, env: dict, argv: list[str], processes: int = 1) -> subprocess.CompletedProcess:
    runner = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes)]
              if processes > 1 else [sys.executable])
    result = subprocess.run(runner + ["pretrain.py", *argv], cwd=code, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def job_folders(ml: Path) -> tuple[Path, dict[str, str]]:
    """/opt/ml-like folders at ``ml``: channels with frames, the staged source dir as /opt/ml/code; and the job's
    environment."""
    environ = job_environ(ml)
    write_sample_frames(environ["SM_CHANNEL_TRAIN"], videos=1, frames=8, height=48, width=64)
    write_sample_frames(environ["SM_CHANNEL_VALIDATION"], videos=1, frames=4, height=48, width=64, first_video=2)
    code = stage_source_dir(REPO / "scripts" / "pretrain.py", ml / "code")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SM_", "ACCELERATE_", "RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_"))}
    env.update(environ, PYTHONPATH=str(code), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return code, env


BUCKET = "endovit-test"


REGION = "us-east-1"


DLC_IMAGE = ("763104351884.dkr.ecr.us-east-1.amazonaws.com/huggingface-pytorch-training:"
             "2.8.0-transformers4.56.2-gpu-py312-cu129-ubuntu22.04")


ISOLATED_IMAGE = "111122223333.dkr.ecr.us-east-1.amazonaws.com/endovit:1"


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


def validate_each_sdk_config_once(monkeypatch):
    """The SDK checks its config against its whole JSON schema at every config lookup (about 0.2 s each, twenty-odd
    per launch); the same config always validates the same way, so tests validate each distinct one once."""
    import sagemaker.session
    import sagemaker.utils

    validate, validated = sagemaker.utils.validate_sagemaker_config, set()

    def validate_once(sagemaker_config=None):
        key = json.dumps(sagemaker_config, sort_keys=True, default=str)
        if key not in validated:
            validate(sagemaker_config)
            validated.add(key)

    for module in (sagemaker.utils, sagemaker.session):
        monkeypatch.setattr(module, "validate_sagemaker_config", validate_once)


def s3_upload(s3, folder: Path, uri: str) -> None:
    """What SageMaker does while a job runs: /opt/ml/checkpoints -> checkpoint_s3_uri (every file under ``folder``)."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, f"{prefix.rstrip('/')}/{path.relative_to(folder).as_posix()}")


def s3_download(s3, uri: str, folder: Path) -> None:
    """What SageMaker does when a job starts: an S3 prefix (checkpoint_s3_uri, a channel) -> ``folder``."""
    bucket, _, prefix = uri[len("s3://"):].partition("/")
    prefix = prefix.rstrip("/") + "/"
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            target = folder / obj["Key"][len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(bucket, obj["Key"], str(target))
