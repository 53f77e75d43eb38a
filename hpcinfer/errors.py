"""The two kinds of failure a user can see, and their exit codes."""


class JobError(Exception):
    """Bad user input (job file, model folder, input data, layout): exit code 2.

    The message is one line that names the file, key or rank at fault.
    """

    exit_code = 2


class RunError(Exception):
    """A failure while the job runs (I/O, a rank's computation): exit code 1."""

    exit_code = 1
