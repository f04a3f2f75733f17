"""Worker processes that end with the process that started them.

A reader worker blocked on its queue never notices that its parent died (it holds the queue's pipe
itself), so a parent killed with SIGKILL would leave it running for minutes. Every worker pool of
dbeta (the CLI's record readers, MIMIC-IV-ECG preparation) starts its workers with `end_with_parent`.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time

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


__all__ = ["PARENT_POLL_SECONDS", "end_with_parent"]
