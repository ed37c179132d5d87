"""The files a run writes: never one of its inputs or each other, never written by two runs at once, and never
left half-written for the next run.

Standard library only, so that the QGIS plugin can bundle it beside ``grid.py``. Errors are ``ValueError`` (bad
paths, a lock file that cannot be made, a file with several names) and :class:`OutputBusy` (another run holds the
output), with messages meant for a user.
"""

from __future__ import annotations

import json
import os
import re
import socket
import sqlite3
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

#: The lock file sits beside the output's real file, named after it.
LOCK_SUFFIX = ".lock"
#: What SQLite keeps beside a database while a transaction writes it (rollback journal mode); a "hot" one, left by
#: a process that died mid-commit, holds the pages to put back.
JOURNAL_SUFFIX = "-journal"
#: A URL (``s3://``, ``https://``; once made a path, ``https:/``) or a GDAL virtual path: nowhere a run writes.
_NOT_LOCAL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]+:/|/vsi)")


def same_file(first: Path, second: Path) -> bool:
    """Whether two paths name one file: the same path once resolved (links, ``..``), or, where both exist, the
    same file on disk (hard links, other mounts)."""
    if Path(first).resolve() == Path(second).resolve():
        return True
    try:
        return os.path.samefile(first, second)
    except OSError:  # one of them does not exist (yet): they cannot be one file then
        return False


def check_run_paths(inputs: Mapping[str, Path | None], outputs: Mapping[str, Path | None]) -> None:
    """Refuse outputs that would overwrite an input or each other, that are folders, or whose folder is missing, and
    outputs that are no local files (a URL, a GDAL virtual path).

    Keys name the paths as the user gave them (``"--report"``, ``"BEFORE"``); ``None`` values are ignored (a remote
    input is given as None: no local output can be it). Raises ``ValueError`` before anything is written.
    """
    given_outputs = [(name, Path(path)) for name, path in outputs.items() if path is not None]
    given_inputs = [(name, Path(path)) for name, path in inputs.items() if path is not None]
    for name, path in given_outputs:
        if _NOT_LOCAL.match(str(path)):
            raise ValueError(f"{name} {path} is not a file on this machine: a run writes its outputs to local files "
                             f"(a URL or GDAL path is read only); give a local path for {name}")
    for index, (name, path) in enumerate(given_outputs):
        for other_name, other in given_inputs + given_outputs[index + 1 :]:
            if same_file(path, other):
                raise ValueError(
                    f"{name} {path} is the same file as {other_name} {other}: writing it would destroy that file; "
                    f"choose another path for {name}"
                )
        if path.is_dir():
            raise ValueError(f"{name} {path} is a folder: give a file path inside it")
        folder = path.resolve().parent
        if not folder.is_dir():
            raise ValueError(f"{name}: the folder {folder} does not exist: create it first or choose another path")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise ValueError(f"{name}: the folder {folder} is not writable: choose another path")


class OutputBusy(Exception):
    """Another run is writing the output."""


def roll_back_unfinished(path: Path) -> None:
    """Put the SQLite file ``path`` back as its last commit left it, where a writer died mid-commit (a hot journal
    beside it): opening it read-write does that, as in any SQLite client, while a read-only reader cannot and would
    take the file for something else. Call it holding the output's lock; raises ``ValueError`` where it cannot."""
    real = Path(path).resolve()
    if not (real.is_file() and real.with_name(real.name + JOURNAL_SUFFIX).exists()):
        return
    try:
        connection = sqlite3.connect(real, timeout=30)
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()  # the first read rolls it back
        finally:
            connection.close()
    except sqlite3.DatabaseError as error:
        raise ValueError(
            f"{path}: a run stopped while writing it, and the file could not be opened to undo its last unfinished "
            f"write ({error}): give this user write access to the file and its folder, then run again"
        ) from None


def roll_back_for_reading(path: Path, command: str = "") -> None:
    """For a reader of a run's output: :func:`roll_back_unfinished` under the output's lock, unless a run holds it
    (that run rolled back what was left when it started, and the transaction it has under way is no one else's to
    undo). Raises ``ValueError`` where it cannot."""
    real = Path(path).resolve()
    if not real.with_name(real.name + JOURNAL_SUFFIX).exists():
        return
    lock = OutputLock(path, command)
    try:
        lock.acquire()
    except OutputBusy:
        return
    lock.release()


class OutputLock:
    """An exclusive advisory lock on ``OUTPUT.lock``, held while a run writes ``OUTPUT``.

    The lock follows the file, not the name given: it sits beside the file's real path (symlinks and other spellings
    resolved), where every path to the file meets it; and a file with several names (hard links) is refused, since
    SQLite finds what a stopped run left (its journal) only under the name the file was opened by. Once taken, a
    transaction a killed run left unfinished is rolled back (:func:`roll_back_unfinished`). The operating system
    releases the lock when the process ends, however it ends (kill -9 included), so a stale lock never blocks a
    later run; the lock file is removed on a normal release. It records who holds it, for the message a second run
    gets.
    """

    def __init__(self, output: Path, command: str = "") -> None:
        self.output = Path(output)
        real = self.output.resolve()
        self.path = real.with_name(real.name + LOCK_SUFFIX)
        self.command = command
        self._file: TextIO | None = None

    def acquire(self) -> None:
        """Take the lock and roll back what a killed run left, or raise :class:`OutputBusy` naming the run that
        holds it (``ValueError`` for a file of several names, or one that cannot be rolled back)."""
        self._lock()
        try:
            self._check_one_name()
            roll_back_unfinished(self.output)
        except BaseException:
            self.release()
            raise

    def _check_one_name(self) -> None:
        try:
            names = os.stat(self.output).st_nlink
        except FileNotFoundError:  # a new output: it gets one name
            return
        if names > 1:
            raise ValueError(
                f"{self.output} has {names} names (hard links): SQLite finds what a stopped run left only under the "
                "name it wrote by, so a file written under several names can be damaged for good: write to a copy "
                "with one name of its own, or remove its other names"
            )

    def _lock(self) -> None:
        while True:
            try:
                handle = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 (held open as long as the lock)
            except OSError as error:
                raise ValueError(f"cannot create the lock file {self.path} beside the output: {error}") from None
            if not _try_lock(handle):
                holder = _holder(self.path)
                handle.close()
                raise OutputBusy(
                    f"{self.output} is being written by another run ({holder}): wait for it to finish, stop it, or "
                    "choose another output"
                )
            # A releasing run may have removed the file between our open and our lock: then we hold a lock on a
            # file nobody else can see, and must try again on the new one.
            if _same_inode(handle, self.path):
                break
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }))
        handle.flush()
        self._file = handle

    def release(self) -> None:
        """Let go and remove the lock file (on POSIX removed while still held, so that no run locks it late)."""
        if self._file is None:
            return
        handle, self._file = self._file, None
        if sys.platform == "win32":  # an open file cannot be removed there; a late locker then just locks a new one
            handle.close()
            try:
                self.path.unlink(missing_ok=True)
            except OSError:  # another run has it open, waiting: it is theirs now
                pass
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            handle.close()

    def __enter__(self) -> "OutputLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _same_inode(handle, path: Path) -> bool:  # noqa: ANN001 (a text file object)
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(handle.fileno())
    return (held.st_dev, held.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _holder(path: Path) -> str:
    try:
        facts = json.loads(path.read_text(encoding="utf-8"))
        words = f"pid {facts['pid']} on {facts['host']}, since {facts['since']}"
        return f"{facts['command']}, {words}" if facts.get("command") else words
    except (OSError, ValueError, KeyError, TypeError):
        return "a run that has not said who it is"


if sys.platform == "win32":
    import msvcrt

    def _try_lock(handle) -> bool:  # noqa: ANN001 (a text file object)
        try:
            handle.seek(0)
            msvcrt.locking(handle.fileno(), msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False
else:
    import fcntl

    def _try_lock(handle) -> bool:  # noqa: ANN001 (a text file object)
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            return False
