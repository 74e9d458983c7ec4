"""Inside a SageMaker training job: the ``SM_*`` environment contract (standard library only, no SDK).

A job keeps its folders under one root (``/opt/ml``): ``model`` (``SM_MODEL_DIR``, uploaded as ``model.tar.gz``
at the end), ``output`` (``SM_OUTPUT_DIR``; ``output/tensorboard`` is synced to S3 when the job has a
TensorBoard config), ``checkpoints`` (synced to ``checkpoint_s3_uri`` and restored when a job restarts or
continues an earlier job's checkpoints, hence ``resume: auto``) and ``input/data/<channel>``
(``SM_CHANNEL_<CHANNEL>``). A Processing job's instances have no ``SM_*`` variables; each learns its host name
and the job's hosts from ``/opt/ml/config/resourceconfig.json`` (:func:`processing_hosts`).
"""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CHANNELS", "JOB_FOLDER_KEYS", "CHANNEL_ROOT", "CHECKPOINT_LOCAL_PATH", "TENSORBOARD_LOCAL_PATH",
           "JOB_ENVIRON", "RESOURCE_CONFIG", "job_defaults", "lock_dir", "report_failure", "processing_hosts"]

CHANNELS = {"train_data": "train", "val_data": "validation"}  # recipe key -> SageMaker input channel
JOB_FOLDER_KEYS = ("output_dir", "checkpoint_dir", "logging_dir")  # recipe keys a SageMaker job sets itself
CHANNEL_ROOT = "/opt/ml/input/data"
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"
JOB_ENVIRON = {"SM_MODEL_DIR": "/opt/ml/model", "SM_OUTPUT_DIR": "/opt/ml/output"}
RESOURCE_CONFIG = "config/resourceconfig.json"  # under /opt/ml: {"current_host": "algo-1", "hosts": [...], ...}


def job_defaults(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Recipe defaults inside a SageMaker training job (``environ``: this process's environment); empty anywhere
    else (no ``SM_MODEL_DIR``)."""
    environ = os.environ if environ is None else environ
    model_dir = environ.get("SM_MODEL_DIR")
    if not model_dir:
        return {}
    root = Path(model_dir).parent
    output = Path(environ.get("SM_OUTPUT_DIR") or root / "output")
    defaults = {
        "output_dir": model_dir,
        "checkpoint_dir": str(root / "checkpoints"),
        "logging_dir": str(output / "tensorboard"),
        "resume": "auto",
    }
    for key, channel in CHANNELS.items():
        folder = environ.get(f"SM_CHANNEL_{channel.upper()}")
        if folder:
            defaults[key] = folder
    return defaults


def lock_dir(environ: Mapping[str, str] | None = None) -> Path | None:
    """Where a run keeps its lock inside a training job: the container's temporary folder, not the model folder
    (``SM_MODEL_DIR`` is uploaded as ``model.tar.gz``, lock included); None anywhere else."""
    environ = os.environ if environ is None else environ
    return Path(tempfile.gettempdir()) / "endovit-locks" if environ.get("SM_MODEL_DIR") else None


def report_failure(message: str, environ: Mapping[str, str] | None = None) -> Path | None:
    """Inside a training job, write ``message`` (the one-line error) to ``<SM_OUTPUT_DIR>/failure``, which
    DescribeTrainingJob shows as FailureReason (its first 1024 characters). The toolkit writes that file only when
    it does not exist yet, and would write ``ExitCode 2 ErrorMessage ""``: it keeps stderr only from a line that
    names a Python exception class. The first process to fail writes it; returns the file, or None outside a job."""
    environ = os.environ if environ is None else environ
    if not environ.get("SM_MODEL_DIR"):
        return None
    path = Path(environ.get("SM_OUTPUT_DIR") or Path(environ["SM_MODEL_DIR"]).parent / "output") / "failure"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "x", encoding="utf-8") as file:  # "x": the first failing process wins
            file.write(message[:1024])
    except OSError:  # FileExistsError: another process said it first; anything else: the exit code still tells
        return None
    return path


def processing_hosts(environ: Mapping[str, str] | None = None) -> tuple[str, list[str]] | None:
    """Inside a SageMaker job: this instance's host name and all the job's hosts (``algo-1``, ...), read from
    ``/opt/ml/config/resourceconfig.json`` (``SAGEMAKER_BASE_DIR`` replaces ``/opt/ml``, as in SageMaker's training
    toolkit); None anywhere else."""
    environ = os.environ if environ is None else environ
    path = Path(environ.get("SAGEMAKER_BASE_DIR") or "/opt/ml") / RESOURCE_CONFIG
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    return str(config["current_host"]), [str(host) for host in config["hosts"]]
