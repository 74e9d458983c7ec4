"""Shared fixtures: tiny generated frames, a fresh accelerate state per test, the SageMaker tests' AWS (helpers live
in tests/helpers/)."""
from __future__ import annotations

import json
import os
import runpy
import urllib.request
from pathlib import Path

import boto3
import botocore.client
import pytest
import yaml
from helpers.sagemaker import BUCKET, REGION, validate_each_sdk_config_once
from helpers.scripts import REPO, moto_server_url

from endovit.data.synthetic import write_sample_frames

# The files that take longest here, longest first (each 1-3 minutes of work on 2 cores). xdist gives a worker the
# next file whenever it runs dry, in collection order (`make test` turns off its own reordering by test count): the
# long files start first, so the two workers end close together instead of one running the demo while the other idles.
LONGEST_FILES = ("test_demo.py", "test_stop.py", "test_pretrain_e2e.py", "test_sagemaker_container.py",
                 "test_distributed.py", "test_swa_endovit.py", "test_sagemaker_job.py", "test_benchmark.py",
                 "test_export.py", "test_sagemaker_processing.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file's own order is kept


@pytest.fixture(autouse=True)
def fresh_accelerate_state():
    """accelerate keeps one process-wide state (device, precision); tests that build accelerators in this process
    each start from none."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.fixture(scope="session")
def frames_dir(tmp_path_factory) -> Path:
    """2 videos x 8 frames of 48x64 synthetic endoscopy, Cholec80 layout."""
    root = tmp_path_factory.mktemp("frames")
    write_sample_frames(root, videos=2, frames=8, height=48, width=64, seed=3)
    return root / "frames"


@pytest.fixture(scope="session")
def val_frames_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("val_frames")
    write_sample_frames(root, videos=1, frames=6, height=48, width=64, seed=4, first_video=9)
    return root / "frames"


# ------------------------------------------------------------------------------------------------ SageMaker

@pytest.fixture(scope="module")
def launcher():
    return runpy.run_path(str(REPO / "scripts" / "launch_sagemaker.py"), run_name="launch_sagemaker")["main"]


@pytest.fixture
def pretrain_main(capsys, monkeypatch):
    """``scripts/pretrain.py``'s own ``main`` run in this process, for the runs that are refused or have nothing to
    do (a subprocess would spend its seconds importing torch): ``run(*flags) -> (exit code, stdout, stderr)``."""
    main = runpy.run_path(str(REPO / "scripts" / "pretrain.py"), run_name="pretrain")["main"]
    monkeypatch.chdir(REPO)

    def run(*flags: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            code = main([str(flag) for flag in flags])
        except SystemExit as exit_:  # argparse's refusals
            code = exit_.code
        return (code, *capsys.readouterr())

    return run


@pytest.fixture
def aws_env(monkeypatch, tmp_path):
    """Fake credentials and region, no AWS config files, no instance metadata, SDK telemetry off."""
    for key in list(os.environ):
        if key.startswith(("AWS_", "SAGEMAKER_")):
            monkeypatch.delenv(key)
    sdk_defaults = tmp_path / "sagemaker_defaults.yaml"
    sdk_defaults.write_text(yaml.safe_dump({"SchemaVersion": "1.0",
                                            "SageMaker": {"PythonSDK": {"Modules": {"TelemetryOptOut": True}}}}))
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(sdk_defaults))
    monkeypatch.setenv("SAGEMAKER_SUPPRESS_V2_WARNING", "1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    validate_each_sdk_config_once(monkeypatch)


@pytest.fixture
def offline_aws(aws_env):
    """moto without its own fake credentials: a launch that wrongly goes ahead still reaches no real AWS."""
    from moto import mock_aws

    with mock_aws(config={"core": {"mock_credentials": False}}):
        yield


@pytest.fixture
def sent(monkeypatch):
    """Every AWS API call the code under test makes: (service, operation, params as passed to botocore)."""
    calls = []
    make_api_call = botocore.client.BaseClient._make_api_call

    def record(client, operation, params):
        calls.append((client.meta.service_model.service_name, operation, json.loads(json.dumps(params, default=str))))
        return make_api_call(client, operation, params)

    monkeypatch.setattr(botocore.client.BaseClient, "_make_api_call", record)
    return calls


@pytest.fixture(scope="module")
def moto_server():
    """A moto server (S3, SageMaker, ...) on loopback for the test module; its URL."""
    with moto_server_url() as url:
        yield url


@pytest.fixture
def moto_aws(moto_server, aws_env, monkeypatch):
    """Every AWS client pointed at the moto server (fake credentials, SDK telemetry off), reset, with one empty
    bucket; a boto3 session on it."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_server)
    urllib.request.urlopen(urllib.request.Request(f"{moto_server}/moto-api/reset", method="POST"), timeout=10)
    session = boto3.Session(region_name=REGION)
    session.client("s3").create_bucket(Bucket=BUCKET)
    return session
