"""Worker processes that end with the process that started them.

A reader worker blocked on its queue never notices that its parent died (it holds the queue's pipe
itself), so a parent killed with SIGKILL would leave it running for minutes. Every worker pool of
dbeta (the CLI's record readers, MIMIC-IV-ECG preparation, the demo corpus) starts its workers with
`end_with_parent`; the task pools go through `map_in_workers`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor

_PR_SET_PDEATHSIG = 1
PARENT_POLL_SECONDS = 1.0


def end_with_parent(main_pid: int) -> None:
    """Worker initializer: make this worker exit when the process that started it (`main_pid`) dies.

    On Linux the kernel kills it (`prctl(PR_SET_PDEATHSIG, SIGKILL)`); everywhere, a daemon thread
    also polls the parent process id and exits when it changes (the worker was adopted).
    """
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl (unusual libc): the polling thread remains
            pass
    try:
        os.kill(main_pid, 0)  # the main process died before prctl took effect
    except ProcessLookupError:
        os._exit(1)
    except PermissionError:
        pass
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while True:
            time.sleep(PARENT_POLL_SECONDS)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, name="dbeta-parent-watch", daemon=True).start()


def map_in_workers(function: Callable, tasks: Iterable, num_proc: int) -> Iterator:
    """`function(task)` for each task, yielded in task order: in this process when `num_proc <= 1`
    or there is one task, otherwise in `num_proc` worker processes that end with this one. A failed
    task, an interrupt or a consumer that stops early drops the tasks not started instead of
    running them all."""
    tasks = list(tasks)
    if num_proc <= 1 or len(tasks) <= 1:
        for task in tasks:
            yield function(task)
        return
    pool = ProcessPoolExecutor(max_workers=num_proc, initializer=end_with_parent, initargs=(os.getpid(),))
    try:
        yield from pool.map(function, tasks)
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


__all__ = ["PARENT_POLL_SECONDS", "end_with_parent", "map_in_workers"]
