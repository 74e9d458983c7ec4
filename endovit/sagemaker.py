"""Amazon SageMaker: the in-job environment contract, and the launcher's training-job request.

In a training job (no SageMaker SDK needed there), :func:`job_defaults` turns the ``SM_*`` environment
into recipe defaults, so ``scripts/pretrain.py`` reads its channels and writes where SageMaker uploads.

On the user's machine, :func:`launch` reads an accelerate SageMaker config file with accelerate's own
config classes and starts ``scripts/pretrain.py`` as a training job through SageMaker Python SDK v2's
``HuggingFace`` estimator (``pip install 'endovit[sagemaker]'``). It does what ``accelerate launch``
would do for that config, without its defects in accelerate 1.15: configs that do not load, the script's
folder as the only code, smdistributed instead of torchrun, and DLC versions too old for this code.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.metadata
import inspect
import json
import os
import re
import shutil
import tempfile
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from endovit.errors import LaunchError

if TYPE_CHECKING:
    from accelerate.commands.config.config_args import SageMakerConfig

__all__ = ["CHANNELS", "job_defaults", "LaunchError", "Launch", "launch", "stage_source_dir", "to_script_args"]

# ---------------------------------------------------------------------------------------------------------------
# In the job: the SM_* environment contract.

CHANNELS = {"train_data": "train", "val_data": "validation"}  # recipe key -> SageMaker input channel
JOB_FOLDER_KEYS = ("output_dir", "checkpoint_dir", "logging_dir")  # recipe keys a SageMaker job sets itself


def job_defaults(environ: Mapping[str, str]) -> dict[str, str]:
    """Recipe defaults inside a SageMaker training job; empty anywhere else (no ``SM_MODEL_DIR``).

    A job keeps its folders under one root (``/opt/ml``): ``model`` (``SM_MODEL_DIR``, uploaded as
    ``model.tar.gz`` at the end), ``output`` (``SM_OUTPUT_DIR``; ``output/tensorboard`` is synced to S3 when
    the job has a TensorBoard config), ``checkpoints`` (synced to ``checkpoint_s3_uri`` and restored when a
    spot job restarts, hence ``resume: auto``) and ``input/data/<channel>`` (``SM_CHANNEL_<CHANNEL>``).
    """
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


# ---------------------------------------------------------------------------------------------------------------
# On the user's machine: the training-job request.

SDK_REQUIREMENT = "sagemaker>=2.254.1,<3"
DEFAULT_DLC = {"transformers_version": "4.56.2", "pytorch_version": "2.8.0", "py_version": "py312"}
DEFAULT_BASE_JOB_NAME = "endovit-pretrain"
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
TENSORBOARD_LOCAL_PATH = "/opt/ml/output/tensorboard"
JOB_ENVIRON = {"SM_MODEL_DIR": "/opt/ml/model", "SM_OUTPUT_DIR": "/opt/ml/output"}
CHANNEL_ROOT = "/opt/ml/input/data"
PACKAGE_FILE_SUFFIXES = (".py", ".yaml")
S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


@dataclasses.dataclass
class Launch:
    """A submitted (or, for a dry run, prepared) training job."""

    job_name: str
    request: dict  # the CreateTrainingJob request as sent (dry run: as it would be sent)
    uploads: dict[str, tuple[str, str]]  # channel -> (local folder, S3 URI it is uploaded to)
    model_uri: str  # where SageMaker puts model.tar.gz
    region: str


def to_script_args(hyperparameters: Mapping[str, object]) -> list[str]:
    """Hyperparameters as the training toolkit passes them to the entry script: sorted ``--key str(value)``."""
    args = []
    for key in sorted(hyperparameters):
        args += [f"--{key}", str(hyperparameters[key])]
    return args


def require_sdk_v2() -> None:
    """Fail clearly unless SageMaker Python SDK v2 is installed (v3 removed ``sagemaker.huggingface``)."""
    from packaging.version import Version

    try:
        version = importlib.metadata.version("sagemaker")
    except importlib.metadata.PackageNotFoundError:
        raise LaunchError(f"the SageMaker Python SDK is not installed: pip install 'endovit[sagemaker]' "
                          f"(or '{SDK_REQUIREMENT}')") from None
    if Version(version).major >= 3:
        raise LaunchError(f"sagemaker {version} is installed, but accelerate's SageMaker launcher and this one need "
                          f"SDK v2 (v3 removed sagemaker.huggingface.HuggingFace): pip install '{SDK_REQUIREMENT}'")


def _read_config(path: Path) -> tuple[SageMakerConfig, set[str]]:
    """The accelerate SageMaker config, and the keys the file itself sets."""
    from accelerate.commands.config.config_args import SageMakerConfig
    from accelerate.utils import ComputeEnvironment, SageMakerDistributedType

    if not path.is_file():
        raise LaunchError(f"--config_file {path}: no such file; run `accelerate config` (choose Amazon SageMaker) "
                          "or copy accelerate_configs/sagemaker.yaml")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise LaunchError(f"{where}: not valid YAML ({getattr(err, 'problem', None) or _first_line(err)})") from None
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


def _read_tsv(path_text: str, key: str, config_path: Path) -> list[tuple[str, str]]:
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


def _script_hyperparameters(script_args: list[str]) -> tuple[dict, dict[str, str]]:
    """The script's ``--key value`` flags as hyperparameters (accelerate's conversion); data flags become channels."""
    from accelerate.utils.launch import _convert_nargs_to_dict

    args: list[str] = []
    for token in script_args:
        args += token.split("=", 1) if token.startswith("--") and "=" in token else [token]
    seen = set()
    for index in range(0, len(args), 2):
        flag = args[index]
        value = args[index + 1] if index + 1 < len(args) else None
        if not flag.startswith("--"):
            raise LaunchError(f"script argument {flag!r} is not a --key: SageMaker passes only --key value pairs")
        if value is None or value.startswith("--"):
            raise LaunchError(f"{flag} has no value: SageMaker passes every hyperparameter as --key value "
                              f"(write e.g. {flag} true)")
        if flag in seen:
            raise LaunchError(f"{flag} is given twice; keep one")
        seen.add(flag)
    try:
        hyperparameters = _convert_nargs_to_dict(args)
    except ValueError as err:
        raise LaunchError(f"script arguments: {err}") from None
    channels = {CHANNELS[key]: str(hyperparameters.pop(key)) for key in list(hyperparameters) if key in CHANNELS}
    for key in JOB_FOLDER_KEYS:
        if key in hyperparameters:
            raise LaunchError(f"--{key}: a SageMaker job sets it (model -> SM_MODEL_DIR, checkpoints -> "
                              f"{CHECKPOINT_LOCAL_PATH}, TensorBoard -> {TENSORBOARD_LOCAL_PATH}); remove the flag")
    if str(hyperparameters.get("resume", "auto")) != "auto":
        raise LaunchError(f"--resume {hyperparameters['resume']}: a SageMaker job resumes from its own checkpoints "
                          "(--resume auto); remove the flag")
    recipe = str(hyperparameters.get("recipe", ""))
    if Path(recipe).suffix:
        raise LaunchError(f"--recipe {recipe}: only the recipes in endovit/recipes travel to SageMaker; pass a "
                          "recipe name, add your file there, or give its settings as --key value flags")
    return hyperparameters, channels


def _check_hyperparameters(hyperparameters: dict, channels: Collection[str]) -> None:
    """Parse the hyperparameters with pretrain.py's own parser, in a simulated job environment."""
    from endovit.recipe import Recipe, RecipeError, build_parser, recipe_from_args

    if CHANNELS["train_data"] not in channels:
        raise LaunchError("no training data: pass --train_data (a local folder or an s3:// URI) or give a "
                          f"'{CHANNELS['train_data']}' channel in the config's sagemaker_inputs_file")
    parser = build_parser()
    parser.exit_on_error = False
    try:
        args, unknown = parser.parse_known_args(to_script_args(hyperparameters))
    except argparse.ArgumentError as err:
        raise LaunchError(f"scripts/pretrain.py would reject {err}") from None
    if unknown:
        known = ["--recipe"] + [f"--{f.name}" for f in dataclasses.fields(Recipe)]
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise LaunchError(f"scripts/pretrain.py has no flag {unknown[0]}{hint}")
    environ = dict(JOB_ENVIRON, **{f"SM_CHANNEL_{c.upper()}": f"{CHANNEL_ROOT}/{c}" for c in channels})
    try:
        recipe_from_args(args, environ)
    except RecipeError as err:
        raise LaunchError(f"scripts/pretrain.py would reject {err}") from None


def _endovit_requirements() -> list[str]:
    """endovit's install requirements (no extras), for the container's requirements.txt."""
    from packaging.requirements import Requirement

    try:
        requires = importlib.metadata.requires("endovit") or []
    except importlib.metadata.PackageNotFoundError:
        raise LaunchError("endovit is not installed: pip install -e '.[sagemaker]' from the repository root") from None
    return [r for r in requires if Requirement(r).marker is None or "extra" not in str(Requirement(r).marker)]


def stage_source_dir(entry_script: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Fill ``dest`` with what the job runs: the entry script, the ``endovit`` package (its ``.py`` and recipe
    files only) and a ``requirements.txt`` that the container installs. Nothing else travels."""
    entry_script, dest = Path(entry_script), Path(dest)
    package = Path(__file__).resolve().parent

    def skip(folder: str, names: list[str]) -> list[str]:
        return [n for n in names if n.startswith(".") or n == "__pycache__"
                or (Path(folder, n).is_file() and Path(n).suffix not in PACKAGE_FILE_SUFFIXES)]

    dest.mkdir(parents=True, exist_ok=True)
    shutil.copytree(package, dest / package.name, ignore=skip, dirs_exist_ok=True)
    shutil.copy2(entry_script, dest / entry_script.name)
    (dest / "requirements.txt").write_text(
        "# endovit's requirements; the SageMaker container installs them before running the entry script\n"
        + "\n".join(_endovit_requirements()) + "\n")
    return dest


def _check_s3_uri(uri: str, what: str) -> str:
    match = re.match(r"^s3://([^/]+)(/.*)?$", uri)
    if not match or not S3_BUCKET.match(match.group(1)):
        raise LaunchError(f"{what} {uri!r} is not an s3://bucket/prefix URI with a valid bucket name "
                          "(lowercase letters, digits, dots, hyphens)")
    return uri.rstrip("/")


def _check_instance_type(instance_type: str, config_path: Path) -> None:
    import botocore.session

    model = botocore.session.get_session().get_service_model("sagemaker")
    known = model.shape_for("TrainingInstanceType").enum
    if instance_type not in known:
        close = difflib.get_close_matches(instance_type, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise LaunchError(f"{config_path}: ec2_instance_type {instance_type!r} is not a SageMaker training instance "
                          f"type{hint}")


def _gpus_per_instance(instance_type: str, region: str) -> int | None:
    from sagemaker import instance_types_gpu_info

    info = (instance_types_gpu_info.retrieve(region) or instance_types_gpu_info.retrieve("us-east-1"))
    return info.get(instance_type, {}).get("Count")


def _boto_session(config, given: set[str], config_path: Path):
    import boto3
    import botocore.exceptions

    try:
        session = boto3.Session(profile_name=config.profile, region_name=config.region if "region" in given else None)
    except botocore.exceptions.ProfileNotFound:
        raise LaunchError(f"{config_path}: AWS profile {config.profile!r} not found; run `aws configure --profile "
                          f"{config.profile}` or remove profile:") from None
    region = session.region_name
    if not region:
        raise LaunchError(f"no AWS region: set region: in {config_path} or AWS_DEFAULT_REGION")
    known = session.get_available_regions("sagemaker")
    if region not in known:
        close = difflib.get_close_matches(region, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise LaunchError(f"{config_path}: region {region!r} has no SageMaker{hint}")
    return session


def _image(config, given: set[str], region: str, config_path: Path) -> dict:
    """The Hugging Face DLC (or the config's image_uri), checked against what endovit needs."""
    from packaging.requirements import Requirement
    from packaging.version import InvalidVersion, Version
    from sagemaker import image_uris

    if config.image_uri:
        return {"image_uri": config.image_uri}
    versions = {key: str(getattr(config, key)) if key in given else value for key, value in DEFAULT_DLC.items()}
    fix = ("use transformers_version: {transformers_version}, pytorch_version: {pytorch_version}, "
           "py_version: {py_version}, or an image_uri").format(**DEFAULT_DLC)
    torch = next(Requirement(r) for r in _endovit_requirements() if Requirement(r).name == "torch")
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
                          f"on {config.ec2_instance_type} ({_first_line(err)}); {fix}") from None
    return {"image_uri": uri, **versions}


class _RequestRecorder:
    """botocore hooks: record the CreateTrainingJob request; in a dry run, answer every call locally instead."""

    OFFLINE_ANSWERS = {("s3", "PutObject"), ("sagemaker", "CreateTrainingJob")}

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.request: dict = {}

    def __call__(self, params, event_name: str, **kwargs):
        from botocore.awsrequest import AWSResponse

        _, service, operation = event_name.split(".", 2)
        if (service, operation) == ("sagemaker", "CreateTrainingJob"):
            self.request = json.loads(params["body"])
        if not self.dry_run:
            return None
        if (service, operation) not in self.OFFLINE_ANSWERS:
            raise LaunchError(f"--dry-run would have to ask AWS ({service} {operation}); give iam_role_name as a role "
                              "ARN and set additional_args output_path and code_location in the config")
        return AWSResponse(params["url"], 200, {}, None), {"ResponseMetadata": {"HTTPStatusCode": 200}}


def _job_storage(extra: dict, job_name: str, hyperparameters: dict, config_path: Path) -> dict:
    """additional_args checked (estimator arguments, spot settings, S3 URIs), with per-job checkpoint and
    TensorBoard folders; a non-default local folder for either reaches the script as its hyperparameter."""
    from sagemaker.debugger import TensorBoardOutputConfig
    from sagemaker.huggingface import HuggingFace

    known = {name for cls in HuggingFace.__mro__ if "__init__" in vars(cls)
             for name in inspect.signature(cls.__init__).parameters} - {"self", "kwargs", "args"}
    for key in extra:
        if key not in known:  # the SDK would drop it without a word
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise LaunchError(f"{config_path}: additional_args {key!r} is not a SageMaker estimator argument{hint}")
    if extra.get("use_spot_instances") and int(extra.get("max_wait") or 0) < int(extra.get("max_run") or 86400):
        raise LaunchError(f"{config_path}: use_spot_instances needs additional_args max_wait >= max_run "
                          "(seconds, waiting for spot capacity included)")
    for key in ("output_path", "code_location"):
        if key in extra:
            extra[key] = _check_s3_uri(str(extra[key]), f"{config_path}: additional_args {key}")
    if extra.get("use_spot_instances") and not extra.get("checkpoint_s3_uri"):
        raise LaunchError(f"{config_path}: use_spot_instances without checkpoint_s3_uri would restart from step 0 "
                          "after every interruption; set additional_args checkpoint_s3_uri")
    if extra.get("checkpoint_s3_uri"):
        checkpoints = _check_s3_uri(str(extra["checkpoint_s3_uri"]),
                                    f"{config_path}: additional_args checkpoint_s3_uri")
        extra["checkpoint_s3_uri"] = f"{checkpoints}/{job_name}"
        local = extra.setdefault("checkpoint_local_path", CHECKPOINT_LOCAL_PATH)
        if local != CHECKPOINT_LOCAL_PATH:
            hyperparameters["checkpoint_dir"] = local
    tensorboard = extra.pop("tensorboard_output_config", None)
    if tensorboard:
        if not isinstance(tensorboard, dict) or "s3_output_path" not in tensorboard:
            raise LaunchError(f"{config_path}: additional_args tensorboard_output_config needs s3_output_path "
                              "(and optionally container_local_output_path)")
        tensorboard_uri = _check_s3_uri(str(tensorboard["s3_output_path"]),
                                        f"{config_path}: additional_args tensorboard_output_config s3_output_path")
        local = tensorboard.get("container_local_output_path", TENSORBOARD_LOCAL_PATH)
        extra["tensorboard_output_config"] = TensorBoardOutputConfig(f"{tensorboard_uri}/{job_name}", local)
        if local != TENSORBOARD_LOCAL_PATH:
            hyperparameters["logging_dir"] = local
    return extra


def _first_line(err: Exception) -> str:
    lines = [line for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _telemetry_opt_out(config: dict) -> dict:
    """The user's SageMaker SDK defaults plus TelemetryOptOut, so that a dry run sends no request at all."""
    config = dict(config or {}, SchemaVersion="1.0")
    modules = config.setdefault("SageMaker", {}).setdefault("PythonSDK", {}).setdefault("Modules", {})
    modules["TelemetryOptOut"] = True
    return config


def launch(config_file: str | os.PathLike, training_script: str | os.PathLike, script_args: list[str],
           job_name: str | None = None, dry_run: bool = False, wait: bool = False) -> Launch:
    """Start ``training_script`` (``scripts/pretrain.py``) as a SageMaker training job from an accelerate
    SageMaker config; everything is checked before anything is uploaded."""
    require_sdk_v2()
    os.environ.setdefault("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    config_path = Path(config_file)
    config, given = _read_config(config_path)
    entry_script = Path(training_script)
    if not entry_script.is_file() or entry_script.suffix != ".py":
        raise LaunchError(f"training script {entry_script}: not a Python file (give scripts/pretrain.py)")
    hyperparameters, flag_channels = _script_hyperparameters(script_args)
    channels = dict(_read_tsv(config.sagemaker_inputs_file, "sagemaker_inputs_file", config_path)
                    if config.sagemaker_inputs_file else [])
    channels.update(flag_channels)
    _check_hyperparameters(hyperparameters, channels)
    metrics = [{"Name": name, "Regex": regex} for name, regex in
               (_read_tsv(config.sagemaker_metrics_file, "sagemaker_metrics_file", config_path)
                if config.sagemaker_metrics_file else [])]
    _check_instance_type(config.ec2_instance_type, config_path)
    boto_session = _boto_session(config, given, config_path)
    if not dry_run and boto_session.get_credentials() is None:
        raise LaunchError("no AWS credentials found: run `aws configure` (or `aws sso login`), set "
                          f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or set profile: in {config_path}")
    region = boto_session.region_name

    import botocore.exceptions
    from accelerate.utils import merge_dicts
    from sagemaker import Session
    from sagemaker.config import load_sagemaker_config
    from sagemaker.exceptions import UnexpectedStatusException
    from sagemaker.huggingface import HuggingFace
    from sagemaker.utils import name_from_base

    image = _image(config, given, region, config_path)
    # torchrun (one process per GPU, process group from the environment) unless it is surely one GPU on one instance
    torchrun = config.num_machines > 1 or _gpus_per_instance(config.ec2_instance_type, region) != 1
    base_job_name = config.base_job_name if "base_job_name" in given else DEFAULT_BASE_JOB_NAME
    job_name = job_name or name_from_base(base_job_name)
    extra = _job_storage(dict(config.additional_args or {}), job_name, hyperparameters, config_path)
    for channel, source in channels.items():
        if source.startswith("s3://"):
            channels[channel] = _check_s3_uri(source, f"channel {channel}")
        elif not Path(source).exists():
            raise LaunchError(f"channel {channel}: {source} is neither an s3:// URI nor an existing local folder")

    recorder = _RequestRecorder(dry_run)
    boto_session.events.register("before-call", recorder, unique_id="endovit-launch")
    session = Session(boto_session=boto_session,
                      sagemaker_config=_telemetry_opt_out(load_sagemaker_config()) if dry_run else None)
    environment = {
        "ACCELERATE_USE_SAGEMAKER": "true",
        "ACCELERATE_SAGEMAKER_DISTRIBUTED_TYPE": "NO",  # torchrun's process group, not smdistributed
        "ACCELERATE_MIXED_PRECISION": str(config.mixed_precision or "no"),
    }
    if config.dynamo_config.get("dynamo_backend"):
        environment["ACCELERATE_DYNAMO_BACKEND"] = str(config.dynamo_config["dynamo_backend"])
    with tempfile.TemporaryDirectory(prefix="endovit-sourcedir-") as staged:
        stage_source_dir(entry_script, staged)
        kwargs = merge_dicts(extra, {
            **image,
            "entry_point": entry_script.name,
            "source_dir": staged,
            "role": config.iam_role_name,
            "base_job_name": base_job_name,
            "instance_count": config.num_machines,
            "instance_type": config.ec2_instance_type,
            "debugger_hook_config": False,
            "distribution": {"torch_distributed": {"enabled": True}} if torchrun else None,
            "hyperparameters": hyperparameters,
            "environment": environment,
            "metric_definitions": metrics or None,
            "sagemaker_session": session,
        })
        try:
            estimator = HuggingFace(**kwargs)
        except ValueError as err:
            raise LaunchError(f"{config_path}: {_first_line(err)}") from None
        try:
            output_root = (extra.get("output_path") or f"s3://{session.default_bucket()}").rstrip("/")
            uploads = {}
            for channel, source in channels.items():
                if not source.startswith("s3://"):
                    uploads[channel] = (source, f"{output_root}/{job_name}/input/{channel}")
                    channels[channel] = uploads[channel][1]
            if not dry_run:
                for folder, uri in uploads.values():
                    bucket, _, prefix = uri[len("s3://"):].partition("/")
                    session.upload_data(folder, bucket=bucket, key_prefix=prefix)
            estimator.fit(inputs=channels, job_name=job_name, wait=wait, logs="All" if wait else "None")
        except LaunchError:
            raise
        except UnexpectedStatusException as err:
            raise LaunchError(f"training job {job_name}: {err}") from None
        except (ValueError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
            raise LaunchError(f"SageMaker: {_first_line(err)}") from None
    return Launch(job_name, recorder.request, uploads, f"{output_root}/{job_name}/output/model.tar.gz", region)
