"""--resume_from_job: a new job continues an earlier job's checkpoints, through a moto S3/SageMaker server and
simulated jobs (SageMaker syncs /opt/ml/checkpoints with the job's checkpoint_s3_uri)."""
from __future__ import annotations

import runpy
from pathlib import Path

import pytest
from helpers.sagemaker import (
    BUCKET,
    REPO,
    TINY,
    job_folders,
    run_job,
    s3_download,
    s3_upload,
    toolkit_argv,
    write_config,
)

CHECKPOINTS = f"s3://{BUCKET}/endovit/checkpoints"


def launch(config: Path, *launcher_args: str) -> int:
    main = runpy.run_path(str(REPO / "scripts" / "launch_sagemaker.py"), run_name="launch_sagemaker")["main"]
    return main(["--config_file", str(config), *launcher_args, str(REPO / "scripts" / "pretrain.py"), *TINY,
                 "--train_data", f"s3://{BUCKET}/data/train", "--val_data", f"s3://{BUCKET}/data/val"])


def test_new_job_continues_the_checkpoints_of_a_job_that_stopped(moto_aws, tmp_path, capsys):
    s3, sagemaker = moto_aws.client("s3"), moto_aws.client("sagemaker")
    config = write_config(tmp_path, "sagemaker.yaml")
    assert launch(config, "--job_name", "first-job") == 0, capsys.readouterr().err
    first = sagemaker.describe_training_job(TrainingJobName="first-job")
    assert first["CheckpointConfig"]["S3Uri"] == f"{CHECKPOINTS}/first-job"
    ml = tmp_path / "first" / "opt" / "ml"
    code, env = job_folders(ml)
    stopped = run_job(code, env, toolkit_argv(first["HyperParameters"]) + ["--stop_at_step", "2"])  # e.g. max_run
    assert "done at step 2/4" in stopped.stdout
    s3_upload(s3, ml / "checkpoints", first["CheckpointConfig"]["S3Uri"])

    assert launch(config, "--job_name", "second-job", "--resume_from_job", "first-job") == 0
    err = capsys.readouterr().err
    assert ("continuing job first-job: resumes from the newest complete checkpoint under "
            f"{CHECKPOINTS}/first-job/") in err
    second = sagemaker.describe_training_job(TrainingJobName="second-job")
    assert second["CheckpointConfig"] == {"S3Uri": f"{CHECKPOINTS}/first-job", "LocalPath": "/opt/ml/checkpoints"}
    ml = tmp_path / "second" / "opt" / "ml"
    code, env = job_folders(ml)
    s3_download(s3, second["CheckpointConfig"]["S3Uri"], ml / "checkpoints")
    resumed = run_job(code, env, toolkit_argv(second["HyperParameters"]))
    assert f"resumed from {ml / 'checkpoints' / 'step_00000002'} at step 2" in resumed.stdout
    assert "done at step 4/4" in resumed.stdout


@pytest.mark.parametrize("synced", [[], ["step_00000002/model.safetensors"]], ids=["nothing", "no-manifest"])
def test_continuing_a_job_without_a_complete_checkpoint_is_refused_before_upload(moto_aws, tmp_path, capsys, synced):
    s3 = moto_aws.client("s3")
    for key in synced:
        s3.put_object(Bucket=BUCKET, Key=f"endovit/checkpoints/old-job/{key}", Body=b"partial")
    config = write_config(tmp_path, "sagemaker.yaml")
    assert launch(config, "--job_name", "new-job", "--resume_from_job", "old-job") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: --resume_from_job old-job: no complete checkpoint under {CHECKPOINTS}/old-job/ (no "
        "step_NNNNNNNN/endovit_checkpoint.json); check the job name and the config's checkpoint_s3_uri (a job that "
        "itself continued another writes to that job's prefix)")
    assert moto_aws.client("sagemaker").list_training_jobs()["TrainingJobSummaries"] == []
    keys = [obj["Key"] for obj in s3.list_objects_v2(Bucket=BUCKET).get("Contents", [])]
    assert keys == [f"endovit/checkpoints/old-job/{key}" for key in synced]
