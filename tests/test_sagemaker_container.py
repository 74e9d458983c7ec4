"""A SageMaker job in a replica of its container (tests/helpers/replica.py), started from the launcher's own request
against a moto S3/SageMaker server, run by the real toolkits: a plain run, ``docker stop`` at a random step with one
process and with two under the toolkit's torchrun, a spot-style restart that must end bit-identical to the plain run,
and a refused run whose one-line error must reach FailureReason."""
from __future__ import annotations

import concurrent.futures
import os
import random
import re
import signal
import tarfile
from pathlib import Path

import botocore.session
import torch
from helpers.replica import STOP_GRACE_SECONDS, Container
from helpers.sagemaker import write_config
from helpers.scripts import REPO
from safetensors.torch import load_file

from endovit.checkpoint import CHECKPOINT_MANIFEST, CHECKPOINT_PREFIX
from endovit.data.synthetic import write_sample_frames
from endovit.sagemaker.entry import ENTRY_DIR_ENV, container_entry, registered, stopping
from endovit.sagemaker.launch import plan_job, submit

# 40 tiny steps of 4 frames (10 per epoch), a step line each; checkpoints only when stopped and at the end
STEPS = 40
FLAGS = ["--recipe", "demo", "--model", "mae_vit_tiny_patch16", "--img_size", "32", "--batch_size", "4",
         "--epochs", "4", "--warmup_epochs", "0.5", "--num_workers", "0", "--val_every_steps", "1000",
         "--log_every_steps", "1", "--save_every_steps", "1000", "--num_recon_images", "0"]
STEP_LINE = re.compile(r"^step=(\d+) ")


def launched_request(tmp_path: Path, config: str, *, train_frames: int = 40, **changes: str) -> dict:
    """Upload local frames and create the job through the launcher (on moto) with FLAGS, ``changes`` replacing some;
    returns its CreateTrainingJob request."""
    flags = list(FLAGS)
    for key, value in changes.items():
        flags[flags.index(f"--{key}") + 1] = value
    data = tmp_path / "data"
    write_sample_frames(data / "train", videos=2, frames=train_frames // 2, height=40, width=48)
    write_sample_frames(data / "val", videos=1, frames=4, height=40, width=48, first_video=7)
    # fp32 (bf16 autocast is slow on these CPUs); the channels are local folders the launcher uploads
    config_file = write_config(tmp_path, config, mixed_precision="no", sagemaker_inputs_file=None)
    plan = plan_job(config_file, REPO / "scripts" / "pretrain.py",
                    [*flags, "--train_data", str(data / "train" / "frames"), "--val_data",
                     str(data / "val" / "frames")], job_name=f"replica-{random.randrange(10**6)}")
    return submit(plan).request


def last_step_logged(container: Container) -> int:
    return max(int(m.group(1)) for line in container.lines if (m := STEP_LINE.match(line)))


def model_archive_names(ml: Path, tmp_path: Path) -> set[str]:
    """What SageMaker uploads as model.tar.gz: the model folder as the container left it."""
    archive = tmp_path / "model.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(ml / "model", arcname=".")
    with tarfile.open(archive) as tar:
        return {Path(name).as_posix().removeprefix("./") for name in tar.getnames()} - {"."}


def complete_checkpoints(ml: Path) -> list[int]:
    manifests = (ml / "checkpoints").glob(f"{CHECKPOINT_PREFIX}*/{CHECKPOINT_MANIFEST}")
    return sorted(int(p.parent.name.removeprefix(CHECKPOINT_PREFIX)) for p in manifests)


def test_the_entry_point_fits_what_create_training_job_accepts():
    shapes = botocore.session.get_session().get_service_model("sagemaker").shape_for("AlgorithmSpecification")
    entry = container_entry()
    for key, field in (("container_entry_point", "ContainerEntrypoint"), ("container_arguments", "ContainerArguments")):
        limit = shapes.members[field].member.metadata["max"]
        assert all(0 < len(item) <= limit for item in entry[key]), (field, limit)
    assert container_entry(["my-start.sh", "train"])["container_arguments"] == ["my-start.sh", "train"]


def test_a_trainer_that_starts_after_the_stop_stops_at_once_and_one_before_is_registered(tmp_path):
    environ = {ENTRY_DIR_ENV: str(tmp_path)}
    asked = []
    with registered(asked.append, environ):
        assert (tmp_path / "trainers" / str(os.getpid())).exists() and asked == []
    assert not (tmp_path / "trainers" / str(os.getpid())).exists()
    (tmp_path / "stop").touch()
    with registered(asked.append, environ):
        assert asked == [signal.SIGTERM] and stopping(environ)
    with registered(asked.append, {}):  # outside such a container: nothing
        assert not stopping({})


def test_a_stop_saves_the_step_reached_and_the_export_and_a_spot_restart_ends_as_an_unbroken_run(moto_aws, moto_server,
                                                                                                   tmp_path):
    request = launched_request(tmp_path, "sagemaker.yaml")
    assert request["AlgorithmSpecification"]["ContainerEntrypoint"][0] == "bash"

    plain = Container(request, tmp_path / "plain", endpoint=moto_server)
    assert plain.wait() == 0, plain.output[-4000:]
    assert f"done at step {STEPS}/{STEPS}" in plain.output
    assert "Installing dependencies from requirements.txt" in plain.output  # the toolkit's own steps still run
    assert (plain.ml / "output" / "success").exists() and not (plain.ml / "output" / "failure").exists()

    stopped = Container(request, tmp_path / "stopped", endpoint=moto_server)
    stop_after = random.randint(3, STEPS // 2)
    stopped.wait_for(lambda line: (m := STEP_LINE.match(line)) is not None and int(m.group(1)) >= stop_after)
    killed = stopped.docker_stop()
    logged = last_step_logged(stopped)
    assert stopped.process.returncode == 0, stopped.output[-4000:]
    assert not killed, f"the container was still running {STOP_GRACE_SECONDS} s after SIGTERM"
    reached = complete_checkpoints(stopped.ml)
    assert reached and reached[-1] >= logged and reached[-1] < STEPS, (reached, logged, stopped.output[-3000:])
    assert f"interrupted at step {reached[-1]}/{STEPS}" in stopped.output
    names = model_archive_names(stopped.ml, tmp_path)
    assert {"model.safetensors", "encoder.safetensors", "config.yaml"} <= names, names
    assert not any("lock" in name for name in names), names
    assert not (stopped.ml / "output" / "failure").exists(), (stopped.ml / "output" / "failure").read_text()

    # a spot restart: a new instance, /opt/ml/model empty, /opt/ml/checkpoints restored from S3
    restarted = Container(request, tmp_path / "restarted", endpoint=moto_server,
                          checkpoints=stopped.ml / "checkpoints")
    assert restarted.wait() == 0, restarted.output[-4000:]
    assert f"resumed from /opt/ml/checkpoints/step_{reached[-1]:08d} at step {reached[-1]}" in restarted.output
    unbroken, resumed = (load_file(c.ml / "model" / "model.safetensors") for c in (plain, restarted))
    assert unbroken.keys() == resumed.keys()
    assert all(torch.equal(unbroken[k], resumed[k]) for k in unbroken)


def test_two_hosts_of_two_processes_under_the_toolkits_torchrun_all_stop_at_one_step_and_save(moto_aws, moto_server,
                                                                                               tmp_path):
    request = launched_request(tmp_path, "sagemaker_multi_gpu.yaml")  # 2 instances; a fake nvidia-smi lists 2 GPUs
    hosts = [Container(request, tmp_path / host, endpoint=moto_server, host=host, gpus=2)
             for host in ("algo-1", "algo-2")]
    for host in hosts:
        host.wait_for(lambda line: "torchrun --nnodes 2 --nproc_per_node 2" in line)
    stop_after = random.randint(3, STEPS // 2)
    hosts[0].wait_for(lambda line: (m := STEP_LINE.match(line)) is not None and int(m.group(1)) >= stop_after)
    with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:  # SageMaker stops every instance at once
        killed = list(pool.map(lambda host: host.docker_stop(), hosts))
    assert killed == [False, False], "a container was still running 120 s after SIGTERM"
    for host in hosts:
        assert host.process.returncode == 0, host.output[-4000:]
        assert host.output.count("SIGTERM: stopping after this step") == 2, host.output[-4000:]
        assert (host.ml / "output" / "success").exists()
    first = hosts[0]
    reached = complete_checkpoints(first.ml)
    assert reached and reached[-1] >= last_step_logged(first), (reached, first.output[-3000:])
    assert f"interrupted at step {reached[-1]}/{STEPS}" in first.output
    assert (first.ml / "model" / "model.safetensors").is_file()


def test_a_refused_run_puts_its_one_line_error_in_failure_reason(moto_aws, moto_server, tmp_path):
    request = launched_request(tmp_path, "sagemaker.yaml", train_frames=8, batch_size="64")
    container = Container(request, tmp_path / "c", endpoint=moto_server)
    assert container.wait() != 0
    failure = (container.ml / "output" / "failure").read_text()
    assert failure.startswith("error: --train_data /opt/ml/input/data/train has 8 frames, fewer than one batch of 64")
    assert "\n" not in failure.strip()
