"""What every launcher (training job, Processing job) shares on the user's machine: the AWS session from the config's
profile and region, job-name checks, and the botocore hook that records the Create*Job request and, in a dry run,
answers it offline."""
from __future__ import annotations

import contextlib
import json
import logging
import re
from pathlib import Path

import boto3
import botocore.exceptions
from botocore.awsrequest import AWSResponse
from sagemaker import Session
from sagemaker.config import load_sagemaker_config
from sagemaker.exceptions import UnexpectedStatusException

from endovit.errors import LaunchError, did_you_mean, first_line

__all__ = ["ACCOUNT_PLACEHOLDER", "STAND_IN_ACCOUNT", "boto_session", "check_job_name", "RequestRecorder",
           "sdk_session", "offline_role", "quiet_sdk", "sdk_errors"]

JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")  # AWS's pattern for training/processing job names, and
JOB_NAME_LENGTH = 63  # their length limit (the pattern does not count hyphens)
ACCOUNT_PLACEHOLDER = "<account-id>"  # in a dry run, where only AWS knows the account id
STAND_IN_ACCOUNT = "000000000000"  # what the SDK sees instead in a dry run (bucket names cannot hold "<>")


def boto_session(profile: str | None, region: str | None, config_path: Path) -> boto3.Session:
    try:
        session = boto3.Session(profile_name=profile, region_name=region)
    except botocore.exceptions.ProfileNotFound:
        raise LaunchError(f"{config_path}: AWS profile {profile!r} not found; run `aws configure --profile "
                          f"{profile}` or remove profile:") from None
    if not session.region_name:
        raise LaunchError(f"no AWS region: set region: in {config_path} or AWS_DEFAULT_REGION")
    known = session.get_available_regions("sagemaker")
    if session.region_name not in known:
        raise LaunchError(f"{config_path}: region {session.region_name!r} has no SageMaker"
                          f"{did_you_mean(session.region_name, known)}")
    return session


def check_job_name(name: str, what: str, suffix: str = "") -> None:
    """Refuse a name AWS would refuse, ``suffix`` (the timestamp the SDK appends to base_job_name) included."""
    if JOB_NAME.match(name + suffix) and len(name + suffix) <= JOB_NAME_LENGTH:
        return
    limit = JOB_NAME_LENGTH - len(suffix)
    fixed = re.sub(r"[^a-zA-Z0-9]+", "-", name).strip("-")[:limit].rstrip("-")
    why = f" ({JOB_NAME_LENGTH} less the {len(suffix)}-character timestamp the SDK appends)" if suffix else ""
    raise LaunchError(f"{what} {name!r} is not a valid SageMaker job name: use at most {limit}{why} letters, digits "
                      f"and hyphens, starting and ending with a letter or digit (e.g. {fixed or 'endovit-pretrain'})")


class RequestRecorder:
    """botocore hook: record the ``create`` request (CreateTrainingJob, CreateProcessingJob); offline (dry run),
    answer the calls that create the job locally and refuse every other one."""

    def __init__(self, offline: bool, create: str = "CreateTrainingJob"):
        self.offline = offline
        self.create = create
        self.offline_answers = {("s3", "PutObject"), ("sagemaker", create)}
        self.request: dict = {}

    def __call__(self, params, event_name: str, **kwargs):
        _, service, operation = event_name.split(".", 2)
        if (service, operation) == ("sagemaker", self.create):
            self.request = json.loads(params["body"])
        if not self.offline:
            return None
        if (service, operation) not in self.offline_answers:
            raise LaunchError(f"--dry-run would have to ask AWS ({service} {operation}); please report this")
        return AWSResponse(params["url"], 200, {}, None), {"ResponseMetadata": {"HTTPStatusCode": 200}}


def _telemetry_opt_out(config: dict) -> dict:
    """The user's SageMaker SDK defaults plus TelemetryOptOut, so that a dry run sends no request at all."""
    config = dict(config or {}, SchemaVersion="1.0")
    modules = config.setdefault("SageMaker", {}).setdefault("PythonSDK", {}).setdefault("Modules", {})
    modules["TelemetryOptOut"] = True
    return config


def sdk_session(profile: str | None, region: str, config_path: Path, recorder: RequestRecorder, *,
                default_bucket: str | None = None) -> Session:
    """The SDK session on the config's profile and region, ``recorder`` hooked in. ``default_bucket``: the bucket
    the SDK takes as its default without looking it up (finding it asks STS and may create it)."""
    boto = boto_session(profile, region, config_path)
    if not recorder.offline and boto.get_credentials() is None:
        raise LaunchError("no AWS credentials found: run `aws configure` (or `aws sso login`), set "
                          f"AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or set profile: in {config_path}")
    boto.events.register("before-call", recorder, unique_id="endovit-launch")
    session = Session(boto_session=boto,
                      sagemaker_config=_telemetry_opt_out(load_sagemaker_config()) if recorder.offline else None)
    if default_bucket:
        session._default_bucket = default_bucket  # the SDK's own cache of default_bucket(): no lookup, no creation
    return session


def offline_role(session: Session, region: str, role: str) -> str:
    """A role name (as `accelerate config` writes it) as the ARN a dry run shows, without asking IAM."""
    if "/" in role:
        return role
    return f"arn:{session.boto_session.get_partition_for_region(region)}:iam::{ACCOUNT_PLACEHOLDER}:role/{role}"


@contextlib.contextmanager
def quiet_sdk():
    """The SDK's INFO lines off for a dry run (not "Creating training-job ...": nothing is created)."""
    sdk_logger = logging.getLogger("sagemaker")
    level = sdk_logger.level
    sdk_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        sdk_logger.setLevel(level)


@contextlib.contextmanager
def sdk_errors(job: str):
    """The SDK's and AWS's errors while creating (or waiting for) ``job`` as one-line LaunchErrors."""
    try:
        yield
    except LaunchError:
        raise
    except UnexpectedStatusException as err:
        raise LaunchError(f"{job}: {err}") from None
    except (ValueError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as err:
        raise LaunchError(f"SageMaker: {first_line(err)}") from None
