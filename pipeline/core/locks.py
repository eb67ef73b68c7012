"""One run at a time per dataset: a `_lock` file in the dataset's folder, naming who holds it.

Two `winnow run` commands writing one dataset would delete each other's temporary folders and could lose a manifest
section (manifests are read, changed and written back). A stage therefore takes the lock of every dataset it touches
before any work and gives it back when it ends. The lock is created exclusively: `O_CREAT | O_EXCL` on a local disk,
a conditional put (`If-None-Match: *`, fsspec's `"xb"` mode) on an object store, so of two runs exactly one gets it.
The file holds the holder's host, pid, command and start time: the second run waits (`wait_s`) or fails with a
message naming the holder.

A lock whose holder died is stale. On the holder's own host that is known for certain (the pid is gone, or is now
another process), and the lock is taken over with a warning. From another host it cannot be known: the lock is
taken over only when it is older than `stale_after_s` (when given), or when the user says so (`break_lock`).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field

from pipeline.core.errors import WinnowError
from pipeline.core.layout import fs_and_path, fsync_dir, is_local, join

log = logging.getLogger(__name__)

LOCK_NAME = "_lock"


class DatasetLocked(WinnowError):
    """Another run holds the dataset's lock."""


def _process_start(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).create_time()
    except Exception:  # noqa: BLE001 - no such process, or no permission to ask
        return None


@dataclass
class Holder:
    host: str
    pid: int
    command: str
    started: float
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    pid_started: float | None = None  # the process's start time: a reused pid is another process

    @classmethod
    def this_process(cls) -> Holder:
        return cls(socket.gethostname(), os.getpid(), " ".join(sys.argv)[:500], time.time(),
                   pid_started=_process_start(os.getpid()))

    def describe(self) -> str:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return f"pid {self.pid} on {self.host}, since {when}: {self.command}"

    def dead_reason(self, stale_after_s: float | None) -> str | None:
        """Why this holder is known to be gone (so its lock may be taken over), or None."""
        if self.host == socket.gethostname():
            started = _process_start(self.pid)
            if started is None:
                return f"process {self.pid} is no longer running"
            if self.pid_started is not None and abs(started - self.pid_started) > 1.0:
                return f"process {self.pid} is now another program"
            return None
        if stale_after_s is not None and time.time() - self.started > stale_after_s:
            return f"it is older than {stale_after_s:.0f} s and held from another host"
        return None


def _read(url: str) -> Holder | None:
    fs, path = fs_and_path(url)
    try:
        with fs.open(path, "r") as f:
            return Holder(**json.load(f))
    except FileNotFoundError:
        return None
    except (ValueError, TypeError, json.JSONDecodeError):
        # A lock being written right now reads as empty; one that never becomes valid is left to the user.
        return Holder("unknown", -1, "an unreadable lock file", 0.0, token="")


def _missing_folders(path: str) -> list[str]:
    """The folders above `path` that do not exist yet, deepest first."""
    out, folder = [], os.path.dirname(os.path.abspath(path))
    while folder and not os.path.exists(folder):
        out.append(folder)
        folder = os.path.dirname(folder)
    return out


def _create(url: str, holder: Holder) -> bool:
    """Write the lock file if none exists, atomically with that check; False if one exists."""
    fs, path = fs_and_path(url)
    data = json.dumps(asdict(holder)).encode()
    if is_local(url):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(os.path.dirname(path))
        return True
    try:
        with fs.open(path, "xb") as f:  # s3fs: put_object with If-None-Match: *
            f.write(data)
    except FileExistsError:
        return False
    return True


@dataclass
class DatasetLock:
    url: str  # the lock file
    holder: Holder
    made: list[str] = field(default_factory=list)  # local folders created to hold the lock, deepest first

    def release(self) -> None:
        """Remove the lock if it is still ours (a `break_lock` by someone else may have replaced it)."""
        current = _read(self.url)
        if current is not None and current.token == self.holder.token:
            fs, path = fs_and_path(self.url)
            fs.rm(path)
            for folder in self.made:  # folders made only to hold the lock go with it (a stage that wrote keeps them)
                try:
                    os.rmdir(folder)
                except OSError:
                    break

    def __enter__(self) -> DatasetLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def lock_dataset(dataset_url: str, *, wait_s: float = 0.0, stale_after_s: float | None = None,
                 break_lock: bool = False, poll_s: float = 0.5) -> DatasetLock:
    """Take the dataset's lock, waiting up to `wait_s` for a live holder; DatasetLocked naming the holder if it
    stays held. A holder known to be dead is replaced (with a warning); `break_lock` replaces any holder."""
    url = join(dataset_url, LOCK_NAME)
    me = Holder.this_process()
    deadline = time.monotonic() + wait_s
    while True:
        made = _missing_folders(fs_and_path(url)[1]) if is_local(url) else []
        if _create(url, me):
            return DatasetLock(url, me, made)
        holder = _read(url)
        if holder is None:
            continue  # released between our attempt and the read: try again at once
        why = "you passed --break-lock" if break_lock else holder.dead_reason(stale_after_s)
        if why:
            log.warning("taking over the lock of %s from %s (%s)", dataset_url, holder.describe(), why)
            _remove_if_unchanged(url, holder)
            continue
        if time.monotonic() >= deadline:
            raise DatasetLocked(
                f"{dataset_url} is in use by another winnow run ({holder.describe()}). Wait for it to finish "
                f"(or pass --wait SECONDS); if that run is gone, remove {url} or run again with --break-lock")
        time.sleep(poll_s)


def _remove_if_unchanged(url: str, holder: Holder) -> None:
    """Remove a stale lock, unless another run replaced it since we read it."""
    current = _read(url)
    if current is not None and current.token == holder.token:
        fs, path = fs_and_path(url)
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass
