"""The two ways a command can fail: bad input from the user (exit 2) or a run that broke (exit 1).

$ ambig-bench run --strategy nope; echo $?
error: unknown strategy 'nope'; choose from: discard, duplicate, extra-class, hard, multilabel, partial, reassign, soft
2
"""


class UserError(ValueError):
    """Bad usage or input: the CLI prints the message on one line and exits with code 2."""


class RunFailed(RuntimeError):
    """A run that started but could not finish (NaN loss, out of memory): exit code 1."""
