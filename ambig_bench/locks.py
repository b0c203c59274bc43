"""One lock file per run, so two invocations on the same results directory never train the same run at once.

The lock is `OUT/.locks/<run name>.lock`, taken with the `filelock` library: an advisory `flock` on
Linux and macOS, a byte-range lock on Windows. The operating system drops either when its holder exits,
however it exits (Ctrl-C, `kill -9`, a crash), so a lock is never left stale and lock files need no
cleaning. On NFS, Linux maps flock to POSIX byte-range locks, which work across machines. A file system
with no such locks at all is refused with an error, not quietly given a lock a dead process could leave.

A RunLock is exclusive and not reentrant: two RunLocks on one path conflict even within one process,
and a lock already held is not taken a second time.

$ ambig-bench run --strategy all --out results/demo &   # both share the grid: each run is trained once,
$ ambig-bench run --strategy all --out results/demo     # the second skips runs the first is training

>>> lock = RunLock(Path("results/doctest/.locks/soft-seed0-1a2b3c4d.lock"))  # doctest: +SKIP
>>> lock.acquire(wait=False)  # doctest: +SKIP
True
"""

from __future__ import annotations

import inspect
from pathlib import Path

from filelock import FileLock, Timeout

# Where filelock would fall back to a plain marker file on a file system without flock, refuse instead:
# a marker outlives a killed holder. (Older filelock versions have no fallback and raise by themselves.)
_NATIVE_ONLY = {"fallback_to_soft": False} if "fallback_to_soft" in inspect.signature(FileLock).parameters else {}


class RunLock:
    """An exclusive, non-reentrant lock on `path`, held by this process until release() or its exit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # One FileLock per RunLock, never a shared per-path instance (is_singleton stays off): a second
        # RunLock on the same path is another holder and must be refused. thread_local=False lets any
        # thread release what another acquired, as with a plain file descriptor.
        self._lock = FileLock(str(path), thread_local=False, **_NATIVE_ONLY)

    def acquire(self, wait: bool) -> bool:
        """Take the lock; with wait=False, return False at once when another holder has it.

        Taking a lock this RunLock already holds counts as another holder: False with wait=False, and a
        RuntimeError with wait=True (it would wait forever). FileLock alone would count the holds instead.
        """
        if self._lock.is_locked:
            if wait:
                raise RuntimeError(f"{self.path}: this lock is already held by the same RunLock")
            return False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            return False
        return True

    def release(self) -> None:
        """Let go of the lock; nothing happens when it is not held."""
        if self._lock.is_locked:
            self._lock.release(force=True)

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
