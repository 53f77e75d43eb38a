"""The kinds of failure a user can see, and their exit codes."""

import errno


class JobError(Exception):
    """Bad user input (job file, model folder, input data, layout): exit code 2.

    The message is one line that names the file, key or rank at fault.
    """

    exit_code = 2


class Agreed(JobError):
    """A JobError every rank raised together, after rank 0 printed it once (`agree`)."""


class RunError(Exception):
    """A failure while the job runs (I/O, a rank's computation): exit code 1."""

    exit_code = 1


class DiskError(RunError):
    """The disk is full (or a quota or file-size limit is reached): exit code 75, like a
    stop, because rerunning the same command once there is room completes the job; the
    finished chunks are kept."""

    exit_code = 75
    ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def io_error(path: object, doing: str, e: OSError) -> RunError:
    """One line naming the file for an OSError: a DiskError when room would cure it."""
    kind = DiskError if e.errno in DiskError.ERRNOS else RunError
    hint = "; free space and rerun the same command" if kind is DiskError else ""
    return kind(f"{path}: cannot {doing}: {e.strerror or e}{hint}")


class BadRow(JobError):
    """One input row the model cannot take (a token id outside its vocabulary, ...).

    `index` counts from the first row the model was given; the engine, which knows where
    those rows came from, turns it into a file and row number.
    """

    def __init__(self, index: int, message: str):
        super().__init__(message)
        self.index, self.message = index, message
