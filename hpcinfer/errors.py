"""The two kinds of failure a user can see, and their exit codes."""


class JobError(Exception):
    """Bad user input (job file, model folder, input data, layout): exit code 2.

    The message is one line that names the file, key or rank at fault.
    """

    exit_code = 2


class RunError(Exception):
    """A failure while the job runs (I/O, a rank's computation): exit code 1."""

    exit_code = 1


class BadRow(JobError):
    """One input row the model cannot take (a token id outside its vocabulary, ...).

    `index` counts from the first row the model was given; the engine, which knows where
    those rows came from, turns it into a file and row number.
    """

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index, self.message = index, message
