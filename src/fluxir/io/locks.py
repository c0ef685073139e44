"""Locks: one writer per stage output; a second run of the same stage waits for the first."""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"  # the writer lock of a stage's output folder (exclusive_lock)


class FolderBusy(RuntimeError):
    """Another process holds the lock of an output that cannot be shared or waited for."""


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str, wait: bool = True) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created if needed) for the block: a second run of the same
    stage waits here, logging which process holds it, and then finds the first one's work done. With
    ``wait=False`` (a training run: waiting would be for days) it raises ``FolderBusy`` naming the holder.

    ``fcntl.flock``: released by the kernel when the holder ends in any way (a kill -9 leaves no stale lock);
    works on local disks and NFSv4. Where ``fcntl`` does not exist (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            if not wait:
                raise FolderBusy(
                    f"{what} is being written by {holder} (lock {path}): let that run finish or stop it, "
                    "or give this one another folder"
                ) from None
            logger.warning("%s is being written by %s; waiting for it to finish (lock %s)", what, holder, path)
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(
            fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode(), 0
        )
        yield
    finally:
        os.close(fd)
