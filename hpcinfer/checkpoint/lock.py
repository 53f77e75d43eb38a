"""One run per output at a time: `<output>.lock`, held by rank 0 for the whole run.

Cluster file systems do not all honour `flock`/`fcntl` across nodes (Lustre mounted
with `localflock`, some NFS setups), so the lock does not rely on them. It is a file
created with O_CREAT | O_EXCL (atomic on every POSIX file system, NFSv3 and later
included) holding who holds it: run id, host, pid, the process's start time, the job
and the SLURM job id. While the run lives, a thread touches the file every
HEARTBEAT_SECONDS.

A lock is stale, and is cleared by the next run, when
  - its holder ran on this host and that process is gone (or the pid was reused: the
    process's start time differs), or
  - it has not been touched for STALE_SECONDS (its holder's node died or hangs).
Otherwise a second run stops at once with exit code 2, naming the holder. A lock that
cannot be read as ours (not JSON, not our keys) is never removed: the user is told.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hpcinfer.errors import JobError
from hpcinfer.parallel.processes import alive_here, process_start

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0
LOCK_KEYS = ("run_id", "host", "pid", "pid_start", "started_utc")


def lock_path_for(output: Path) -> Path:
    return output.with_name(output.name + ".lock")


@dataclass(frozen=True)
class Holder:
    """Who holds a lock, as its file says."""

    info: dict[str, Any]
    age_seconds: float  # since the holder last touched the file

    def describe(self) -> str:
        i = self.info
        slurm = f", SLURM job {i['slurm_job_id']}" if i.get("slurm_job_id") else ""
        return (
            f"a run on host {i['host']} (pid {i['pid']}{slurm}, started {i['started_utc']}, "
            f"last seen {self.age_seconds:.0f} s ago)"
        )

    def stale(self) -> bool:
        i = self.info
        if self.age_seconds > STALE_SECONDS:
            return True
        return i["host"] == socket.gethostname() and not alive_here(i["pid"], i["pid_start"])


def read_holder(path: Path) -> Holder | None:
    """The lock's holder; None if there is no lock file. JobError if it is not ours."""
    try:
        raw = path.read_bytes()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError as e:
        raise JobError(f"{path}: cannot read the run lock ({e.strerror or e})") from None
    try:
        info = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        info = None
    if not isinstance(info, dict) or not all(k in info for k in LOCK_KEYS):
        raise JobError(
            f"{path}: exists but is not an hpcinfer run lock; hpcinfer will not remove "
            "it: move it away if no run uses this output"
        )
    return Holder(info, age)


class RunLock:
    """Held by one process (rank 0) from the start of a run to its end."""

    def __init__(self, output: Path, job_source: Path):
        self.path = lock_path_for(output)
        self.run_id = uuid.uuid4().hex
        self.info = {
            "run_id": self.run_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "pid_start": process_start(os.getpid()),
            "started_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "job": str(job_source),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        }
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._made: list[Path] = []  # folders created for the output, removed if left empty

    def acquire(self) -> RunLock:
        """Take the lock, clearing a stale one; JobError (exit 2) if a live run holds it."""
        missing = [p for p in (self.path.parent, *self.path.parent.parents) if not p.exists()]
        for folder in reversed(missing):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            except OSError as e:
                raise JobError(f"{folder}: cannot create the output's folder ({e})") from None
            self._made.append(folder)
        for _ in range(5):  # a stale lock removed by a racing run: try again
            if self._create():
                self._thread = threading.Thread(target=self._beat, name="lock", daemon=True)
                self._thread.start()
                return self
            holder = read_holder(self.path)
            if holder is None:
                continue
            if not holder.stale():
                self.release()
                raise JobError(
                    f"{self.path}: {holder.describe()} holds this output; hpcinfer runs one "
                    "job per output at a time (if that run is gone, delete the lock file, "
                    f"or wait: a lock not refreshed for {STALE_SECONDS:.0f} s is stale)"
                )
            self._remove_stale(holder)
        self.release()
        raise JobError(f"{self.path}: could not take the run lock (other runs keep racing)")

    def _create(self) -> bool:
        """Publish the lock whole: written under a private name, then hard-linked into
        place (atomic, and fails if the lock exists, on NFS too), so it is never empty."""
        tmp = self.path.with_name(f".{self.path.name}.{self.run_id}.tmp")
        try:
            with tmp.open("x") as f:
                json.dump(self.info, f)
                f.flush()
                os.fsync(f.fileno())
            os.link(tmp, self.path)
        except FileExistsError:
            return False
        except OSError as e:
            raise JobError(f"{self.path}: cannot create the run lock ({e.strerror or e})") from None
        finally:
            tmp.unlink(missing_ok=True)
        return True

    def _remove_stale(self, holder: Holder) -> None:
        """Rename, then check it was the stale one we read (a racing run may have replaced
        it), then delete: never removes a live holder's lock."""
        aside = self.path.with_name(f"{self.path.name}.stale-{self.run_id}")
        try:
            os.replace(self.path, aside)
        except FileNotFoundError:
            return
        with contextlib.suppress(OSError, json.JSONDecodeError, UnicodeDecodeError):
            if json.loads(aside.read_bytes()).get("run_id") != holder.info.get("run_id"):
                os.replace(aside, self.path)  # not the one we judged stale: put it back
                return
        aside.unlink(missing_ok=True)

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def still_ours(self) -> bool:
        holder = None
        with contextlib.suppress(JobError):
            holder = read_holder(self.path)
        return holder is not None and holder.info.get("run_id") == self.run_id

    def release(self) -> None:
        """Remove the lock file, if it is still this run's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.still_ours():
            self.path.unlink(missing_ok=True)
        for folder in reversed(self._made):  # a refused or failed run leaves no trace
            with contextlib.suppress(OSError):
                folder.rmdir()
