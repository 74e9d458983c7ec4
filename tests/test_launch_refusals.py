"""Every rule by which the launcher refuses a setup: one case each, one clear line, nothing sent to AWS."""
from __future__ import annotations

import importlib.metadata

import pytest
from helpers.sagemaker import BUCKET, ISOLATED_IMAGE, write_config

from endovit.sagemaker import source

SPOT = {"use_spot_instances": True, "max_run": 3600, "max_wait": 7200, "checkpoint_s3_uri": f"s3://{BUCKET}/ckpt"}


def fake_sdk_v3(monkeypatch, tmp_path):
    dist_info = tmp_path / "site" / "sagemaker-3.0.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: sagemaker\nVersion: 3.0.0\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))


def no_sdk(monkeypatch, tmp_path):
    version = importlib.metadata.version

    def without_sagemaker(name):
        if name == "sagemaker":
            raise importlib.metadata.PackageNotFoundError(name)
        return version(name)

    monkeypatch.setattr(importlib.metadata, "version", without_sagemaker)


def no_credentials(monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")


def no_region(monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_DEFAULT_REGION")


def no_constraints(monkeypatch, tmp_path):
    monkeypatch.setattr(source, "CONSTRAINTS", tmp_path / "constraints.txt")


def write(name: str, text: str):
    def prepare(monkeypatch, tmp_path):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    prepare.__name__ = f"write {name}"
    return prepare


CASES = [
    # the SDK
    ("sdk-v3", fake_sdk_v3, {}, [], [], "sagemaker 3.0.0 is installed"),
    ("no-sdk", no_sdk, {}, [], [], "the SageMaker Python SDK is not installed: pip install 'endovit[sagemaker]'"),
    # the config file
    ("no-config-file", None, None, ["--config_file", "missing.yaml"], [], "--config_file missing.yaml: no such file"),
    ("not-yaml", write("bad.yaml", "a: [\n"), None, ["--config_file", "bad.yaml"], [], "bad.yaml:2: not valid YAML"),
    ("not-a-mapping", write("list.yaml", "- a\n"), None, ["--config_file", "list.yaml"], [],
     "list.yaml must be a mapping of key: value"),
    ("local-config", None, {"compute_environment": "LOCAL_MACHINE"}, [], [], "not AMAZON_SAGEMAKER"),
    ("bad-value", None, {"distributed_type": "FOO"}, [], [], "'FOO' is not a valid"),
    ("unknown-key", None, {"num_gpus": 2}, [], [], "unknown key(s) num_gpus in a SageMaker config"),
    ("missing-key", None, {"iam_role_name": None}, [], [], "set iam_role_name"),
    ("model-parallel", None, {"distributed_type": "MODEL_PARALLEL"}, [], [], "MODEL_PARALLEL is not supported"),
    ("no-tsv", None, {"sagemaker_metrics_file": "missing.tsv"}, [], [], "sagemaker_metrics_file missing.tsv not found"),
    ("bad-tsv", write("m.tsv", "name\tregex\nloss\n"), {"sagemaker_metrics_file": "m.tsv"}, [], [],
     "m.tsv:2: expected two tab-separated columns, got 'loss'"),
    ("instance-type", None, {"ec2_instance_type": "ml.g5.2xlarg"}, [], [], "(did you mean ml.g5.2xlarge?)"),
    ("old-dlc", None, {"transformers_version": "4.26.0", "pytorch_version": "1.13.1", "py_version": "py39"}, [], [],
     "pytorch_version 1.13.1 / py_version py39 cannot run endovit"),
    ("no-such-dlc", None, {"pytorch_version": "2.6.0"}, [], [],
     "no SageMaker Hugging Face training image for transformers 4.56.2, pytorch 2.6.0, py312"),
    ("bad-s3-uri", None, {"additional_args": {"output_path": "s3://Bad_Bucket/x"}}, [], [],
     "additional_args output_path 's3://Bad_Bucket/x' is not an s3://bucket/prefix URI"),
    ("launcher-argument", None, {"additional_args": {"role": "x"}}, [], [],
     "additional_args role is set by the launcher"),
    ("estimator-arg-typo", None, {"additional_args": {"use_spot_instance": True}}, [], [],
     "'use_spot_instance' is not a SageMaker estimator argument (did you mean use_spot_instances?)"),
    ("spot-max-wait", None, {"additional_args": dict(SPOT, max_wait=1800)}, [], [],
     "use_spot_instances needs additional_args max_wait >= max_run"),
    ("spot-without-checkpoints", None, {"additional_args": {"use_spot_instances": True, "max_wait": 90000}}, [], [],
     "without checkpoint_s3_uri"),
    ("isolated-without-image", None, {"additional_args": {"enable_network_isolation": True}}, [], [],
     "enable_network_isolation: the job could not pip-install endovit's requirements.txt"),
    ("tensorboard-without-uri", None, {"additional_args": {"tensorboard_output_config": {}}}, [], [],
     "tensorboard_output_config needs s3_output_path"),
    ("resume-without-checkpoint-uri", None, {"additional_args": {}}, ["--resume_from_job", "old-job"], [],
     "--resume_from_job old-job: set additional_args checkpoint_s3_uri"),
    ("resume-bad-name", None, {}, ["--resume_from_job", "old_job"], [],
     "--resume_from_job 'old_job' is not a valid SageMaker job name"),
    # AWS settings
    ("no-profile", None, {"profile": "nobody"}, [], [], "AWS profile 'nobody' not found"),
    ("no-region", no_region, {"region": None}, [], [], "no AWS region"),
    ("region-typo", None, {"region": "us-east-9"}, [], [], "region 'us-east-9' has no SageMaker (did you mean"),
    ("no-credentials", no_credentials, {}, [], [], "no AWS credentials found"),
    # the script and its flags
    ("not-a-script", write("train.sh", "echo\n"), {}, [], ["@train.sh"], "training script train.sh: not a Python file"),
    ("not-a-flag", None, {}, [], ["8"], "script argument '8' is not a --key"),
    ("bare-flag", None, {}, [], ["--swa"], "--swa has no value"),
    ("flag-twice", None, {}, [], ["--epochs", "2", "--epochs", "3"], "--epochs is given twice"),
    ("job-folder-flag", None, {}, [], ["--output_dir", "outputs/x"], "--output_dir: a SageMaker job sets it"),
    ("resume-flag", None, {}, [], ["--resume", "none"], "--resume none: a SageMaker job resumes from its own"),
    ("recipe-file", None, {}, [], ["--recipe", "my.yaml"], "--recipe my.yaml: only the recipes in endovit/recipes"),
    ("no-training-data", None, {"sagemaker_inputs_file": None}, [], [], "no training data: pass --train_data"),
    ("no-such-channel-source", None, {}, [], ["--val_data", "missing"],
     "channel validation: missing is neither an s3:// URI nor an existing local folder"),
    ("unknown-flag", None, {}, [], ["--batch_sise", "8"], "no flag --batch_sise (did you mean --batch_size?)"),
    ("bad-type", None, {}, [], ["--epochs", "many"], "cannot read 'many' as int"),
    ("recipe-rule", None, {}, [], ["--mask_ratio", "1.5"], "--mask_ratio 1.5: must be strictly between 0 and 1"),
    ("secret-url", None, {}, [], ["--init_from", "https://h/w.pth?token=x"], "the URL carries credentials"),
    ("isolated-url-weights", None, {"image_uri": ISOLATED_IMAGE, "additional_args": {"enable_network_isolation": True}},
     [], ["--init_from", "https://h/w.pth"], "a job with enable_network_isolation cannot download it"),
    ("s3-weights-prefix", None, {}, [], ["--init_from", f"s3://{BUCKET}/weights/"],
     "give the weights file's s3:// URI, not a prefix"),
    ("missing-weights", None, {}, [], ["--init_from", "weights/missing.pth"],
     "--init_from weights/missing.pth: no such file"),
    ("no-constraints", no_constraints, {}, [], [], "constraints.txt not found: launch from a source checkout"),
]


@pytest.mark.parametrize("prepare, changes, launcher_args, script_args, message",
                         [pytest.param(*case[1:], id=case[0]) for case in CASES])
def test_launch_refuses_bad_setups_with_one_clear_line_and_sends_nothing(
        offline_aws, sent, launcher, tmp_path, monkeypatch, capsys, prepare, changes, launcher_args, script_args,
        message):
    monkeypatch.chdir(tmp_path)
    if prepare:
        prepare(monkeypatch, tmp_path)
    config = ["--config_file", str(write_config(tmp_path, "sagemaker.yaml", **changes))] if changes is not None else []
    script = script_args[0][1:] if script_args[:1] and script_args[0].startswith("@") else "scripts/pretrain.py"
    if script != "scripts/pretrain.py":
        script_args = script_args[1:]
    elif "--recipe" not in script_args:
        script_args = ["--recipe", "demo", *script_args]
    if script == "scripts/pretrain.py":
        (tmp_path / "scripts").mkdir(exist_ok=True)
        (tmp_path / "scripts" / "pretrain.py").write_text("")
    rc = launcher([*config, *launcher_args, script, *script_args])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert sent == []
