"""The launcher: an accelerate SageMaker config and ``scripts/pretrain.py``'s flags as a SageMaker training job.

:func:`plan_job` reads the config with accelerate's own config classes and makes every check that needs no AWS
call; its :class:`JobPlan` holds everything a submission needs. :func:`preview` turns a plan into the
CreateTrainingJob request without sending anything (``--dry-run``); :func:`submit` uploads local data and starts
the job through SageMaker Python SDK v2's ``HuggingFace`` estimator. This does what ``accelerate launch`` would do
for that config, without its defects in accelerate 1.15: configs that do not load, the script's folder as the only
code, smdistributed instead of torchrun, and DLC versions too old for this code.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
import tempfile
from pathlib import Path

import botocore.exceptions
from accelerate.utils import merge_dicts
from boto3.exceptions import S3UploadFailedError
from sagemaker import Session
from sagemaker.huggingface import HuggingFace
from sagemaker.utils import name_from_base, sagemaker_timestamp

from endovit.checkpoint import CHECKPOINT_MANIFEST, CHECKPOINT_PREFIX
from endovit.errors import LaunchError
from endovit.sagemaker import config as cfg
from endovit.sagemaker.aws import (
    ACCOUNT_PLACEHOLDER,
    STAND_IN_ACCOUNT,
    RequestRecorder,
    boto_session,
    check_job_name,
    offline_role,
    quiet_sdk,
    sdk_errors,
    sdk_session,
)
from endovit.sagemaker.entry import container_entry
from endovit.sagemaker.script import INIT_CHANNEL, check_hyperparameters, init_channel, script_hyperparameters
from endovit.sagemaker.source import Upload, plan_upload, stage_source_dir

__all__ = ["DEFAULT_BASE_JOB_NAME", "JobPlan", "Launch", "plan_job", "preview", "submit"]

DEFAULT_BASE_JOB_NAME = "endovit-pretrain"


@dataclasses.dataclass
class JobPlan:
    """Everything needed to submit one training job, checked offline."""

    job_name: str
    config_path: Path
    region: str
    profile: str | None
    entry_script: Path
    estimator_kwargs: dict  # HuggingFace(...) arguments, less source_dir, hyperparameters and sagemaker_session
    hyperparameters: dict
    channels: dict[str, str]  # channel -> S3 URI the job reads (a local source: the URI it is uploaded to)
    uploads: dict[str, Upload]  # channel -> the local file or folder uploaded for it
    output_root: str  # output_path, or the default bucket s3://sagemaker-<region>-<account-id>
    requirements: bool = True  # ship requirements.txt (pip-installed at job start; not with network isolation)
    resume_checkpoints: str | None = None  # an earlier job's checkpoint prefix this job continues from
    notes: list[str] = dataclasses.field(default_factory=list)  # what the user should know, one line each

    @property
    def model_uri(self) -> str:
        return f"{self.output_root}/{self.job_name}/output/model.tar.gz"


@dataclasses.dataclass
class Launch:
    """A submitted (or, for a dry run, prepared) training job."""

    job_name: str
    request: dict  # the CreateTrainingJob request as sent (dry run: as it would be sent)
    uploads: dict[str, tuple[str, str]]  # channel -> (local path, S3 URI it is uploaded to)
    model_uri: str  # where SageMaker puts model.tar.gz
    region: str


def _environment(config) -> dict[str, str]:
    environment = {
        "ACCELERATE_USE_SAGEMAKER": "true",
        "ACCELERATE_SAGEMAKER_DISTRIBUTED_TYPE": "NO",  # torchrun's process group, not smdistributed
        "ACCELERATE_MIXED_PRECISION": str(config.mixed_precision or "no"),
    }
    if (config.dynamo_config or {}).get("dynamo_backend"):
        environment["ACCELERATE_DYNAMO_BACKEND"] = str(config.dynamo_config["dynamo_backend"])
    return environment


def _channels(config, flag_channels: dict[str, str], config_path: Path) -> dict[str, str]:
    """The config's input channels, replaced by --train_data / --val_data; S3 URIs checked, local paths found."""
    channels = dict(cfg.read_tsv(config.sagemaker_inputs_file, "sagemaker_inputs_file", config_path)
                    if config.sagemaker_inputs_file else [])
    channels.update(flag_channels)
    for channel, source in channels.items():
        if source.startswith("s3://"):
            channels[channel] = cfg.check_s3_uri(source, f"channel {channel}")
        elif not Path(source).exists():
            raise LaunchError(f"channel {channel}: {source} is neither an s3:// URI nor an existing local folder")
    return channels


def plan_job(config_file: str | os.PathLike, training_script: str | os.PathLike, script_args: list[str], *,
             job_name: str | None = None, resume_from_job: str | None = None) -> JobPlan:
    """The training job for ``training_script`` (``scripts/pretrain.py``) and its flags under an accelerate
    SageMaker config; every check that needs no AWS call is made here, before anything is uploaded.

    ``resume_from_job`` names an earlier job whose checkpoint prefix (``<checkpoint_s3_uri>/<job>``) the new job
    uses as its own: SageMaker restores it into the job's checkpoint folder and the job resumes from the newest
    complete checkpoint there (``resume: auto``), writing its own checkpoints next to them.
    """
    config_path = Path(config_file)
    config, given = cfg.read_config(config_path)
    base_job_name = config.base_job_name if "base_job_name" in given else DEFAULT_BASE_JOB_NAME
    if job_name is None:
        check_job_name(base_job_name, f"{config_path}: base_job_name", suffix=f"-{sagemaker_timestamp()}")
        job_name = name_from_base(base_job_name)
    check_job_name(job_name, "--job_name")
    if resume_from_job is not None:
        check_job_name(resume_from_job, "--resume_from_job")
    entry_script = Path(training_script)
    if not entry_script.is_file() or entry_script.suffix != ".py":
        raise LaunchError(f"training script {entry_script}: not a Python file (give scripts/pretrain.py)")
    extra = dict(config.additional_args or {})
    cfg.check_additional_args(extra, bool(config.image_uri), config_path)
    isolated = bool(extra.get("enable_network_isolation"))
    hyperparameters, flag_channels = script_hyperparameters(script_args)
    channels = _channels(config, flag_channels, config_path)
    init_source = init_channel(hyperparameters, check_hyperparameters(hyperparameters, channels), isolated)
    if init_source:
        channels[INIT_CHANNEL] = (cfg.check_s3_uri(init_source, "--init_from") if init_source.startswith("s3://")
                                  else init_source)
    metrics = [{"Name": name, "Regex": regex} for name, regex in
               (cfg.read_tsv(config.sagemaker_metrics_file, "sagemaker_metrics_file", config_path)
                if config.sagemaker_metrics_file else [])]
    cfg.check_instance_type(config.ec2_instance_type, config_path)
    region = boto_session(config.profile, config.region if "region" in given else None, config_path).region_name
    versions, dlc_note = cfg.dlc_versions(config, given, config_path)
    image = cfg.image(config, versions, region, config_path)
    # torchrun (one process per GPU, process group from the environment) unless it is surely one GPU on one instance
    torchrun = config.num_machines > 1 or cfg.gpus_per_instance(config.ec2_instance_type, region) != 1
    extra = cfg.job_storage(extra, job_name=job_name, hyperparameters=hyperparameters, config_path=config_path,
                            checkpoint_job=resume_from_job)
    output_root = extra.get("output_path") or f"s3://sagemaker-{region}-{ACCOUNT_PLACEHOLDER}"
    # the entry point that passes SageMaker's stop (SIGTERM to PID 1) on to the trainers, before the image's command
    entry = container_entry(extra.pop("container_arguments", None))
    uploads = {channel: plan_upload(channel, source, f"{output_root}/{job_name}/input/{channel}")
               for channel, source in channels.items() if not source.startswith("s3://")}
    channels.update({channel: upload.uri for channel, upload in uploads.items()})
    kwargs = merge_dicts(extra, {
        **image,
        "entry_point": entry_script.name,
        "role": config.iam_role_name,
        "base_job_name": base_job_name,
        "instance_count": config.num_machines,
        "instance_type": config.ec2_instance_type,
        "debugger_hook_config": False,
        "distribution": {"torch_distributed": {"enabled": True}} if torchrun else None,
        "environment": {**_environment(config), **entry["environment"]},
        "metric_definitions": metrics or None,
        "container_entry_point": entry["container_entry_point"],
        "container_arguments": entry["container_arguments"],
    })
    notes = [dlc_note] if dlc_note and not config.image_uri else []
    if resume_from_job:
        notes.append(f"continuing job {resume_from_job}: resumes from the newest complete checkpoint under "
                     f"{extra['checkpoint_s3_uri']}/ and writes its own checkpoints there")
    notes += [f"channel {channel}: {upload.hidden} hidden file(s) in {upload.source} left out of the upload (names "
              "starting with '.')" for channel, upload in uploads.items() if upload.hidden]
    if isolated:
        notes.append(f"{config_path}: enable_network_isolation: no requirements.txt is shipped; image_uri "
                     f"{config.image_uri} must already hold endovit's requirements")
    return JobPlan(job_name=job_name, config_path=config_path, region=region, profile=config.profile,
                   entry_script=entry_script, estimator_kwargs=kwargs, hyperparameters=hyperparameters,
                   channels=channels, uploads=uploads, output_root=output_root, requirements=not isolated,
                   resume_checkpoints=extra["checkpoint_s3_uri"] if resume_from_job else None, notes=notes)


def _fit(plan: JobPlan, session: Session, kwargs: dict, channels: dict[str, str], wait: bool) -> None:
    """Create the training job through the SDK's HuggingFace estimator (its code staged in a temporary folder).

    With ``wait``, the SDK streams the job's CloudWatch log (every instance's stream: the pip install of
    requirements.txt, torchrun and pretrain.py's lines) until the job ends, then its status and billable time.
    """
    with tempfile.TemporaryDirectory(prefix="endovit-sourcedir-") as staged:
        stage_source_dir(plan.entry_script, staged, requirements=plan.requirements)
        with sdk_errors(f"training job {plan.job_name}"):
            estimator = HuggingFace(**kwargs, source_dir=staged, hyperparameters=plan.hyperparameters,
                                    sagemaker_session=session)
            estimator.fit(inputs=channels, job_name=plan.job_name, wait=wait, logs="All" if wait else "None")


def preview(plan: JobPlan) -> Launch:
    """The CreateTrainingJob request ``plan`` would send, made offline: nothing is uploaded, no job is created.
    What only AWS knows shows as a placeholder: ``<account-id>`` in the role ARN (from a role name) and in the
    default bucket ``sagemaker-<region>-<account-id>``."""
    recorder = RequestRecorder(offline=True)
    session = sdk_session(plan.profile, plan.region, plan.config_path, recorder)
    kwargs = dict(plan.estimator_kwargs)
    kwargs["role"] = offline_role(session, plan.region, kwargs["role"])  # the SDK would ask IAM
    default_bucket = f"sagemaker-{plan.region}-{ACCOUNT_PLACEHOLDER}"
    stand_in = f"sagemaker-{plan.region}-{STAND_IN_ACCOUNT}"
    if not kwargs.get("output_path"):
        kwargs["output_path"] = f"s3://{stand_in}/"  # the SDK's own default: output and code in the default bucket
    with quiet_sdk():
        _fit(plan, session, kwargs, plan.channels, wait=False)
    request = json.loads(json.dumps(recorder.request).replace(stand_in, default_bucket))
    return Launch(plan.job_name, request, {c: (u.source, u.uri) for c, u in plan.uploads.items()}, plan.model_uri,
                  plan.region)


def _check_checkpoints(s3, prefix_uri: str) -> None:
    """Refuse to continue from a checkpoint prefix without one complete checkpoint (its manifest is written last)."""
    bucket, _, prefix = prefix_uri[len("s3://"):].partition("/")
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=f"{prefix}/{CHECKPOINT_PREFIX}")
    pattern = re.compile(rf"^{re.escape(prefix)}/{CHECKPOINT_PREFIX}\d+/{re.escape(CHECKPOINT_MANIFEST)}$")
    if not any(pattern.match(obj["Key"]) for page in pages for obj in page.get("Contents", [])):
        job = prefix.rsplit("/", 1)[-1]
        raise LaunchError(f"--resume_from_job {job}: no complete checkpoint under {prefix_uri}/ (no "
                          f"{CHECKPOINT_PREFIX}NNNNNNNN/{CHECKPOINT_MANIFEST}); check the job name and the config's "
                          "checkpoint_s3_uri (a job that itself continued another writes to that job's prefix)")


def submit(plan: JobPlan, wait: bool = False) -> Launch:
    """Upload local data, then create the training job; ``wait`` streams its logs until it ends."""
    recorder = RequestRecorder(offline=False)
    session = sdk_session(plan.profile, plan.region, plan.config_path, recorder)
    channels, uploads, output_root = dict(plan.channels), dict(plan.uploads), plan.output_root
    try:
        if ACCOUNT_PLACEHOLDER in output_root:
            output_root = f"s3://{session.default_bucket()}"
            uploads = {c: dataclasses.replace(u, uri=u.uri.replace(plan.output_root, output_root))
                       for c, u in uploads.items()}
            channels.update({c: u.uri for c, u in uploads.items()})
        s3 = session.boto_session.client("s3")
        if plan.resume_checkpoints:
            _check_checkpoints(s3, plan.resume_checkpoints)
        for upload in uploads.values():
            bucket, _, prefix = upload.uri[len("s3://"):].partition("/")
            for path, key in upload.files:
                s3.upload_file(path, bucket, f"{prefix}/{key}")
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError, S3UploadFailedError) as err:
        raise LaunchError(f"S3 upload: {cfg.first_line(err)}") from None
    _fit(plan, session, plan.estimator_kwargs, channels, wait)
    return Launch(plan.job_name, recorder.request, {c: (u.source, u.uri) for c, u in uploads.items()},
                  f"{output_root}/{plan.job_name}/output/model.tar.gz", plan.region)
