"""Inside a SageMaker training job: the ``SM_*`` environment contract (standard library only, no SDK).

A job keeps its folders under one root (``/opt/ml``): ``model`` (``SM_MODEL_DIR``, uploaded as ``model.tar.gz``
at the end), ``output`` (``SM_OUTPUT_DIR``; ``output/tensorboard`` is synced to S3 when the job has a
TensorBoard config), ``checkpoints`` (synced to ``checkpoint_s3_uri`` and restored when a job restarts or
continues an earlier job's checkpoints, hence ``resume: auto``) and ``input/data/<channel>``
(``SM_CHANNEL_<CHANNEL>``).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["CHANNELS", "JOB_FOLDER_KEYS", "CHANNEL_ROOT", "CHECKPOINT_LOCAL_PATH", "TENSORBOARD_LOCAL_PATH",
           "JOB_ENVIRON", "job_defaults"]

CHANNELS = {"train_data": "train", "val_data": "validation"}  # recipe key -> SageMaker input channel
JOB_FOLDER_KEYS = ("output_dir", "checkpoint_dir", "logging_dir")  # recipe keys a SageMaker job sets itself
CHANNEL_ROOT = "/opt/ml/input/data"
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"
JOB_ENVIRON = {"SM_MODEL_DIR": "/opt/ml/model", "SM_OUTPUT_DIR": "/opt/ml/output"}


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
