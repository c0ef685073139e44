"""Child processes that die with their parent: no orphaned loader or degradation worker holding RAM.

A parent killed with SIGKILL (the OOM killer, ``scancel -s KILL``, ``kill -9``) runs no clean-up, so its
DataLoader workers would stay, blocked forever. ``die_with_parent`` is called first thing in the child
(a ``worker_init_fn`` or pool initializer): on Linux the kernel sends the child SIGKILL when its parent
ends (``prctl(PR_SET_PDEATHSIG)``); elsewhere, or to follow a process that is not the direct parent (a
forkserver's client), a daemon thread checks once a second and kills the child when that process is gone.

A process that must outlive nothing it started (``fluxir.runtime.launch``'s guard) becomes a child subreaper
(``become_subreaper``): descendants orphaned below it (ranks a launcher started in their own sessions) are
reparented to it instead of init, so ``end_descendants`` finds and ends them all.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_SET_CHILD_SUBREAPER = 36
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


def _prctl(option: int, value: int) -> bool:
    """Linux ``prctl(option, value)``; False where that is not available or it fails."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, value, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _parent_death_signal() -> bool:
    """Ask Linux to SIGKILL this process when its parent ends; False where that is not available."""
    return _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def become_subreaper() -> bool:
    """Make this process the one its orphaned descendants are reparented to (Linux); False elsewhere."""
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def descendants(pid: int | None = None) -> list[int]:
    """Live (not zombie) descendants of ``pid`` (default: this process), from ``/proc``; [] without ``/proc``."""
    root = os.getpid() if pid is None else pid
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*/stat"):
        try:
            stat = entry.read_text()
        except OSError:  # ended while listed
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # after "pid (comm) ": the name may hold spaces
        if fields and fields[0] != "Z":
            children.setdefault(int(fields[1]), []).append(int(stat.split(" ", 1)[0]))
    found, todo = [], list(children.get(root, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo += children.get(child, [])
    return found


def _signal_all(pids: list[int], signum: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)


def end_descendants(grace: float, poll: float = 0.05) -> None:
    """SIGTERM every live descendant of this process, SIGKILL those left after ``grace`` seconds; again until
    none is left (a process whose parent ended meanwhile is reparented here when this is a subreaper)."""
    while pids := descendants():
        _signal_all(pids, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and set(pids) & set(descendants()):
            time.sleep(poll)
        _signal_all(descendants(), signal.SIGKILL)
        time.sleep(poll)


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
