"""One lock file per run, so two invocations on the same results directory never train the same run at once.

The lock is an advisory `flock` on `OUT/.locks/<run name>.lock`. The kernel drops it when its holder
exits, however it exits (Ctrl-C, `kill -9`, a crash), so a lock is never left stale and lock files need
no cleaning. On NFS, Linux maps flock to POSIX byte-range locks, which work across machines.

$ ambig-bench run --strategy all --out results/demo &   # both share the grid: each run is trained once,
$ ambig-bench run --strategy all --out results/demo     # the second skips runs the first is training

>>> lock = RunLock(Path("results/doctest/.locks/soft-seed0-1a2b3c4d.lock"))  # doctest: +SKIP
>>> lock.acquire(wait=False)  # doctest: +SKIP
True
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path


class RunLock:
    """An exclusive, non-reentrant lock held through an open file descriptor."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, wait: bool) -> bool:
        """Take the lock; with wait=False, return False at once when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor releases the flock
            self.fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
