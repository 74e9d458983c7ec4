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
from accelerate.utils.constants import (
    SAGEMAKER_PYTHON_VERSION,
    SAGEMAKER_PYTORCH_VERSION,
    SAGEMAKER_TRANSFORMERS_VERSION,
)
from packaging.requirements import Requirement
from packaging.version import InvalidVersion, Version
from sagemaker import image_uris, instance_types_gpu_info
from sagemaker.debugger import TensorBoardOutputConfig
from sagemaker.huggingface import HuggingFace

from endovit.errors import LaunchError, did_you_mean, first_line
from endovit.sagemaker.job import CHECKPOINT_LOCAL_PATH, TENSORBOARD_LOCAL_PATH
from endovit.sagemaker.source import endovit_requirements

__all__ = ["DEFAULT_DLC", "read_config", "read_tsv", "check_instance_type", "gpus_per_instance", "image",
           "check_s3_uri", "check_additional_args", "job_storage", "first_line", "dlc_versions"]

# the newest Hugging Face PyTorch training image (SDK 2.257) that runs endovit
DEFAULT_DLC = {"transformers_version": "4.56.2", "pytorch_version": "2.8.0", "py_version": "py312"}
# what `accelerate config` writes without asking: read as "not set"
ACCELERATE_DLC = {"transformers_version": SAGEMAKER_TRANSFORMERS_VERSION, "pytorch_version": SAGEMAKER_PYTORCH_VERSION,
                  "py_version": SAGEMAKER_PYTHON_VERSION}
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


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


def check_instance_type(instance_type: str, config_path: Path, *, job: str = "training") -> None:
    """Refuse an instance type that SageMaker's API does not list for ``job`` (training, processing) jobs."""
    model = botocore.session.get_session().get_service_model("sagemaker")
    known = model.shape_for(f"{job.title()}InstanceType").enum
    if instance_type not in known:
        where = f"{config_path}: ec2_instance_type" if job == "training" else "--instance_type"
        raise LaunchError(f"{where} {instance_type!r} is not a SageMaker {job} instance type"
                          f"{did_you_mean(instance_type, known)}")


def gpus_per_instance(instance_type: str, region: str) -> int | None:
    info = instance_types_gpu_info.retrieve(region) or instance_types_gpu_info.retrieve("us-east-1")
    return info.get(instance_type, {}).get("Count")


def dlc_versions(config: SageMakerConfig, given: set[str], config_path: Path) -> tuple[dict[str, str], str | None]:
    """The DLC versions the user chose, DEFAULT_DLC for the rest, and a note when the file holds exactly the three
    versions `accelerate config` writes without asking (read as not set)."""
    chosen = {key: str(getattr(config, key)) for key in DEFAULT_DLC if key in given}
    if chosen != ACCELERATE_DLC:
        return dict(DEFAULT_DLC, **chosen), None
    note = (f"{config_path}: " + ", ".join(f"{key} {value}" for key, value in ACCELERATE_DLC.items())
            + " are what `accelerate config` writes without asking; using the newest Hugging Face training image "
            + "that runs endovit instead: " + ", ".join(f"{key} {value}" for key, value in DEFAULT_DLC.items()))
    return dict(DEFAULT_DLC), note


def image(config: SageMakerConfig, versions: dict[str, str], region: str, config_path: Path, *,
          framework: str = "huggingface", instance_type: str | None = None) -> dict:
    """The Hugging Face (or, with ``framework`` pytorch, the PyTorch) training DLC of ``versions`` for
    ``instance_type`` (default: the config's), or the config's image_uri, checked against what endovit needs."""
    instance_type = instance_type or config.ec2_instance_type
    if config.image_uri:
        return {"image_uri": config.image_uri, "py_version": None}  # the estimator requires the argument
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
    huggingface = framework == "huggingface"
    try:
        uri = image_uris.retrieve(framework, region=region, py_version=py_version, instance_type=instance_type,
                                  image_scope="training", **(
                                      {"version": versions["transformers_version"],
                                       "base_framework_version": f"pytorch{versions['pytorch_version']}"}
                                      if huggingface else {"version": versions["pytorch_version"]}))
    except ValueError as err:
        which = (f"Hugging Face training image for transformers {versions['transformers_version']}, "
                 if huggingface else "PyTorch training image for ")
        raise LaunchError(f"{config_path}: no SageMaker {which}pytorch {versions['pytorch_version']}, {py_version} "
                          f"on {instance_type} ({first_line(err)}); {fix}") from None
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


# estimator arguments the launcher sets itself -> where the user sets them instead
LAUNCHER_ARGUMENTS = {
    "role": "iam_role_name", "image_uri": "image_uri", "instance_type": "ec2_instance_type",
    "instance_count": "num_machines", "base_job_name": "base_job_name or --job_name",
    "transformers_version": "transformers_version", "pytorch_version": "pytorch_version", "py_version": "py_version",
    "entry_point": "the launcher's training_script argument", "source_dir": "nothing: endovit travels as code",
    "dependencies": "nothing: endovit travels as code", "git_config": "nothing: endovit travels as code",
    "hyperparameters": "the script's --key value flags", "environment": "mixed_precision and dynamo_config",
    "distribution": "nothing: the launcher runs torchrun", "metric_definitions": "sagemaker_metrics_file",
    "sagemaker_session": "profile and region", "debugger_hook_config": "nothing: the launcher turns it off",
    "container_entry_point": "nothing: the launcher's entry point passes SageMaker's stop on to the trainers; for an "
                             "image of your own set container_arguments to its command",
}


def check_additional_args(extra: dict, has_image_uri: bool, config_path: Path) -> None:
    """additional_args: only estimator arguments the launcher leaves to the user, spot and isolation rules."""
    known = _estimator_arguments()
    for key in extra:
        if key in LAUNCHER_ARGUMENTS:
            raise LaunchError(f"{config_path}: additional_args {key} is set by the launcher; remove it (set "
                              f"{LAUNCHER_ARGUMENTS[key]})")
        if key not in known:  # the SDK would drop it without a word
            raise LaunchError(f"{config_path}: additional_args {key!r} is not a SageMaker estimator argument"
                              f"{did_you_mean(key, known)}")
    arguments = extra.get("container_arguments")
    if arguments is not None and (not isinstance(arguments, list) or not arguments
                                  or not all(isinstance(a, str) and 0 < len(a) <= 256 for a in arguments)):
        raise LaunchError(f"{config_path}: additional_args container_arguments must be a list of strings of at most "
                          "256 characters: the image's whole command (its entry point and arguments)")
    if extra.get("use_spot_instances") and int(extra.get("max_wait") or 0) < int(extra.get("max_run") or 86400):
        raise LaunchError(f"{config_path}: use_spot_instances needs additional_args max_wait >= max_run "
                          "(seconds, waiting for spot capacity included)")
    if extra.get("use_spot_instances") and not extra.get("checkpoint_s3_uri"):
        raise LaunchError(f"{config_path}: use_spot_instances without checkpoint_s3_uri would restart from step 0 "
                          "after every interruption; set additional_args checkpoint_s3_uri")
    if extra.get("enable_network_isolation") and not has_image_uri:
        raise LaunchError(f"{config_path}: additional_args enable_network_isolation: the job could not pip-install "
                          "endovit's requirements.txt (timm, datasets, ...) into the Hugging Face image; build an "
                          "image FROM it with `pip install -r requirements.txt` and set image_uri, or remove the key")


def job_storage(extra: dict, *, job_name: str, hyperparameters: dict, config_path: Path,
                checkpoint_job: str | None = None) -> dict:
    """additional_args with S3 URIs checked and per-job checkpoint and TensorBoard folders (checkpoints: those of
    ``checkpoint_job``, when given); a non-default local folder for either reaches the script as its flag."""
    for key in ("output_path", "code_location"):
        if key in extra:
            extra[key] = check_s3_uri(str(extra[key]), f"{config_path}: additional_args {key}")
    if checkpoint_job and not extra.get("checkpoint_s3_uri"):
        raise LaunchError(f"--resume_from_job {checkpoint_job}: set additional_args checkpoint_s3_uri in "
                          f"{config_path} (the prefix that holds <job>/step_NNNNNNNN of earlier jobs)")
    if extra.get("checkpoint_s3_uri"):
        checkpoints = check_s3_uri(str(extra["checkpoint_s3_uri"]), f"{config_path}: additional_args checkpoint_s3_uri")
        extra["checkpoint_s3_uri"] = f"{checkpoints}/{checkpoint_job or job_name}"
        local = extra.setdefault("checkpoint_local_path", CHECKPOINT_LOCAL_PATH)
        if local != CHECKPOINT_LOCAL_PATH:
            hyperparameters["checkpoint_dir"] = local
    tensorboard = extra.pop("tensorboard_output_config", None)
    if tensorboard is not None:
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
