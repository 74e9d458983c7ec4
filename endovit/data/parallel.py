"""A process pool for the data tools (prepare, stats); forked where possible so workers start at once."""
from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Iterator

__all__ = ["worker_pool"]


@contextlib.contextmanager
def worker_pool(num_proc: int, initializer: Callable | None = None, initargs: tuple = ()) -> Iterator:
    """A ``multiprocessing`` pool of ``num_proc`` workers, or None for one process (run in-process).

    Forking avoids re-importing torch and datasets in every worker; create the pool before starting
    threads (progress bars) so the fork is safe. Elsewhere (no fork) the pool spawns.
    """
    if num_proc <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield None
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(num_proc, initializer, initargs) as pool:
        yield pool
