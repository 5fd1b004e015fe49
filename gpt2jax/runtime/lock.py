"""An exclusive lock on a run directory, so two trainers never write the same checkpoints and metrics.

A run directory that cannot be created or written (a read-only file system, someone else's directory, a full
disk) is refused here, in one line (`RunDirUnwritable`), before anything else is written.

`fcntl.flock` on `<run dir>/train.lock`, which holds the holder's pid, host and start time. The kernel drops the
lock when its process dies, so a lock file left by a crashed (or SIGKILLed) run is stale by construction: the next
trainer takes it over and says whose it was. The file is removed on release (after checking it is still ours).
Multi-process runs: only process 0 locks. Not every network file system implements flock; there the lock is
advisory at best.
"""
from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from gpt2jax.config import ConfigError

LOCK_FILE = "train.lock"


class RunDirLocked(ConfigError):
    """Another live process trains in this run directory."""


class RunDirUnwritable(ConfigError):
    """The run directory cannot be created or written (read-only file system, permissions, full disk)."""


class RunDirLock:
    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.fd: int | None = None
        self.stale: dict | None = None  # what a dead holder's file said, when we took it over

    def acquire(self) -> "RunDirLock":
        """Take the lock; RunDirLocked when another live process holds it, RunDirUnwritable (one line) when the run
        directory cannot be created or written (read-only file system, not our directory, full disk)."""
        existed = self.path.parent.exists()
        try:
            return self._acquire()
        except OSError as e:
            if not existed:  # "nothing was changed": not even an empty run dir left behind
                try:
                    self.path.parent.rmdir()
                except OSError:
                    pass
            raise RunDirUnwritable(
                f"run directory {self.path.parent} cannot be written: {e.strerror or e}"
                f"{f' ({e.filename})' if e.filename else ''}. Nothing was changed. Use a writable --config.run_root "
                "that you own, with free space") from None

    def _acquire(self) -> "RunDirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read(fd)
                os.close(fd)
                who = (f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
                       if holder else "another process")
                raise RunDirLocked(
                    f"run directory {self.path.parent} is in use by {who} (lock {self.path}). Nothing was changed. "
                    "Wait for it to finish or stop it, or train under another name (--config.name=<new name>)."
                ) from None
            # the holder may have removed the file between our open and flock: then lock the new file instead
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        old = _read(fd)
        if old and old.get("pid") != os.getpid():
            self.stale = old
        self.fd = fd
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(dict(pid=os.getpid(), host=socket.gethostname(),
                                          started=time.strftime("%Y-%m-%d %H:%M:%S"))).encode(), 0)
        except OSError:  # e.g. a full disk: give the lock back (and its file) before saying so
            self.release()
            raise
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            if os.fstat(self.fd).st_ino == os.stat(self.path).st_ino:
                self.path.unlink()
        except FileNotFoundError:
            pass
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except ValueError:
        return {}
