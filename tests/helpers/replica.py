"""A SageMaker training container, replicated on this machine from the launcher's own CreateTrainingJob request.

What a real job's container is, as far as a stop and the toolkits can tell: its own PID namespace (the image's
entry point is PID 1, so the kernel drops any signal it has no handler for) and mount namespace (its own
``/opt/ml`` laid out from the request, its own ``/etc/hosts`` naming the job's hosts, private folders for what the
entry point keeps in ``/tmp``), the real ``sagemaker-training`` and ``sagemaker-pytorch-training`` toolkits from
PyPI, the code tarball and the channels fetched from a moto S3, and the Deep Learning Containers' start script in
front of ``train``. ``docker stop`` is SIGTERM to PID 1, then SIGKILL after 120 s. Needs root (CI runs as root):
without namespaces there is no replica, and the tests using it fail rather than skip.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import boto3
from helpers.sagemaker import s3_download

# The DLCs' start script (pytorch/training/docker/build_artifacts/start_with_right_hostname.sh) without its
# hostname library: for `train` it runs the toolkit as a child of bash, which is what a stop has to get through.
START_SCRIPT = """#!/usr/bin/env bash
if [[ "$1" = "train" ]]; then
    train
else
    eval "$@"
fi
"""
DLC_ENTRYPOINT = ["bash", "-m", "start_with_right_hostname.sh"]  # the image's ENTRYPOINT; SageMaker adds `train`
PRIVATE_TMP = ("/tmp/endovit-entry", "/tmp/endovit-locks")  # the container's own /tmp, where endovit keeps state
STOP_GRACE_SECONDS = 120  # docker stop's wait between SIGTERM and SIGKILL on SageMaker


def _fake_nvidia_smi(gpus: int) -> str:
    """The toolkit counts `nvidia-smi --list-gpus` lines for torchrun's --nproc_per_node (the trainers still see no
    CUDA device and run on CPU with gloo)."""
    lines = "\n".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:08d})" for i in range(gpus))
    return f"#!/usr/bin/env bash\ncat <<'EOF'\n{lines}\nEOF\n"


class Container:
    """One instance of a training job: ``root`` holds what the container sees as ``/opt/ml`` (``root/ml``) and the
    files mounted into it; the output (stdout and stderr, as CloudWatch gets them) is collected line by line."""

    def __init__(self, request: dict, root: Path, *, endpoint: str, host: str = "algo-1", gpus: int = 0,
                 checkpoints: Path | None = None):
        self.request, self.root, self.host = request, root, host
        self.ml = root / "ml"
        self.lines: list[str] = []
        self._new_line = threading.Condition()
        self._lay_out(endpoint, gpus, checkpoints)
        self.process = self._start(endpoint)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # ---------------------------------------------------------------------------------------------- set-up
    def _lay_out(self, endpoint: str, gpus: int, checkpoints: Path | None) -> None:
        request, ml = self.request, self.ml
        hosts = [f"algo-{i + 1}" for i in range(request["ResourceConfig"]["InstanceCount"])]
        config = ml / "input" / "config"
        config.mkdir(parents=True)
        (config / "hyperparameters.json").write_text(json.dumps(request["HyperParameters"]))
        instance_type = request["ResourceConfig"]["InstanceType"]
        (config / "resourceconfig.json").write_text(json.dumps({
            "current_host": self.host, "hosts": hosts, "network_interface_name": "lo",
            "current_instance_type": instance_type, "current_group_name": "homogeneousCluster",
            "instance_groups": [{"instance_group_name": "homogeneousCluster", "instance_type": instance_type,
                                 "hosts": hosts}]}))
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        channels = {}
        for channel in request.get("InputDataConfig", []):
            name = channel["ChannelName"]
            channels[name] = {"TrainingInputMode": "File", "S3DistributionType": "FullyReplicated",
                              "RecordWrapperType": "None"}
            s3_download(s3, channel["DataSource"]["S3DataSource"]["S3Uri"], ml / "input" / "data" / name)
        (config / "inputdataconfig.json").write_text(json.dumps(channels))
        for folder in ("model", "output/data", "code"):
            (ml / folder).mkdir(parents=True, exist_ok=True)
        (ml / "checkpoints").mkdir(parents=True, exist_ok=True)
        if checkpoints is not None:  # SageMaker restores checkpoint_s3_uri into the folder before a restart
            shutil.copytree(checkpoints, ml / "checkpoints", dirs_exist_ok=True)
        bin_dir = self.root / "bin"
        bin_dir.mkdir()
        (bin_dir / "start_with_right_hostname.sh").write_text(START_SCRIPT)
        if gpus:
            (bin_dir / "nvidia-smi").write_text(_fake_nvidia_smi(gpus))
        for tool in bin_dir.iterdir():
            tool.chmod(0o755)
        # docker names the container's own hostname in /etc/hosts too (torchrun's rendezvous looks it up)
        (self.root / "hosts").write_text(" ".join(["127.0.0.1", "localhost", socket.gethostname(), *hosts]) + "\n")

    def _environment(self, endpoint: str) -> dict[str, str]:
        env = {
            "PATH": os.pathsep.join([str(self.root / "bin"), str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
            "HOME": os.environ.get("HOME", "/root"), "LANG": "C.UTF-8",
            "SAGEMAKER_TRAINING_MODULE": "sagemaker_pytorch_container.training:main",
            "TRAINING_JOB_NAME": self.request["TrainingJobName"],
            "S3_ENDPOINT_URL": endpoint, "AWS_ENDPOINT_URL": endpoint, "AWS_REGION": "us-east-1",
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1",
            "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",  # requirements.txt is satisfied already
        }
        env.update(self.request.get("Environment", {}))
        return env

    def _start(self, endpoint: str) -> subprocess.Popen:
        spec = self.request["AlgorithmSpecification"]
        command = (spec["ContainerEntrypoint"] + spec.get("ContainerArguments", []) if "ContainerEntrypoint" in spec
                   else DLC_ENTRYPOINT + ["train"])
        mounts = [f"mount --bind {shlex.quote(str(self.root / 'hosts'))} /etc/hosts",
                  "mkdir -p /opt/ml", f"mount --bind {shlex.quote(str(self.ml))} /opt/ml"]
        for folder in PRIVATE_TMP:
            mounts += [f"mkdir -p {folder}", f"mount -t tmpfs tmpfs {folder}"]
        setup = " && ".join(mounts) + ' && cd / && exec "$@"'
        return subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "--mount", "--propagation", "private",
                                 "bash", "-c", setup, "container", *command],
                                env=self._environment(endpoint), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, text=True, bufsize=1)

    def _read(self) -> None:
        for line in self.process.stdout:
            with self._new_line:
                self.lines.append(line.rstrip("\n"))
                self._new_line.notify_all()
        with self._new_line:
            self._new_line.notify_all()

    # ---------------------------------------------------------------------------------------------- use
    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, predicate, timeout: float = 120) -> str:
        """Block until a line satisfies ``predicate``; returns it (AssertionError with the output otherwise)."""
        deadline, seen = time.monotonic() + timeout, 0
        with self._new_line:
            while True:
                for line in self.lines[seen:]:
                    if predicate(line):
                        return line
                seen = len(self.lines)
                if self.process.poll() is not None and not self._reader.is_alive():
                    raise AssertionError(f"the container ended first:\n{self.output[-4000:]}")
                if time.monotonic() > deadline:
                    raise AssertionError(f"no such line within {timeout} s:\n{self.output[-4000:]}")
                self._new_line.wait(timeout=1)

    def pid1(self) -> int:
        """The host's pid of the container's PID 1 (unshare's only child)."""
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children").read_text().split()
        assert len(children) == 1, children
        return int(children[0])

    def docker_stop(self, grace: float = STOP_GRACE_SECONDS) -> bool:
        """SIGTERM to PID 1, SIGKILL to it (and so to the whole namespace) after ``grace`` s, as SageMaker does;
        returns whether the container had to be killed (it did not end by itself within the grace)."""
        os.kill(self.pid1(), signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
            killed = False
        except subprocess.TimeoutExpired:
            os.kill(self.pid1(), signal.SIGKILL)
            self.process.wait(timeout=30)
            killed = True
        self._reader.join(timeout=30)
        return killed

    def wait(self, timeout: float = 300) -> int:
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(f"the container ran past {timeout} s:\n{self.output[-4000:]}") from None
        self._reader.join(timeout=30)
        return code
