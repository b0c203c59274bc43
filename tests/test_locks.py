"""RunLock: one holder at a time across processes and within one, and never stale after its holder is killed."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from ambig_bench.locks import RunLock

REPO = Path(__file__).resolve().parents[1]

# A child process that takes the lock (waiting or not), says whether it got it, then holds it until killed.
HOLDER = """
import sys, time
from pathlib import Path
from ambig_bench.locks import RunLock
lock = RunLock(Path(sys.argv[1]))
print(lock.acquire(wait=sys.argv[2] == "wait"), flush=True)
time.sleep(600)
"""


def child(path: Path, wait: bool = False) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", HOLDER, str(path), "wait" if wait else "nowait"],
                            cwd=REPO, stdout=subprocess.PIPE, text=True)


def got_lock(proc: subprocess.Popen) -> bool:
    return proc.stdout.readline().strip() == "True"


@pytest.fixture
def lock_path(tmp_path) -> Path:
    return tmp_path / ".locks" / "soft-seed0-1a2b3c4d.lock"


@pytest.fixture
def procs():
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        proc.kill()
        proc.wait(timeout=30)
        proc.stdout.close()


def test_another_process_cannot_take_a_held_lock(lock_path, procs):
    lock = RunLock(lock_path)
    assert lock.acquire(wait=False)
    procs.append(child(lock_path))
    assert not got_lock(procs[0]), "a second process took a held lock"


def test_a_lock_another_process_holds_is_refused_here(lock_path, procs):
    procs.append(child(lock_path))
    assert got_lock(procs[0])
    assert not RunLock(lock_path).acquire(wait=False)


def test_a_killed_holder_leaves_no_stale_lock(lock_path, procs):
    procs.append(child(lock_path))
    assert got_lock(procs[0])
    assert not RunLock(lock_path).acquire(wait=False)
    procs[0].kill()  # SIGKILL: no handler, no finally, no atexit runs
    procs[0].wait(timeout=30)
    lock = RunLock(lock_path)
    assert lock.acquire(wait=False), "the lock of a killed process is stale"
    lock.release()


def test_a_waiter_gets_the_lock_when_the_holder_is_killed(lock_path, procs):
    procs.append(child(lock_path))
    assert got_lock(procs[0])
    lock = RunLock(lock_path)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(lock.acquire(wait=True)), daemon=True)
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive() and not got, "wait=True returned while another process held the lock"
    procs[0].kill()
    waiter.join(timeout=30)
    assert got == [True]
    lock.release()


def test_release_then_acquire_again(lock_path, procs):
    lock = RunLock(lock_path)
    assert lock.acquire(wait=False)
    lock.release()
    lock.release()  # releasing what is not held does nothing
    assert lock.acquire(wait=False), "the same RunLock can be taken again after release"
    lock.release()
    procs.append(child(lock_path))
    assert got_lock(procs[0]), "a released lock is free for another process"
    assert not lock.acquire(wait=False)


def test_two_runlocks_in_one_process_exclude_each_other(lock_path):
    first, second = RunLock(lock_path), RunLock(lock_path)
    assert first.acquire(wait=False)
    assert not second.acquire(wait=False)
    first.release()
    assert second.acquire(wait=False)
    second.release()


def test_a_held_runlock_is_not_reentrant(lock_path):
    lock = RunLock(lock_path)
    assert lock.acquire(wait=False)
    assert not lock.acquire(wait=False), "taking a held lock again must not count a second hold"
    with pytest.raises(RuntimeError, match="already held"):
        lock.acquire(wait=True)
    lock.release()  # one release frees it: nothing was counted twice
    other = RunLock(lock_path)
    assert other.acquire(wait=False)
    other.release()


def test_a_thread_waiting_in_this_process_gets_the_lock_on_release(lock_path):
    holder, waiter_lock = RunLock(lock_path), RunLock(lock_path)
    assert holder.acquire(wait=False)
    got: list[bool] = []
    waiter = threading.Thread(target=lambda: got.append(waiter_lock.acquire(wait=True)), daemon=True)
    waiter.start()
    time.sleep(0.3)
    assert waiter.is_alive() and not got
    holder.release()
    waiter.join(timeout=30)
    assert got == [True]
    # Released from a thread other than the one that took it, as an executor may do.
    releaser = threading.Thread(target=waiter_lock.release)
    releaser.start()
    releaser.join(timeout=30)
    assert holder.acquire(wait=False)
    holder.release()


def test_the_context_manager_releases(lock_path):
    lock = RunLock(lock_path)
    assert lock.acquire(wait=False)
    with lock:
        assert not RunLock(lock_path).acquire(wait=False)
    after = RunLock(lock_path)
    assert after.acquire(wait=False)
    after.release()
