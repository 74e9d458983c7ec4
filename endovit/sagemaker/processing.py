"""The prepare launcher: ``scripts/prepare_data.py`` over an S3 prefix as one SageMaker Processing job of N instances,
then the merge of their parts into one prepared dataset.

SageMaker gives each instance a disjoint share of the objects under ``--input`` (``ShardedByS3Key``: about 1/N of
them, downloaded to ``/opt/ml/processing/input/data`` before the code starts). Each runs the same prepare as one
machine does, ``prepare_data.py --instance_part true``, into ``/opt/ml/processing/output/parts/<host>``, and SageMaker
uploads that folder to ``<out>/parts/<job>/`` when the instance's code has ended (``EndOfJob``: a part reaches S3
whole or not at all, and Processing jobs have no spot capacity to resume after). ``endovit.data.parts.merge_parts``
then writes ``<out>/endovit_dataset.json``, which lists every part's shards, so training reads ``<out>`` as it reads
any prepared dataset. A job that failed or was stopped is continued by a new one (``resume_from_job``) that reuses
its complete parts: the new job's instances leave out the files those prepared (they still download their share).
The image is the PyTorch training DLC of the config's versions (the Hugging Face one has no CPU build); the code
travels as for training, with PyAV added to its requirements.txt.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from pathlib import Path, PurePosixPath

import botocore.exceptions
from sagemaker.network import NetworkConfig
from sagemaker.processing import ProcessingInput, ProcessingOutput
from sagemaker.pytorch import PyTorchProcessor
from sagemaker.utils import name_from_base

from endovit.data.parts import RESUME_DIR, merge_parts, resume_record
from endovit.data.prepare import PrepareSettings
from endovit.data.prepare_flags import settings_flags
from endovit.data.prepare_inputs import input_name
from endovit.data.store import MANIFEST, PARTS_DIR
from endovit.errors import DataError, LaunchError, first_line
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
from endovit.sagemaker.source import stage_source_dir

__all__ = ["DEFAULT_BASE_JOB_NAME", "INPUT_PATH", "OUTPUT_PATH", "PrepareJobPlan", "PrepareLaunch", "plan_prepare",
           "preview_prepare", "submit_prepare", "merge"]

DEFAULT_BASE_JOB_NAME = "endovit-prepare"
INPUT_PATH = "/opt/ml/processing/input/data"
OUTPUT_PATH = "/opt/ml/processing/output/parts"
RESUME_PATH = "/opt/ml/processing/input/resume"
PREPARE_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "prepare_data.py"
# the config's additional_args that a Processing job takes -> the processor's argument; the rest configure training
PROCESSING_ARGUMENTS = {"code_location": "code_location", "max_run": "max_runtime_in_seconds",
                        "volume_size": "volume_size_in_gb", "volume_kms_key": "volume_kms_key",
                        "output_kms_key": "output_kms_key", "tags": "tags"}
NETWORK_ARGUMENTS = ("subnets", "security_group_ids", "enable_network_isolation")


@dataclasses.dataclass
class PrepareJobPlan:
    """Everything needed to submit one Processing job, checked offline."""

    job_name: str
    config_path: Path
    region: str
    profile: str | None
    processor_kwargs: dict  # PyTorchProcessor(...) arguments, less sagemaker_session
    input_uri: str  # the S3 prefix whose objects are shared out, ending in "/"
    out_uri: str  # the prepared dataset
    arguments: list[str]  # prepare_data.py's flags on every instance
    requirements: bool = True  # ship requirements.txt (not with network isolation)
    resume_from_job: str | None = None  # an earlier job under out_uri whose complete parts this job reuses
    notes: list[str] = dataclasses.field(default_factory=list)

    @property
    def parts_uri(self) -> str:
        return f"{self.out_uri}/{PARTS_DIR}/{self.job_name}"

    @property
    def resume_uri(self) -> str:
        return f"{self.out_uri}/{RESUME_DIR}/{self.job_name}.json"


@dataclasses.dataclass
class PrepareLaunch:
    """A submitted (or, for a dry run, prepared) Processing job."""

    job_name: str
    request: dict  # the CreateProcessingJob request as sent (dry run: as it would be sent)
    region: str
    out_uri: str
    manifest: dict | None = None  # the merged dataset's manifest, after --wait
    reused: dict | None = None  # with resume_from_job: the earlier parts reused and the files they prepared


def _s3_folder(uri: str, flag: str, what: str) -> str:
    if not uri.startswith("s3://"):
        upload = f" (upload a local folder first: aws s3 sync {uri} s3://BUCKET/PREFIX/)" if flag == "--input" else ""
        raise LaunchError(f"{flag} {uri}: a Processing job reads and writes S3; give the s3://bucket/prefix of "
                          f"{what}{upload}")
    return cfg.check_s3_uri(uri, flag)


def _processor_kwargs(extra: dict, config_path: Path) -> tuple[dict, list[str]]:
    """The processor arguments from additional_args, and the training-only keys it leaves out."""
    kwargs = {PROCESSING_ARGUMENTS[key]: value for key, value in extra.items() if key in PROCESSING_ARGUMENTS}
    if "code_location" in kwargs:
        kwargs["code_location"] = cfg.check_s3_uri(str(kwargs["code_location"]),
                                                   f"{config_path}: additional_args code_location")
    network = {key: extra[key] for key in NETWORK_ARGUMENTS if key in extra}
    if network:
        kwargs["network_config"] = NetworkConfig(**network)
    ignored = sorted(set(extra) - set(PROCESSING_ARGUMENTS) - set(NETWORK_ARGUMENTS))
    return kwargs, ignored


def plan_prepare(config_file: str | os.PathLike, *, input_uri: str, out_uri: str, settings: PrepareSettings,
                 instance_count: int | None = None, instance_type: str | None = None, job_name: str | None = None,
                 num_proc: int | None = None, resume_from_job: str | None = None) -> PrepareJobPlan:
    """The Processing job that prepares ``input_uri``'s videos or frames into ``out_uri`` with ``settings`` on
    ``instance_count`` instances (default: the config's num_machines) of ``instance_type`` (default: its
    ec2_instance_type), continuing ``resume_from_job`` when given; every check that needs no AWS call is made
    here."""
    input_uri = _s3_folder(input_uri, "--input", "the videos or frames to prepare")
    out_uri = _s3_folder(out_uri, "--out", "the prepared dataset (a new prefix)")
    if f"{out_uri}/".startswith(f"{input_uri}/"):
        raise LaunchError(f"--out {out_uri} lies inside --input {input_uri}/: the dataset would become input of the "
                          "next run; choose an --out outside it")
    config_path = Path(config_file)
    config, given = cfg.read_config(config_path)
    instance_count = config.num_machines if instance_count is None else instance_count
    if instance_count < 1:
        raise LaunchError(f"--instance_count {instance_count}: give 1 or more instances (each prepares about 1/N of "
                          "the input's objects)")
    if num_proc is not None and num_proc < 1:
        raise LaunchError(f"--num_proc {num_proc}: give 1 or more worker processes per instance (default: its CPUs)")
    if job_name is None:
        job_name = name_from_base(DEFAULT_BASE_JOB_NAME)
    check_job_name(job_name, "--job_name")
    if resume_from_job is not None:
        check_job_name(resume_from_job, "--resume_from_job")
        if resume_from_job == job_name:
            raise LaunchError(f"--resume_from_job {resume_from_job}: the new job needs a name of its own (--job_name)")
    instance_type = instance_type or config.ec2_instance_type
    cfg.check_instance_type(instance_type, config_path, job="processing")
    source = settings.source or input_name(PurePosixPath(input_uri[len("s3://"):]))
    try:
        settings = dataclasses.replace(settings, source=source).validate()
    except DataError as err:
        raise LaunchError(str(err)) from None
    extra = dict(config.additional_args or {})
    cfg.check_additional_args(extra, bool(config.image_uri), config_path)  # the refusals training applies
    kwargs, ignored = _processor_kwargs(extra, config_path)
    region = boto_session(config.profile, config.region if "region" in given else None, config_path).region_name
    versions, dlc_note = cfg.dlc_versions(config, given, config_path)
    image = cfg.image(config, versions, region, config_path, framework="pytorch", instance_type=instance_type)
    isolated = bool(extra.get("enable_network_isolation"))
    kwargs |= {
        "image_uri": image["image_uri"],
        "framework_version": versions["pytorch_version"],
        "py_version": image.get("py_version") or versions["py_version"],
        "role": config.iam_role_name,
        "instance_count": instance_count,
        "instance_type": instance_type,
        "base_job_name": DEFAULT_BASE_JOB_NAME,
        "env": {"PYTHONUNBUFFERED": "1"},  # each instance's lines reach CloudWatch as they are printed
    }
    arguments = ["--input", INPUT_PATH, "--out", OUTPUT_PATH, "--instance_part", "true", *settings_flags(settings)]
    arguments += ["--num_proc", str(num_proc)] if num_proc else []
    arguments += ["--resume_record", f"{RESUME_PATH}/{job_name}.json"] if resume_from_job else []
    notes = [dlc_note] if dlc_note and not config.image_uri else []
    if cfg.gpus_per_instance(instance_type, region):
        notes.append(f"--instance_type {instance_type} has GPUs that prepare does not use (it decodes and encodes on "
                     "CPUs); a CPU type such as ml.c5.4xlarge costs less")
    if ignored:
        notes.append(f"{config_path}: additional_args {', '.join(ignored)} configure training jobs; the Processing "
                     "job does not use them")
    if isolated:
        notes.append(f"{config_path}: enable_network_isolation: no requirements.txt is shipped; image_uri "
                     f"{config.image_uri} must already hold endovit's requirements and PyAV")
    return PrepareJobPlan(job_name=job_name, config_path=config_path, region=region, profile=config.profile,
                          processor_kwargs=kwargs, input_uri=f"{input_uri}/", out_uri=out_uri, arguments=arguments,
                          requirements=not isolated, resume_from_job=resume_from_job, notes=notes)


def _run(plan: PrepareJobPlan, session, kwargs: dict, wait: bool) -> None:
    """Create the Processing job through the SDK's PyTorchProcessor (its code staged in a temporary folder); with
    ``wait``, stream every instance's log until the job ends."""
    with tempfile.TemporaryDirectory(prefix="endovit-sourcedir-") as staged:
        stage_source_dir(PREPARE_SCRIPT, staged, requirements=plan.requirements, extras=("video",))
        inputs = [ProcessingInput(source=plan.input_uri, destination=INPUT_PATH, input_name="input",
                                  s3_data_distribution_type="ShardedByS3Key")]
        if plan.resume_from_job:  # one small JSON object on every instance
            inputs.append(ProcessingInput(source=plan.resume_uri, destination=RESUME_PATH, input_name="resume"))
        with sdk_errors(f"processing job {plan.job_name}"):
            processor = PyTorchProcessor(**kwargs, sagemaker_session=session)
            processor.run(
                code=PREPARE_SCRIPT.name, source_dir=staged, arguments=plan.arguments, job_name=plan.job_name,
                inputs=inputs,
                outputs=[ProcessingOutput(source=OUTPUT_PATH, destination=plan.parts_uri, output_name="parts",
                                          s3_upload_mode="EndOfJob")],
                wait=wait, logs=wait)


def preview_prepare(plan: PrepareJobPlan) -> PrepareLaunch:
    """The CreateProcessingJob request ``plan`` would send, made offline: nothing is uploaded, no job is created;
    what only AWS knows shows as ``<account-id>``."""
    recorder = RequestRecorder(offline=True, create="CreateProcessingJob")
    stand_in = f"sagemaker-{plan.region}-{STAND_IN_ACCOUNT}"
    session = sdk_session(plan.profile, plan.region, plan.config_path, recorder, default_bucket=stand_in)
    kwargs = dict(plan.processor_kwargs, role=offline_role(session, plan.region, plan.processor_kwargs["role"]))
    with quiet_sdk():
        _run(plan, session, kwargs, wait=False)
    request = json.loads(json.dumps(recorder.request).replace(stand_in, f"sagemaker-{plan.region}-"
                                                                        f"{ACCOUNT_PLACEHOLDER}"))
    return PrepareLaunch(plan.job_name, request, plan.region, plan.out_uri)


def _check_prefixes(s3, plan: PrepareJobPlan) -> None:
    """Refuse an --input without objects and an --out that already holds something (a new dataset needs a new
    prefix: a part of an earlier job would be mixed into this one's), unless this job continues one there."""
    def first_key(uri: str) -> str | None:
        bucket, _, prefix = uri[len("s3://"):].partition("/")
        listing = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1)
        return next((obj["Key"] for obj in listing.get("Contents", [])), None)

    if first_key(plan.input_uri) is None:
        raise LaunchError(f"--input {plan.input_uri} holds no objects; upload the videos or frames there first "
                          "(aws s3 sync)")
    if plan.resume_from_job is None and (key := first_key(f"{plan.out_uri}/")) is not None:
        raise LaunchError(f"--out {plan.out_uri} is not empty (it holds {key}); a Processing job writes a new "
                          "prepared dataset: choose a new --out, continue a failed job there with --resume_from_job, "
                          "or merge what is there with --merge")
    if plan.resume_from_job and first_key(f"{plan.out_uri}/{MANIFEST}") is not None:
        raise LaunchError(f"--resume_from_job {plan.resume_from_job}: {plan.out_uri} is already merged (it holds "
                          f"{MANIFEST}); train from it, or prepare into a new --out")


def submit_prepare(plan: PrepareJobPlan, wait: bool = False) -> PrepareLaunch:
    """Create the Processing job; with ``wait``, follow it to its end and merge its parts into ``plan.out_uri``."""
    recorder = RequestRecorder(offline=False, create="CreateProcessingJob")
    code_location = plan.processor_kwargs.get("code_location")
    session = sdk_session(plan.profile, plan.region, plan.config_path, recorder,
                          default_bucket=code_location[len("s3://"):].split("/")[0] if code_location else None)
    storage_options = {"profile": plan.profile} if plan.profile else None
    reused = None
    try:
        s3 = session.boto_session.client("s3")
        _check_prefixes(s3, plan)
        if plan.resume_from_job:
            try:
                reused = resume_record(plan.out_uri, plan.resume_from_job, storage_options=storage_options)
            except DataError as err:
                raise LaunchError(str(err)) from None
            bucket, _, key = plan.resume_uri[len("s3://"):].partition("/")
            s3.put_object(Bucket=bucket, Key=key, Body=(json.dumps(reused) + "\n").encode())
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        raise LaunchError(f"S3: {first_line(err)}") from None
    _run(plan, session, plan.processor_kwargs, wait)
    launch = PrepareLaunch(plan.job_name, recorder.request, plan.region, plan.out_uri, reused=reused)
    if wait:
        launch.manifest = merge(plan.out_uri, job=plan.job_name, profile=plan.profile)
    return launch


def merge(out_uri: str, *, job: str | None = None, profile: str | None = None) -> dict:
    """Merge the parts under ``out_uri/parts/`` (of ``job``, when given) into one prepared dataset; its manifest."""
    out_uri = _s3_folder(out_uri, "--out", "the prepared dataset")
    try:
        return merge_parts(out_uri, job=job, storage_options={"profile": profile} if profile else None)
    except DataError as err:
        raise LaunchError(str(err)) from None
