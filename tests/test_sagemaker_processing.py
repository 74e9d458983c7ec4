"""A prepare at scale: scripts/launch_prepare.py's SageMaker Processing job (its request offline and against the moto
server), the job's instances simulated on this machine against moto S3, and the merge of their parts into one
prepared dataset that reads like a single machine's prepare."""
from __future__ import annotations

import io
import json
import os
import runpy
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from helpers.sagemaker import BUCKET, s3_upload, write_config
from helpers.scripts import REPO, rows_of

from endovit.data import DataError, PrepareSettings, load_frames, prepare_frames
from endovit.data.parts import merge_parts, prepare_part
from endovit.data.store import MANIFEST, load_prepared
from endovit.data.synthetic import write_sample_frames
from endovit.data.synthetic_video import write_sample_videos

PYTORCH_CPU_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-cpu-py312"
SETTINGS = ["--fps", "1", "--short_side", "32", "--shard_size", "2"]


@pytest.fixture(autouse=True)
def fresh_s3_filesystems():
    """fsspec keeps one S3 filesystem per set of options, with the endpoint it found when it made it: each test (and
    the next module, with a moto server of its own) starts without one."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture(scope="module")
def launch_prepare():
    return runpy.run_path(str(REPO / "scripts" / "launch_prepare.py"), run_name="launch_prepare")["main"]


@pytest.fixture(scope="module")
def hospital(tmp_path_factory) -> Path:
    """Three 3 s videos (48x64) in Cholec80's release layout, annotations beside them: a 'hospital' of video."""
    root = tmp_path_factory.mktemp("raw") / "Hospital"
    write_sample_videos(root, videos=3, seconds=3, height=48, width=64, seed=5)
    return root


def columns(frames) -> dict[tuple[str, int], tuple]:
    """(video, frame_index) -> every other stored column, for comparing datasets whose row order differs."""
    table = frames.select_columns(["video", "frame_index", "source", "time", "orig_height", "orig_width", "image"])
    return {(r["video"], r["frame_index"]): (r["source"], r["time"], r["orig_height"], r["orig_width"],
                                             r["image"]["path"]) for r in table}


def one_error_line(capsys) -> str:
    """The one ``error:`` line on stderr, after any notes (nothing on stdout)."""
    out, err = capsys.readouterr()
    errors = [line for line in err.splitlines() if line.startswith("error")]
    assert out == "" and len(errors) == 1 and err.strip().splitlines()[-1] == errors[0], (out, err)
    return errors[0]


# ------------------------------------------------------------------------------------------------ the request


def test_dry_run_prints_the_processing_request_offline(moto_aws, sent, launch_prepare, tmp_path, capsys):
    config = write_config(tmp_path, "sagemaker.yaml")
    rc = launch_prepare(["--config_file", str(config), "--input", f"s3://{BUCKET}/Hospital/videos",
                         "--out", f"s3://{BUCKET}/prepared/Hospital", "--instance_count", "3", "--instance_type",
                         "ml.c5.4xlarge", "--job_name", "prep-dry-1", "--dry_run", *SETTINGS])
    out, err = capsys.readouterr()
    assert rc == 0, err
    request = json.loads(out)
    assert request["ProcessingResources"]["ClusterConfig"] == {"InstanceCount": 3, "InstanceType": "ml.c5.4xlarge",
                                                               "VolumeSizeInGB": 30}
    inputs = {i["InputName"]: i["S3Input"] for i in request["ProcessingInputs"]}
    assert inputs["input"]["S3Uri"] == f"s3://{BUCKET}/Hospital/videos/"  # a folder: not Hospital/videos2/...
    assert inputs["input"]["S3DataDistributionType"] == "ShardedByS3Key"
    assert inputs["code"]["S3DataDistributionType"] == "FullyReplicated"
    assert request["ProcessingOutputConfig"]["Outputs"] == [{
        "AppManaged": False, "OutputName": "parts", "S3Output": {
            "LocalPath": "/opt/ml/processing/output/parts", "S3UploadMode": "EndOfJob",
            "S3Uri": f"s3://{BUCKET}/prepared/Hospital/parts/prep-dry-1"}}]
    app = request["AppSpecification"]
    assert app["ImageUri"] == PYTORCH_CPU_IMAGE
    assert app["ContainerEntrypoint"] == ["/bin/bash", "/opt/ml/processing/input/entrypoint/runproc.sh"]
    assert app["ContainerArguments"][:6] == ["--input", "/opt/ml/processing/input/data", "--out",
                                             "/opt/ml/processing/output/parts", "--instance_part", "true"]
    flags = dict(zip(app["ContainerArguments"][6::2], app["ContainerArguments"][7::2], strict=True))
    assert flags == {"--source": "Hospital", "--short_side": "32", "--image_format": "jpeg", "--quality": "95",
                     "--shard_size": "2", "--on_error": "skip", "--fps": "1.0"}
    assert request["RoleArn"] == "arn:aws:iam::111122223333:role/endovit-sagemaker"
    assert "configure training jobs; the Processing job does not use them" in err
    assert "dry run: nothing uploaded" in err
    assert {operation for _, operation, _ in sent} == {"PutObject", "CreateProcessingJob"}  # both answered offline
    s3 = moto_aws.client("s3")
    assert s3.list_objects_v2(Bucket=BUCKET).get("KeyCount") == 0
    assert moto_aws.client("sagemaker").list_processing_jobs()["ProcessingJobSummaries"] == []


@pytest.mark.parametrize("flags, message", [
    (["--input", "data/videos"], "error: --input data/videos: a Processing job reads and writes S3; give the "
     "s3://bucket/prefix of the videos or frames to prepare (upload a local folder first: aws s3 sync data/videos "
     "s3://BUCKET/PREFIX/)"),
    (["--out", "/data/prepared"], "error: --out /data/prepared: a Processing job reads and writes S3; give the "
     "s3://bucket/prefix of the prepared dataset (a new prefix)"),
    (["--instance_count", "0"], "error: --instance_count 0: give 1 or more instances"),
    (["--out", f"s3://{BUCKET}/videos/prepared"], f"error: --out s3://{BUCKET}/videos/prepared lies inside --input "
     f"s3://{BUCKET}/videos/: the dataset would become input of the next run; choose an --out outside it"),
    (["--instance_type", "ml.c5.4xlarg"], "error: --instance_type 'ml.c5.4xlarg' is not a SageMaker processing "
     "instance type (did you mean ml.c5.4xlarge?)"),
    (["--fps", "-1"], "error: --fps -1.0: must be 0 (every frame) or a positive number of frames per second"),
    (["--job_name", "prep_1"], "error: --job_name 'prep_1' is not a valid SageMaker job name"),
    (["--job_name", "prep-1", "--resume_from_job", "prep-1"], "error: --resume_from_job prep-1: the new job needs a "
     "name of its own (--job_name)"),
], ids=["local-input", "local-out", "no-instances", "out-in-input", "instance-type", "fps", "job-name", "resume-self"])
def test_bad_flags_are_one_error_line_and_nothing_is_sent(offline_aws, sent, launch_prepare, tmp_path, capsys,
                                                          flags, message):
    config = write_config(tmp_path, "sagemaker.yaml")
    given = {"--input": f"s3://{BUCKET}/videos", "--out": f"s3://{BUCKET}/prepared/H"}
    given.update(dict(zip(flags[::2], flags[1::2], strict=True)))
    rc = launch_prepare(["--config_file", str(config), *[t for kv in given.items() for t in kv]])
    assert rc == 2
    assert one_error_line(capsys).startswith(message)
    assert sent == []


def test_a_submit_refuses_an_out_that_holds_something(moto_aws, launch_prepare, tmp_path, capsys):
    s3 = moto_aws.client("s3")
    s3.put_object(Bucket=BUCKET, Key="videos/video01.mp4", Body=b"video")
    s3.put_object(Bucket=BUCKET, Key="prepared/H/endovit_dataset.json", Body=b"{}")
    config = write_config(tmp_path, "sagemaker.yaml")
    rc = launch_prepare(["--config_file", str(config), "--input", f"s3://{BUCKET}/videos",
                         "--out", f"s3://{BUCKET}/prepared/H", "--instance_type", "ml.c5.xlarge"])
    assert rc == 2
    assert one_error_line(capsys) == (
        f"error: --out s3://{BUCKET}/prepared/H is not empty (it holds prepared/H/endovit_dataset.json); a "
        "Processing job writes a new prepared dataset: choose a new --out, continue a failed job there with "
        "--resume_from_job, or merge what is there with --merge")
    assert moto_aws.client("sagemaker").list_processing_jobs()["ProcessingJobSummaries"] == []


# ------------------------------------------------------------------------------------------------ a run against moto


def download(s3, uri: str, folder: Path) -> None:
    """What SageMaker does with an S3Uri that names one object: it lands in ``folder`` under its own name."""
    folder.mkdir(parents=True, exist_ok=True)
    key = uri.split(f"s3://{BUCKET}/", 1)[1]
    s3.download_file(BUCKET, key, str(folder / key.rsplit("/", 1)[-1]))


def run_instance(s3, job: dict, keys: list[str], prefix: str, host: str, hosts: list[str], ml: Path) -> Path:
    """One instance of ``job`` on this machine: its share of the input downloaded as SageMaker does, its other
    inputs (the shipped code, a resume record) too, prepare_data.py run with the job's own arguments; its output
    folder, for upload."""
    for key in keys:
        target = ml / "processing" / "input" / "data" / key[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(BUCKET, key, str(target))
    for given in job["ProcessingInputs"]:
        if given["InputName"] in ("code", "resume"):
            download(s3, given["S3Input"]["S3Uri"], Path(given["S3Input"]["LocalPath"].replace("/opt/ml", str(ml))))
    (ml / "config").mkdir(parents=True)
    (ml / "config" / "resourceconfig.json").write_text(json.dumps({"current_host": host, "hosts": hosts}))
    code = ml / "processing" / "input" / "code"
    with tarfile.open(code / "sourcedir.tar.gz") as tar:
        tar.extractall(code, filter="data")
    arguments = [a.replace("/opt/ml", str(ml)) for a in job["AppSpecification"]["ContainerArguments"]]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}  # the instance reads no S3 itself
    env.update(PYTHONPATH=str(code), SAGEMAKER_BASE_DIR=str(ml), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "prepare_data.py", *arguments, "--num_proc", "1"], cwd=code, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    return ml / "processing" / "output" / "parts"


def test_a_job_against_moto_prepares_like_one_machine(moto_aws, sent, launch_prepare, hospital, tmp_path, capsys,
                                                      monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    s3 = moto_aws.client("s3")
    s3_upload(s3, hospital, f"s3://{BUCKET}/Hospital")
    out = f"s3://{BUCKET}/prepared/Hospital"
    config = write_config(tmp_path, "sagemaker.yaml")
    rc = launch_prepare(["--config_file", str(config), "--input", f"s3://{BUCKET}/Hospital/", "--out", out,
                         "--instance_count", "2", "--instance_type", "ml.c5.xlarge", "--job_name", "prep-moto-1",
                         *SETTINGS])
    stdout, err = capsys.readouterr()
    assert rc == 0, err
    assert "processing job prep-moto-1 started" in stdout and f"--merge --out {out}" in stdout
    [request] = [params for _, operation, params in sent if operation == "CreateProcessingJob"]
    assert request["ProcessingResources"]["ClusterConfig"]["InstanceCount"] == 2
    assert request["Environment"] == {"PYTHONUNBUFFERED": "1"}
    job = moto_aws.client("sagemaker").describe_processing_job(ProcessingJobName="prep-moto-1")  # what moto keeps
    assert job["ProcessingJobStatus"] == "Completed"
    assert job["AppSpecification"] == request["AppSpecification"]
    assert job["AppSpecification"]["ImageUri"] == PYTORCH_CPU_IMAGE
    assert job["RoleArn"] == "arn:aws:iam::111122223333:role/endovit-sagemaker"
    [share] = [i["S3Input"] for i in job["ProcessingInputs"] if i["InputName"] == "input"]
    assert (share["S3Uri"], share["S3DataDistributionType"]) == (f"s3://{BUCKET}/Hospital/", "ShardedByS3Key")
    [output] = job["ProcessingOutputConfig"]["Outputs"]
    assert output["S3Output"]["S3Uri"] == f"{out}/parts/prep-moto-1"
    source = next(i["S3Input"]["S3Uri"] for i in job["ProcessingInputs"] if i["InputName"] == "code")
    body = s3.get_object(Bucket=BUCKET, Key=source.split(f"s3://{BUCKET}/", 1)[1])["Body"].read()
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        names, requirements = set(tar.getnames()), tar.extractfile("requirements.txt").read().decode()
    assert {"prepare_data.py", "endovit/data/parts.py", "endovit/data/video.py", "requirements.txt"} <= names
    pins = dict(line.split("==") for line in requirements.splitlines() if not line.startswith("#"))
    tested = dict(line.lower().split("==") for line in (REPO / "constraints.txt").read_text().splitlines()
                  if "==" in line)
    assert pins["av"] == tested["av"] and pins["datasets"] == tested["datasets"]  # PyAV decodes the videos there

    # ShardedByS3Key: SageMaker documents disjoint shares of about 1/N of the objects each, not which ones; here the
    # sorted keys are dealt out in turn (the merge depends on no particular assignment)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="Hospital/")["Contents"])
    hosts = ["algo-1", "algo-2"]
    for i, host in enumerate(hosts):
        parts = run_instance(s3, job, keys[i::2], "Hospital/", host, hosts, tmp_path / host / "ml")
        s3_upload(s3, parts, f"{out}/parts/prep-moto-1")  # EndOfJob: the instance's folder, once its code has ended

    assert launch_prepare(["--merge", "--out", out]) == 0
    assert "9 frames of Hospital in 6 shards from 2 parts of job prep-moto-1; endovit_dataset.json written" in \
        capsys.readouterr().out
    written = s3.head_object(Bucket=BUCKET, Key="prepared/Hospital/endovit_dataset.json")["LastModified"]
    assert launch_prepare(["--merge", "--out", out]) == 0
    assert "already merged, nothing written" in capsys.readouterr().out
    assert s3.head_object(Bucket=BUCKET, Key="prepared/Hospital/endovit_dataset.json")["LastModified"] == written

    local = prepare_frames(hospital, tmp_path / "one-machine", PrepareSettings(fps=1, short_side=32, shard_size=2),
                           progress=False)
    single = load_frames(local.path)
    merged = load_frames(out, cache_dir=tmp_path / "cache")  # what pretrain.py --train_data s3://... reads
    # rows come part by part (algo-1's videos first), so compare them keyed by (video, frame_index)
    assert len(merged) == len(single) == 9
    assert rows_of(merged) == rows_of(single)
    assert columns(merged) == columns(single)
    dataset, manifest = load_prepared(out, cache_dir=tmp_path / "cache")
    assert [p["part"] for p in manifest["parts"]] == ["prep-moto-1/algo-1", "prep-moto-1/algo-2"]
    assert manifest["videos"] == local.manifest["videos"] and manifest["video_count"] == 3
    assert manifest["settings"] == local.manifest["settings"]


def test_wait_merges_at_the_end_and_refuses_a_job_that_wrote_no_parts(moto_aws, sent, launch_prepare, tmp_path,
                                                                       capsys, monkeypatch):
    import sagemaker.session

    # moto's DescribeProcessingJob leaves out ProcessingResources, which the SDK's log streaming reads: wait without
    monkeypatch.setattr(sagemaker.session.Session, "logs_for_processing_job",
                        lambda session, job_name, wait=False, poll=10: session.wait_for_processing_job(job_name))
    moto_aws.client("s3").put_object(Bucket=BUCKET, Key="videos/video01.mp4", Body=b"video")
    config = write_config(tmp_path, "sagemaker.yaml")
    rc = launch_prepare(["--config_file", str(config), "--input", f"s3://{BUCKET}/videos", "--out",
                         f"s3://{BUCKET}/prepared/H", "--instance_type", "ml.c5.xlarge", "--job_name", "prep-empty-1",
                         "--wait"])  # moto completes a job at once, without running it: no parts
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (  # stdout: the SDK's progress while it waits
        f"error: s3://{BUCKET}/prepared/H: no parts of job prep-empty-1 under s3://{BUCKET}/prepared/H/parts/"
        "prep-empty-1/: the job wrote no output (see its log: aws sagemaker describe-processing-job), or wrote it "
        "elsewhere")
    operations = [operation for _, operation, _ in sent]
    assert operations.index("DescribeProcessingJob") > operations.index("CreateProcessingJob")  # it waited


def test_a_failed_job_is_continued_by_a_new_one_that_keeps_its_complete_parts(moto_aws, launch_prepare, hospital,
                                                                             tmp_path, capsys, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    s3 = moto_aws.client("s3")
    s3_upload(s3, hospital, f"s3://{BUCKET}/Hospital")
    out, sagemaker = f"s3://{BUCKET}/prepared/Hospital", moto_aws.client("sagemaker")
    config = write_config(tmp_path, "sagemaker.yaml")
    common = ["--config_file", str(config), "--input", f"s3://{BUCKET}/Hospital/", "--out", out, "--instance_type",
              "ml.c5.xlarge", *SETTINGS]
    assert launch_prepare([*common, "--instance_count", "2", "--job_name", "prep-a"]) == 0
    job = sagemaker.describe_processing_job(ProcessingJobName="prep-a")
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="Hospital/")["Contents"])
    for i, host in enumerate(["algo-1", "algo-2"]):
        parts = run_instance(s3, job, keys[i::2], "Hospital/", host, ["algo-1", "algo-2"], tmp_path / "a" / host)
        if host == "algo-2":  # stopped mid-way: its plan and some shards, no manifest
            (parts / host / MANIFEST).unlink()
        s3_upload(s3, parts, f"{out}/parts/prep-a")
    capsys.readouterr()
    assert launch_prepare(["--merge", "--out", out]) == 2
    assert "part prep-a/algo-2 is incomplete (parts/prep-a/algo-2 has a plan but no manifest)" in one_error_line(capsys)

    assert launch_prepare([*common, "--instance_count", "1", "--job_name", "prep-b", "--resume_from_job",
                           "prep-a"]) == 0
    assert "continuing job prep-a: 1 complete part(s) kept, their 2 file(s) left out" in capsys.readouterr().err
    job = sagemaker.describe_processing_job(ProcessingJobName="prep-b")
    assert job["AppSpecification"]["ContainerArguments"][-2:] == ["--resume_record",
                                                                  "/opt/ml/processing/input/resume/prep-b.json"]
    parts = run_instance(s3, job, keys, "Hospital/", "algo-1", ["algo-1"], tmp_path / "b")  # the whole input
    s3_upload(s3, parts, f"{out}/parts/prep-b")
    kept = json.loads((tmp_path / "a" / "algo-1" / "processing" / "output" / "parts" / "algo-1.json").read_text())
    redone = json.loads((parts / "algo-1.json").read_text())
    assert kept["inputs"] == ["videos/video01.mp4", "videos/video03.mp4"]
    assert redone["inputs"] == ["videos/video02.mp4"]  # only the stopped part's video is prepared again

    assert launch_prepare(["--merge", "--out", out]) == 0  # prep-b continues prep-a: one dataset, no --job_name
    assert "from 2 parts of job prep-b, 1 of them from the jobs it continues" in capsys.readouterr().out
    single = prepare_frames(hospital, tmp_path / "one-machine", PrepareSettings(fps=1, short_side=32, shard_size=2),
                            progress=False)
    merged, one = load_frames(out, cache_dir=tmp_path / "cache"), load_frames(single.path)
    assert len(merged) == len(one) == 9 and columns(merged) == columns(one) and rows_of(merged) == rows_of(one)


# ------------------------------------------------------------------------------------------------ the merge


def test_the_merge_refuses_missing_incomplete_and_changed_parts(tmp_path):
    write_sample_frames(tmp_path / "raw", videos=2, frames=4, height=32, width=40)
    frames = tmp_path / "raw" / "frames"
    shares = {}
    for host, video in (("algo-1", "video01"), ("algo-2", "video02")):  # each share keeps the input's layout
        shares[host] = tmp_path / f"share-{host}"
        shutil.copytree(frames / video, shares[host] / video)
    settings = PrepareSettings(source="Cholec80", short_side=0, image_format="png", shard_size=3)
    out, parts = tmp_path / "out", tmp_path / "out" / "parts" / "job-1"

    def prepare(host):
        prepare_part(shares[host], parts, settings, host=host, hosts=list(shares), progress=False, log=lambda _: None)

    prepare("algo-1")
    with pytest.raises(DataError, match=r"part job-1/algo-2 is missing \(parts/job-1/algo-2.json\): that instance did "
                                        r"not finish .*; continue the job with scripts/launch_prepare.py "
                                        r"--resume_from_job job-1 \(it keeps the complete parts\)$"):
        merge_parts(out)
    prepare("algo-2")
    (parts / "algo-2" / MANIFEST).rename(tmp_path / "saved")
    with pytest.raises(DataError, match=r"part job-1/algo-2 is incomplete \(parts/job-1/algo-2 has a plan but no "
                                        r"manifest\): that instance stopped before it finished"):
        merge_parts(out)
    (tmp_path / "saved").rename(parts / "algo-2" / MANIFEST)
    shard = parts / "algo-2" / "shards" / "shard-00000.arrow"
    data = shard.read_bytes()
    shard.write_bytes(data[:-10])
    with pytest.raises(DataError, match=rf"shard shard-00000 of part job-1/algo-2 is {len(data) - 10} bytes, its "
                                        rf"part says {len(data)}"):
        merge_parts(out)
    shard.write_bytes(data)

    lines = []
    merged = merge_parts(out, log=lines.append)
    assert merge_parts(out, log=lines.append) == merged
    assert lines[1].endswith("from 2 parts of job job-1; already merged, nothing written")
    whole = prepare_frames(frames, tmp_path / "whole", settings, progress=False)
    assert rows_of(load_prepared(out)[0]) == rows_of(load_prepared(whole.path)[0])  # 8 frames, 4 shards
    assert merged["frames"] == 8 and merged["videos"] == whole.manifest["videos"]

    manifest = json.loads((out / MANIFEST).read_text())
    manifest["shards"][0]["part"] = "../../elsewhere"
    (out / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"names a part '../../elsewhere', not one a merge writes"):
        load_prepared(out)

    (out / "parts" / "job-2").mkdir()
    (out / "parts" / "job-2" / "algo-1.json").write_text(json.dumps({"host": "algo-1", "hosts": ["algo-1"]}))
    with pytest.raises(DataError, match=r"parts of several jobs \(job-1, job-2\)"):
        merge_parts(out)

    # job-2 continues job-1 but prepared a kept file again (say, from another --input): refused, not counted twice
    (out / "resume").mkdir()
    (out / "resume" / "job-2.json").write_text(json.dumps({"job": "job-1", "continues": ["job-1/algo-1"]}))
    prepare_part(shares["algo-1"], out / "parts" / "job-2", settings, host="algo-1", hosts=["algo-1"], progress=False,
                 log=lambda _: None)
    with pytest.raises(DataError, match=r"video01/video01_000000.png was prepared by two parts \(job-1/algo-1 and "
                                        r"job-2/algo-1\)"):
        merge_parts(out)


def test_the_merge_refuses_two_instances_videos_of_one_name(tmp_path):
    # each instance sees only its share, so two files named case1.mp4 in different folders meet only in the merge
    settings = PrepareSettings(source="Hospital", short_side=32, shard_size=3)
    parts = tmp_path / "out" / "parts" / "job-1"
    for host, year in (("algo-1", "2023"), ("algo-2", "2024")):
        videos = write_sample_videos(tmp_path / "tmp", videos=1, seconds=1, height=32, width=48, first_video=1)
        (tmp_path / f"share-{host}" / year).mkdir(parents=True)
        videos[0].rename(tmp_path / f"share-{host}" / year / "case1.mp4")
        prepare_part(tmp_path / f"share-{host}", parts, settings, host=host, hosts=["algo-1", "algo-2"],
                     progress=False, log=lambda _: None)
    with pytest.raises(DataError, match=r"2023/case1.mp4 and 2024/case1.mp4 would both be video 'case1' .*: rename "
                                        r"one, or prepare their folders as separate datasets$"):
        merge_parts(tmp_path / "out")
    assert not (tmp_path / "out" / MANIFEST).exists()


def test_an_instance_part_outside_a_processing_job_is_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SAGEMAKER_BASE_DIR", str(tmp_path / "ml"))
    main = runpy.run_path(str(REPO / "scripts" / "prepare_data.py"), run_name="prepare_data")["main"]
    assert main(["--input", str(tmp_path), "--out", str(tmp_path / "out"), "--instance_part", "true"]) == 2
    assert one_error_line(capsys).startswith("error: --instance_part true: runs only inside a SageMaker Processing "
                                             "job (no /opt/ml/config/resourceconfig.json here)")
    assert not (tmp_path / "out").exists()
