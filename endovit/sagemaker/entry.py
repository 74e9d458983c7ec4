"""A stop that reaches the trainers in a SageMaker container (standard library only: this runs inside the job).

SageMaker stops a job (StopTrainingJob, a spot interruption, ``max_run``) with ``docker stop``: SIGTERM to the
container's PID 1, SIGKILL 120 s later. In the Deep Learning Containers PID 1 is ``bash -m
start_with_right_hostname.sh train``, a bash without a TERM handler, so the kernel drops the signal; the toolkit
(``train``) and torchrun below it have no handler either. Nothing reaches pretrain.py and the job ends without a
stop checkpoint or an export.

The launcher therefore sets the job's ``ContainerEntrypoint`` to :data:`ENTRY_SCRIPT`, a few lines of bash that run
the image's own command (``ContainerArguments``, by default :data:`DLC_COMMAND`) as a child and, on SIGTERM, write
``$ENDOVIT_ENTRY_DIR/stop`` and send SIGTERM to the processes registered under ``$ENDOVIT_ENTRY_DIR/trainers``:
only the trainers, never the toolkit or torchrun, which must stay alive to see the trainers end well (a signalled
torchrun kills its workers; a signalled toolkit dies at once and orphans them). Why bash and not Python: each
entry-point string is at most 256 characters and the code tarball is not there yet when PID 1 starts, so the
entry point must fit in one short string, and every image that runs the toolkit has bash.

Each trainer registers itself (:func:`registered`); one that starts after the stop (it was still being
installed) finds the stop file and stops at its first step. A trainer stopped this way exits 0 (:func:`stopping`):
SageMaker shows the job as Stopped (or, for ``max_run``, Stopped with MaxRuntimeExceeded) whatever the exit code, and
a non-zero code would only make the toolkit log "Reporting training FAILURE" and write ``output/failure``.
"""
from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path

__all__ = ["ENTRY_DIR_ENV", "ENTRY_DIR", "ENTRY_SCRIPT", "DLC_COMMAND", "container_entry", "registered", "stopping"]

ENTRY_DIR_ENV = "ENDOVIT_ENTRY_DIR"
ENTRY_DIR = "/tmp/endovit-entry"  # the container's own /tmp: nothing here is uploaded
# The image's command in the Hugging Face and PyTorch training DLCs (their ENTRYPOINT plus SageMaker's `train`).
DLC_COMMAND = ("bash", "-m", "start_with_right_hostname.sh", "train")

# PID 1: trap TERM/INT -> stop file + SIGTERM to each registered trainer; run "$@" as a child and wait until it has
# ended (a trapped signal interrupts `wait`, so wait again while the child lives), then exit with its code.
ENTRY_SCRIPT = (
    'd=$ENDOVIT_ENTRY_DIR;mkdir -p $d/trainers;'
    'trap \'touch $d/stop;for p in $d/trainers/*;do kill -TERM ${p##*/};done 2>/dev/null\' TERM INT;'
    '"$@"&c=$!;while :;do wait $c;r=$?;kill -0 $c 2>/dev/null||break;done;exit $r'
)


def container_entry(arguments: list[str] | tuple[str, ...] | None = None) -> dict:
    """The estimator arguments that put :data:`ENTRY_SCRIPT` in front of the image's command (``arguments``: the
    user's ``container_arguments`` for an image of their own, else the DLCs' command), and the environment the
    entry point and the trainers share."""
    return {
        "container_entry_point": ["bash", "-c", ENTRY_SCRIPT, "endovit-entry"],
        "container_arguments": list(arguments or DLC_COMMAND),
        "environment": {ENTRY_DIR_ENV: ENTRY_DIR},
    }


def _entry_dir(environ: Mapping[str, str] | None) -> Path | None:
    folder = (os.environ if environ is None else environ).get(ENTRY_DIR_ENV)
    return Path(folder) if folder else None


def stopping(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the container's entry point has passed a stop on (the job is being stopped)."""
    folder = _entry_dir(environ)
    return folder is not None and (folder / "stop").exists()


@contextlib.contextmanager
def registered(request_stop: Callable[[int], None], environ: Mapping[str, str] | None = None):
    """Inside a container started by :data:`ENTRY_SCRIPT`: register this process for the entry point's SIGTERM while
    the block runs, and call ``request_stop(SIGTERM)`` at once when the stop came before this process did. Anywhere
    else, nothing."""
    folder = _entry_dir(environ)
    if folder is None:
        yield
        return
    mark = folder / "trainers" / str(os.getpid())
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.touch()
    try:
        # registered first, then read: a stop written before the mark is seen here, one written after signals us
        if stopping(environ):
            request_stop(signal.SIGTERM)
        yield
    finally:
        mark.unlink(missing_ok=True)

