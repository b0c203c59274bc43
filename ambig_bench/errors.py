"""The two ways a command can fail: bad input from the user (exit 2) or a run that broke (exit 1); and SIGTERM
made to interrupt like Ctrl-C.

$ ambig-bench run --strategy nope; echo $?
error: unknown strategy 'nope'; choose from: discard, duplicate, extra-class, hard, soft, label-smoothing, ...
2
"""

import signal
import threading


class UserError(ValueError):
    """Bad usage or input: the CLI prints the message on one line and exits with code 2."""


class RunFailed(RuntimeError):
    """A run that started but could not finish (NaN loss, out of memory): exit code 1."""


TERMINATED = threading.Event()  # set when SIGTERM arrived: the exit code says so (143) even where a library
# (Ray) re-raised our interruption as its own KeyboardInterrupt


def raise_interrupt(signum: int, frame: object) -> None:
    TERMINATED.set()
    raise KeyboardInterrupt


def stop_on_sigterm() -> None:
    """Make SIGTERM (kill, a job scheduler's stop) interrupt the main thread as Ctrl-C does, so every worker is
    stopped and finished work is kept. Only the main thread can set a handler."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, raise_interrupt)
