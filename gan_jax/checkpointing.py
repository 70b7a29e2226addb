"""Orbax checkpoints of the GAN state: every N steps and at the end, keep the
last K, written asynchronously while training goes on.

Faults:

- A save cut short (kill -9, power loss) leaves only Orbax's temporary
  `<step>.orbax-checkpoint-tmp-<time>` directory: Orbax writes a step there
  and commits it by renaming it to `<step>`, never lists a temporary
  directory as a step, and (`cleanup_tmp_directories`) deletes it when a
  writer opens the directory. Resuming takes the last complete step.
- A checkpoint that does not restore (a truncated or missing file) is
  skipped with a warning for the one before it, and moved aside to
  `<step>.corrupt` so training can write that step again.
- A checkpoint whose shapes do not fit the config is a
  `CheckpointMismatchError` naming every entry, found from the checkpoint's
  metadata before any array is read (a config problem, not corruption).
- `StopOnSignal` turns SIGTERM / SIGINT into a flag the training loop polls,
  so a preempted run checkpoints the step it reached and exits cleanly.
"""
from __future__ import annotations

import hashlib
import json
import logging as logging_std
import math
import os
import signal
import sys
import threading
import traceback

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from absl import logging

from gan_jax.errors import ConfigError, UserError


class CheckpointError(UserError, ValueError):
  """No checkpoint of a directory restores."""


class NoCheckpointError(UserError, FileNotFoundError):
  """A directory has no checkpoint (at the step asked for)."""


class CheckpointMismatchError(ConfigError):
  """A checkpoint's arrays do not have the shapes the config gives them."""


def _path_name(path) -> str:
  """A key path as 'g_params/Dense_0/kernel': dict keys, attribute names and
  sequence indices alike, so a GANState and Orbax's metadata (plain dicts
  and lists) name an entry the same way."""
  parts = []
  for k in path:
    for attr in ("key", "name", "idx"):
      if hasattr(k, attr):
        parts.append(str(getattr(k, attr)))
        break
    else:
      parts.append(str(k))
  return "/".join(parts)


def _shapes(tree) -> dict[str, tuple[int, ...]]:
  leaves = jax.tree_util.tree_flatten_with_path(
      tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
  return {_path_name(p): tuple(x.shape) for p, x in leaves if hasattr(x, "shape")}


def shape_mismatches(saved, target) -> list[str]:
  """'entry: checkpoint S vs config T' (or where only one side has it) for
  every entry of `saved` (checkpoint metadata) and `target` that differs."""
  have, want = _shapes(saved), _shapes(target)
  out = []
  for name in sorted(have.keys() | want.keys()):
    if name not in want:
      out.append(f"{name}: checkpoint {have[name]}, not in config")
    elif name not in have:
      out.append(f"{name}: config {want[name]}, not in checkpoint")
    elif have[name] != want[name]:
      out.append(f"{name}: checkpoint {have[name]} vs config {want[name]}")
  return out


def _first_line(e: BaseException, limit: int = 300) -> str:
  """`Type: first line of the message` of the root cause (Orbax wraps the
  TensorStore error that names the file in pages of JSON), shortened."""
  while e.__cause__ is not None:
    e = e.__cause__
  text = str(e).strip().splitlines()
  text = text[0] if text else ""
  text = text if len(text) <= limit else text[:limit] + "..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _orbax_leftover(exc_type, exc, tb, obj=None) -> bool:
  """Noise that a failed Orbax restore leaves behind once it has raised:
  its abandoned read coroutines (each prints a page of TensorStore spec when
  collected), their never-retrieved futures, and TensorStore callbacks into
  the event loop Orbax has closed."""
  code = getattr(obj, "cr_code", None)
  if code is not None and "orbax" in code.co_filename:
    return True
  frames = traceback.extract_tb(tb) if tb is not None else []
  if exc_type is RuntimeError and str(exc) == "Event loop is closed":
    return any(f.name == "call_soon_threadsafe" for f in frames)
  return any("orbax" in f.filename for f in frames)


class _NoOrbaxLeftovers(logging_std.Filter):
  def filter(self, record) -> bool:
    return not (record.exc_info and "never retrieved" in record.getMessage()
                and _orbax_leftover(*record.exc_info))


_quiet = False


def _quiet_orbax_leftovers() -> None:
  """After a restore failed (and was reported, in one warning), drops its
  leftovers from stderr for the rest of the process: they come from Orbax's
  threads and garbage collection, seconds later."""
  global _quiet
  if _quiet:
    return
  _quiet = True
  previous = sys.unraisablehook

  def hook(unraisable):
    if not _orbax_leftover(unraisable.exc_type, unraisable.exc_value,
                           unraisable.exc_traceback, unraisable.object):
      previous(unraisable)
  sys.unraisablehook = hook
  logging_std.getLogger("asyncio").addFilter(_NoOrbaxLeftovers())


class _NoReadOnlyNotice(logging_std.Filter):
  """Orbax's warning that a read-only manager is read only: `sample` and
  `eval` ask for exactly that, so it asks nothing of the user."""

  def filter(self, record) -> bool:
    return not record.getMessage().startswith("Given directory is read only=")


class _NoOrbaxSaveErrors(logging_std.Filter):
  """Orbax's own error logs (with tracebacks) of a save failing in its
  background threads: `Checkpointer.wait` raises the failure as one line."""

  def filter(self, record) -> bool:
    return not (record.levelno >= logging_std.ERROR and "orbax" in record.pathname)


def _add_absl_filter(kind: type) -> None:
  absl_logger = logging_std.getLogger("absl")
  if not any(isinstance(f, kind) for f in absl_logger.filters):
    absl_logger.addFilter(kind())


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for one state pytree."""

  def __init__(self, workdir: str, keep: int, read_only: bool = False,
               subdir: str = "checkpoints"):
    self.directory = os.path.abspath(os.path.join(workdir, subdir))
    self.read_only = read_only
    self._pending: int | None = None   # the step of the save in flight
    _add_absl_filter(_NoReadOnlyNotice if read_only else _NoOrbaxSaveErrors)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            # Read only: the values Orbax would otherwise set with a warning each.
            max_to_keep=None if read_only else keep, create=not read_only,
            save_interval_steps=0 if read_only else 1,
            read_only=read_only, enable_async_checkpointing=True,
            # Half-written steps of a killed run (never listed as steps).
            cleanup_tmp_directories=not read_only,
            # Several managers save the same step at once (a sweep's members,
            # the best checkpoint): each needs its own cross-process barriers.
            # Named from the path as given, the same on every process.
            multiprocessing_options=ocp.options.MultiprocessingOptions(
                barrier_sync_key_prefix=hashlib.sha1(
                    os.path.normpath(os.path.join(workdir, subdir)).encode()).hexdigest()[:12])),
        # Known up front, so a step's metadata reads before any restore.
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def check_fits(self, target, step: int) -> None:
    """Raises CheckpointMismatchError naming each entry of checkpoint `step`
    whose shape differs from `target`'s; other errors (unreadable metadata)
    are left to the caller."""
    saved = self._saved_tree(step)
    if not _shapes(saved):
      raise ValueError(f"checkpoint {step} has no readable array metadata")
    bad = shape_mismatches(saved, target)
    if bad:
      raise CheckpointMismatchError(
          f"checkpoint {step} in {self.directory} does not fit this config (trained with "
          f"other model settings?): " + "; ".join(bad))

  def restore(self, target, step: int | None = None):
    """Restores `step` (default: latest) into the shapes, dtypes and shardings of `target`."""
    steps = self.manager.all_steps()
    if not steps:
      raise NoCheckpointError(f"no checkpoint in {self.directory}")
    step = max(steps) if step is None else step
    if step not in steps:
      raise NoCheckpointError(f"no checkpoint of step {step} in {self.directory}; "
                              f"steps: {sorted(steps)}")
    self.check_fits(target, step)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    saved = self._saved_tree(step)
    if getattr(target, "aux", None) == {} and isinstance(saved, dict) and "aux" not in saved:
      # Saved before penalties had state (GANState.aux): the same state without it.
      fields = {k: getattr(abstract, k) for k in saved}
      restored = self.manager.restore(step, args=ocp.args.StandardRestore(fields))
      return target.replace(**restored)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def _saved_tree(self, step: int):
    metadata = self.manager.metadata(step).item_metadata
    return getattr(metadata, "tree", metadata)

  def restore_latest(self, target):
    """The latest checkpoint that restores, else `target` unchanged if there
    is none. A step that fails to restore is reported and skipped for the
    one before it; a config that does not fit is an error at once."""
    steps = sorted(self.manager.all_steps(), reverse=True)
    failed = []
    for step in steps:
      logging.info("restoring checkpoint %d from %s", step, self.directory)
      try:
        state = self.restore(target, step)
      except CheckpointMismatchError:
        raise
      except Exception as e:  # noqa: BLE001 - any failure to read means a damaged step
        error = _first_line(e)
      else:
        self._set_aside([s for s, _ in failed])
        return state
      _quiet_orbax_leftovers()
      failed.append((step, error))
      logging.warning("checkpoint %d in %s does not restore (%s); trying the one before it",
                      step, self.directory, error)
    if failed:
      raise CheckpointError(
          f"no checkpoint in {self.directory} restores: " + "; ".join(
              f"step {s}: {e}" for s, e in failed) +
          "; move that directory away to start from scratch")
    return target

  def _set_aside(self, steps: list[int]) -> None:
    """Renames damaged steps to `<step>.corrupt` (kept for inspection, no
    longer a step), so training can save those steps again."""
    if self.read_only or not steps:
      return
    for step in steps if jax.process_index() == 0 else ():   # one process renames
      src = os.path.join(self.directory, str(step))
      if not os.path.isdir(src):
        continue
      dst, n = src + ".corrupt", 1
      while os.path.exists(dst):
        dst, n = f"{src}.corrupt{n}", n + 1
      os.rename(src, dst)
      logging.warning("moved the damaged checkpoint %d to %s", step, dst)
    if jax.process_count() > 1:   # every process sees the renamed steps gone
      multihost_utils.sync_global_devices(f"gan_jax set aside {self.directory}")
    self.manager.reload()

  def save(self, step: int, state) -> bool:
    """Saves now; the caller decides when (Orbax's own interval logic would
    also save the first step it sees). A save that fails, here or in the
    background (reported by the next save or `wait`), is one CheckpointError
    naming its step, the folder and the OS error."""
    self.wait()   # as Orbax does before a save; a failure is the previous step's
    self._pending = step
    try:
      return self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    except Exception as e:  # noqa: BLE001 - Orbax wraps the OS error in its own types
      raise self._save_failed(e, step) from e

  def wait(self) -> None:
    """Blocks until every save started so far is committed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._save_failed(e, self._pending) from e

  def _save_failed(self, e: BaseException, step: int | None) -> CheckpointError:
    _quiet_orbax_leftovers()
    what = f"checkpoint {step}" if step is not None else "a checkpoint"
    return CheckpointError(f"could not save {what} in {self.directory}: {_first_line(e)}; "
                           f"checkpoints up to the last one saved are kept")

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self.manager.close()


class StopOnSignal:
  """SIGTERM and SIGINT set a flag (`signum`) instead of killing the process,
  between `install()` and `uninstall()` (only in the main thread, where
  Python runs signal handlers); the training loop polls it, saves and stops.

  Only the first signal counts: a second one (another Ctrl-C while the final
  checkpoint is written) is ignored, so nothing is cut halfway. kill -9
  still ends the process at once and leaves the last complete checkpoint.

  Several processes must stop at the same step (the checkpoint is written
  collectively), though a signal may reach them at different steps or reach
  only one. There, SIGTERM is left to JAX's preemption service (installed by
  `jax.distributed.initialize`), which tells every process and agrees on a
  step; SIGINT is passed on to it as a SIGTERM; `should_stop` asks it."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signum: int | None = None       # the first signal received
    self.stopped_at: int | None = None   # the step training stopped at because of it
    self._previous: dict = {}

  @property
  def requested(self) -> bool:
    return self.signum is not None

  @property
  def name(self) -> str:
    return signal.Signals(self.signum).name if self.signum else ""

  def _handle(self, signum, frame) -> None:
    # No I/O here: printing while the interrupted main thread prints raises
    # "reentrant call".
    if self.signum is None:
      self.signum = signum

  def _forward(self, signum, frame) -> None:
    self._handle(signum, frame)
    os.kill(os.getpid(), signal.SIGTERM)   # to JAX's preemption notifier

  def install(self) -> None:
    if threading.current_thread() is not threading.main_thread():
      return
    if jax.process_count() > 1:
      self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._forward)
      return
    for s in self.SIGNALS:
      self._previous[s] = signal.signal(s, self._handle)

  def should_stop(self, call: int) -> bool:
    """Whether to stop after this run's `call`-th compiled call (0, 1, ...,
    the same sequence on every process): a signal arrived; on several
    processes, once all of them have reached the call they agreed on."""
    if jax.process_count() == 1:
      return self.requested
    if multihost_utils.reached_preemption_sync_point(call):
      self.signum = self.signum or signal.SIGTERM
      return True
    return False

  def uninstall(self) -> None:
    for s, handler in self._previous.items():
      # None: a handler not set from Python; the default is the best guess.
      signal.signal(s, signal.SIG_DFL if handler is None else handler)
    self._previous = {}

  def stopped(self, step: int) -> None:
    """Records and reports that training stopped at `step`, checkpointed."""
    self.stopped_at = step
    print(f"stopped by {self.name} at step {step}; checkpoint saved", file=sys.stderr,
          flush=True)


class BestCheckpoint:
  """The state with the best score so far in `checkpoints_best/` (one kept),
  and that score, its step and its protocol in `best.json`."""

  def __init__(self, workdir: str, metric: str, higher_is_better: bool):
    self.metric, self.higher = metric, higher_is_better
    self.json_path = os.path.join(workdir, "best.json")
    self.ckpt = Checkpointer(workdir, keep=1, subdir="checkpoints_best")
    self.best = None
    if os.path.exists(self.json_path):  # resumed run: beat the earlier best
      with open(self.json_path) as f:
        self.best = json.load(f)["value"]

  def update(self, step: int, state, report: dict) -> bool:
    value = report["scores"][self.metric]
    better = self.best is None or (value > self.best if self.higher else value < self.best)
    if not (better and math.isfinite(value)):
      return False
    self.ckpt.save(step, state)
    self.best = value
    tmp = self.json_path + ".tmp"
    with open(tmp, "w") as f:
      json.dump({"metric": self.metric, "value": value, "step": step, **report}, f, indent=2)
    os.replace(tmp, self.json_path)
    return True

  def close(self) -> None:
    self.ckpt.close()
