"""Exclusive directory locks: one process at a time works in a run's or a sweep's directory.

`DirectoryLock(directory)` takes an `fcntl.flock` on a file in it (``.lock``
unless named) without waiting and writes the holder's PID there; while it is
held, another `DirectoryLock` on the same file, in any process, raises
`DirectoryLocked` with that PID. The kernel drops the lock when the holder's
process ends, however it ends (SIGKILL included), so a killed run leaves no
stale lock and its rerun resumes. The file itself stays: deleting it would let
a third process lock a new file while the second still holds the old one.
The descriptor is not inherited by child processes (Python opens files
non-inheritable), so workers and cells started by the holder do not hold it.
"""

from __future__ import annotations

import fcntl
import os
import pathlib

LOCK_FILE = ".lock"


class DirectoryLocked(Exception):
    """The directory is locked by another holder; `pid` is what it wrote ("?" if nothing yet)."""

    def __init__(self, directory: pathlib.Path, pid: str):
        super().__init__(f"{directory} is locked by process {pid}")
        self.directory = directory
        self.pid = pid


class DirectoryLock:
    """An exclusive lock on `directory`, held from construction to `release` (or the `with` end).

    Raises:
        DirectoryLocked: If another holder has it.
        OSError: If the lock file cannot be created (e.g. the directory is not writable).
    """

    def __init__(self, directory: os.PathLike | str, name: str = LOCK_FILE):
        self.directory = pathlib.Path(directory)
        self.path = self.directory / name
        self.directory.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a+")  # Open as long as the lock is held.
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            pid = self._file.read().strip() or "?"
            self._file.close()
            raise DirectoryLocked(self.directory, pid) from None
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        """Releases the lock (closing the file releases it); a second call does nothing."""
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> DirectoryLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
