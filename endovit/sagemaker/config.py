"""The accelerate SageMaker config file on the user's machine: read, checked, and turned into estimator settings."""
from __future__ import annotations

import importlib.metadata
import inspect
import re
from pathlib import Path

import botocore.session
import yaml
from accelerate.commands.config.config_args import SageMakerConfig
from accelerate.utils import ComputeEnvironment, SageMakerDistributedType
from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version
from sagemaker import image_uris, instance_types_gpu_info
from sagemaker.debugger import TensorBoardOutputConfig
from sagemaker.huggingface import HuggingFace

from endovit.errors import LaunchError, did_you_mean
from endovit.sagemaker.job import CHECKPOINT_LOCAL_PATH, TENSORBOARD_LOCAL_PATH
from endovit.sagemaker.source import endovit_requirements

__all__ = ["DEFAULT_DLC", "read_config", "read_tsv", "check_instance_type", "gpus_per_instance", "image",
           "check_s3_uri", "job_storage", "first_line"]

DEFAULT_DLC = {"transformers_version": "4.56.2", "pytorch_version": "2.8.0", "py_version": "py312"}
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def read_config(path: Path) -> tuple[SageMakerConfig, set[str]]:
    """The accelerate SageMaker config, and the keys the file itself sets."""
    if not path.is_file():
        raise LaunchError(f"--config_file {path}: no such file; run `accelerate config` (choose Amazon SageMaker) "
                          "or copy accelerate_configs/sagemaker.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise LaunchError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or first_line(err)})") from None
    if not isinstance(raw, dict):
        raise LaunchError(f"{path} must be a mapping of key: value (an accelerate config file)")
    environment = raw.get("compute_environment", ComputeEnvironment.LOCAL_MACHINE.value)
    if environment != ComputeEnvironment.AMAZON_SAGEMAKER.value:
        raise LaunchError(f"{path} is a {environment} config, not AMAZON_SAGEMAKER: start it with "
                          f"`accelerate launch --config_file {path} ...`, or use accelerate_configs/sagemaker.yaml")
    given = set(raw)
    try:
        values = SageMakerConfig.process_config(dict(raw))
    except ValueError as err:
        raise LaunchError(f"{path}: {err}") from None
    if "num_processes" not in given:  # accelerate 1.15 adds it for distributed_type NO, then rejects it as unknown
        values.pop("num_processes", None)
    unknown = sorted(set(values) - set(SageMakerConfig.__dataclass_fields__))
    if unknown:
        raise LaunchError(f"{path}: unknown key(s) {', '.join(unknown)} in a SageMaker config; known keys: "
                          f"{', '.join(sorted(SageMakerConfig.__dataclass_fields__))}")
    missing = [key for key in ("ec2_instance_type", "iam_role_name") if not values.get(key)]
    if missing:
        raise LaunchError(f"{path}: set {' and '.join(missing)}")
    try:
        config = SageMakerConfig(**values)
    except ValueError as err:
        raise LaunchError(f"{path}: {err}") from None
    if config.distributed_type == SageMakerDistributedType.MODEL_PARALLEL:
        raise LaunchError(f"{path}: distributed_type MODEL_PARALLEL is not supported; use NO or DATA_PARALLEL "
                          "(both run torchrun data parallel over all GPUs)")
    return config, given


def read_tsv(path_text: str, key: str, config_path: Path) -> list[tuple[str, str]]:
    """accelerate's two-column TSV files (header line first): inputs (channel, S3 URI), metrics (name, regex)."""
    path = Path(path_text)
    if not path.is_file():
        raise LaunchError(f"{config_path}: {key} {path_text} not found; like accelerate, paths are relative to the "
                          "current folder (run from the repository root)")
    rows = []
    for number, line in enumerate(path.read_text().splitlines()[1:], start=2):
        if not line.strip():
            continue
        cells = [cell.strip() for cell in line.split("\t")]
        if len(cells) != 2 or not all(cells):
            raise LaunchError(f"{path}:{number}: expected two tab-separated columns, got {line!r}")
        rows.append((cells[0], cells[1]))
    return rows


def check_instance_type(instance_type: str, config_path: Path) -> None:
    model = botocore.session.get_session().get_service_model("sagemaker")
    known = model.shape_for("TrainingInstanceType").enum
    if instance_type not in known:
        raise LaunchError(f"{config_path}: ec2_instance_type {instance_type!r} is not a SageMaker training instance "
                          f"type{did_you_mean(instance_type, known)}")


def gpus_per_instance(instance_type: str, region: str) -> int | None:
    info = instance_types_gpu_info.retrieve(region) or instance_types_gpu_info.retrieve("us-east-1")
    return info.get(instance_type, {}).get("Count")


def image(config: SageMakerConfig, given: set[str], region: str, config_path: Path) -> dict:
    """The Hugging Face DLC (or the config's image_uri), checked against what endovit needs."""
    if config.image_uri:
        return {"image_uri": config.image_uri}
    versions = {key: str(getattr(config, key)) if key in given else value for key, value in DEFAULT_DLC.items()}
    fix = ("use transformers_version: {transformers_version}, pytorch_version: {pytorch_version}, "
           "py_version: {py_version}, or an image_uri").format(**DEFAULT_DLC)
    torch = next(Requirement(r) for r in endovit_requirements() if Requirement(r).name == "torch")
    python = importlib.metadata.metadata("endovit")["Requires-Python"]
    py_version = versions["py_version"]
    try:
        torch_ok = Version(versions["pytorch_version"]) in torch.specifier
        python_ok = Version(f"{py_version[2]}.{py_version[3:]}") in Requirement(f"python{python}").specifier
    except (InvalidVersion, IndexError):
        torch_ok = python_ok = False
    if not (torch_ok and python_ok):
        raise LaunchError(f"{config_path}: pytorch_version {versions['pytorch_version']} / py_version {py_version} "
                          f"cannot run endovit (needs torch{torch.specifier}, python{python}); {fix}")
    try:
        uri = image_uris.retrieve("huggingface", region=region, version=versions["transformers_version"],
                                  base_framework_version=f"pytorch{versions['pytorch_version']}",
                                  py_version=py_version, instance_type=config.ec2_instance_type,
                                  image_scope="training")
    except ValueError as err:
        raise LaunchError(f"{config_path}: no SageMaker Hugging Face training image for transformers "
                          f"{versions['transformers_version']}, pytorch {versions['pytorch_version']}, {py_version} "
                          f"on {config.ec2_instance_type} ({first_line(err)}); {fix}") from None
    return {"image_uri": uri, **versions}


def check_s3_uri(uri: str, what: str) -> str:
    match = re.match(r"^s3://([^/]+)(/.*)?$", uri)
    if not match or not S3_BUCKET.match(match.group(1)):
        raise LaunchError(f"{what} {uri!r} is not an s3://bucket/prefix URI with a valid bucket name "
                          "(lowercase letters, digits, dots, hyphens)")
    return uri.rstrip("/")


def _estimator_arguments() -> set[str]:
    return {name for cls in HuggingFace.__mro__ if "__init__" in vars(cls)
            for name in inspect.signature(cls.__init__).parameters} - {"self", "kwargs", "args"}


def job_storage(extra: dict, job_name: str, hyperparameters: dict, config_path: Path) -> dict:
    """additional_args checked (estimator arguments, spot settings, S3 URIs), with per-job checkpoint and
    TensorBoard folders; a non-default local folder for either reaches the script as its hyperparameter."""
    known = _estimator_arguments()
    for key in extra:
        if key not in known:  # the SDK would drop it without a word
            raise LaunchError(f"{config_path}: additional_args {key!r} is not a SageMaker estimator argument"
                              f"{did_you_mean(key, known)}")
    if extra.get("use_spot_instances") and int(extra.get("max_wait") or 0) < int(extra.get("max_run") or 86400):
        raise LaunchError(f"{config_path}: use_spot_instances needs additional_args max_wait >= max_run "
                          "(seconds, waiting for spot capacity included)")
    for key in ("output_path", "code_location"):
        if key in extra:
            extra[key] = check_s3_uri(str(extra[key]), f"{config_path}: additional_args {key}")
    if extra.get("use_spot_instances") and not extra.get("checkpoint_s3_uri"):
        raise LaunchError(f"{config_path}: use_spot_instances without checkpoint_s3_uri would restart from step 0 "
                          "after every interruption; set additional_args checkpoint_s3_uri")
    if extra.get("checkpoint_s3_uri"):
        checkpoints = check_s3_uri(str(extra["checkpoint_s3_uri"]), f"{config_path}: additional_args checkpoint_s3_uri")
        extra["checkpoint_s3_uri"] = f"{checkpoints}/{job_name}"
        local = extra.setdefault("checkpoint_local_path", CHECKPOINT_LOCAL_PATH)
        if local != CHECKPOINT_LOCAL_PATH:
            hyperparameters["checkpoint_dir"] = local
    tensorboard = extra.pop("tensorboard_output_config", None)
    if tensorboard:
        if not isinstance(tensorboard, dict) or "s3_output_path" not in tensorboard:
            raise LaunchError(f"{config_path}: additional_args tensorboard_output_config needs s3_output_path "
                              "(and optionally container_local_output_path)")
        tensorboard_uri = check_s3_uri(str(tensorboard["s3_output_path"]),
                                       f"{config_path}: additional_args tensorboard_output_config s3_output_path")
        local = tensorboard.get("container_local_output_path", TENSORBOARD_LOCAL_PATH)
        extra["tensorboard_output_config"] = TensorBoardOutputConfig(f"{tensorboard_uri}/{job_name}", local)
        if local != TENSORBOARD_LOCAL_PATH:
            hyperparameters["logging_dir"] = local
    return extra
