"""Errors that end a job cleanly: the CLI prints the message (which names the input and the reason)
and exits with status 1, without a traceback."""


class JobError(RuntimeError):
    """A job cannot run: bad arguments, missing or inconsistent input, unreachable output."""
