"""Child processes that die with their parent: no orphaned loader or degradation worker holding RAM.

A parent killed with SIGKILL (the OOM killer, ``scancel -s KILL``, ``kill -9``) runs no clean-up, so its
DataLoader workers would stay, blocked forever. ``die_with_parent`` is called first thing in the child
(a ``worker_init_fn`` or pool initializer): on Linux the kernel sends the child SIGKILL when its parent
ends (``prctl(PR_SET_PDEATHSIG)``); elsewhere, or to follow a process that is not the direct parent (a
forkserver's client), a daemon thread checks once a second and kills the child when that process is gone.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
WATCH_INTERVAL_S = 1.0


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else (the pid was reused): the watched process is gone
        return False
    return True


def _parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when its parent ends; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(pid: int, interval: float) -> None:
    while _alive(pid):
        time.sleep(interval)
    _kill_self()


def die_with_parent(parent_pid: int, interval: float = WATCH_INTERVAL_S) -> None:
    """In a child: end this process (SIGKILL) as soon as process ``parent_pid`` ends.

    ``parent_pid`` is the pid of the process that owns the work, passed from there (``os.getpid()`` before
    the children start): the direct parent, or the process behind a forkserver.
    """
    direct = os.getppid() == parent_pid
    signalled = _parent_death_signal()  # on the direct parent, whichever process that is
    if not _alive(parent_pid) or (direct and os.getppid() != parent_pid):  # it died before we got here
        _kill_self()
    if direct and signalled:
        return
    threading.Thread(target=_watch, args=(parent_pid, interval), name="fluxir-parent-watch", daemon=True).start()


def worker_init(then: Callable[[int], None] | None = None) -> Callable[[int], None]:
    """A DataLoader ``worker_init_fn`` that ties each worker to this process (then calls ``then(worker_id)``)."""
    return functools.partial(_init_worker, os.getpid(), then)


def _init_worker(parent_pid: int, then: Callable[[int], None] | None, worker_id: int) -> None:
    die_with_parent(parent_pid)
    if then is not None:
        then(worker_id)
