"""A training run's work directory: checked before anything is read, and
held by one trainer at a time.

The hold is an OS lock (`fcntl.flock`) on `WORKDIR/.gan_jax.lock`, which
also records the holder's host, pid and start time: the OS drops the lock
when the process ends however it ends (kill -9 included), so a dead
trainer never blocks the resume; the record names the holder for the
message, and says what to check on file systems whose locks are not
shared between hosts. `sample` and `eval` only read and take no lock.
"""
from __future__ import annotations

import datetime
import fcntl
import json
import os
import socket
import tempfile

import jax

from gan_jax.errors import UserError

LOCK_FILE = ".gan_jax.lock"
# Folders a run writes into, checked when they already exist.
OUTPUT_DIRS = ("checkpoints", "checkpoints_best", "samples", "eval", "generator", "tensorboard",
               "members")


class WorkdirError(UserError):
  """The work directory cannot be used: not a folder, not writable, or held
  by another trainer."""


def _probe(folder: str) -> None:
  try:
    fd, path = tempfile.mkstemp(prefix=".gan_jax_probe", dir=folder)
    os.close(fd)
    os.remove(path)
  except OSError as e:
    raise WorkdirError(f"cannot write in {folder}: {e.strerror or e}; training would fail at "
                       f"its first save (make it writable or choose another --workdir)") from e


def check_writable(workdir: str) -> None:
  """`workdir` is a folder (or can be made one) and every folder of it that
  a run writes into accepts a file: a probe file is created and removed."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f"--workdir {workdir} is a file, not a directory")
  if not os.path.exists(workdir):
    parent = os.path.dirname(os.path.abspath(workdir))
    while not os.path.exists(parent):
      parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
      raise WorkdirError(f"cannot create --workdir {workdir}: {parent} is a file")
    _probe(parent)
    return
  for folder in [workdir] + [os.path.join(workdir, d) for d in OUTPUT_DIRS]:
    if os.path.isdir(folder):
      _probe(folder)


class WorkdirLock:
  """Exclusive use of a work directory by one trainer (process 0 of a
  multi-process run; the others hold nothing). `acquire` creates the
  folder; it may be called again (no-op) and `release` ends the hold."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def acquire(self) -> None:
    if self._fd is not None or jax.process_index() != 0:
      return
    os.makedirs(self.workdir, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      holder = os.read(fd, 4096).decode(errors="replace").strip()
      os.close(fd)
      raise WorkdirError(f"{self.workdir} is in use by another trainer ({_describe(holder)}); "
                         f"wait for it or stop it. If that process is gone (on a file system "
                         f"that does not share locks between hosts), check the host and pid, "
                         f"then delete {self.path}") from None
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                             "started": datetime.datetime.now().isoformat(timespec="seconds")
                             }).encode())
    self._fd = fd

  def release(self) -> None:
    if self._fd is None:
      return
    os.ftruncate(self._fd, 0)
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def _describe(record: str) -> str:
  try:
    r = json.loads(record)
    return f"host {r['host']}, pid {r['pid']}, started {r['started']}"
  except (ValueError, KeyError, TypeError):
    return "holder unknown"
