"""Orbax checkpoints of the GAN state: every N steps and at the end, keep the
last K, written asynchronously while training goes on."""
from __future__ import annotations

import json
import math
import os

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for one state pytree."""

  def __init__(self, workdir: str, keep: int, read_only: bool = False,
               subdir: str = "checkpoints"):
    self.directory = os.path.abspath(os.path.join(workdir, subdir))
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only,
            read_only=read_only, enable_async_checkpointing=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def restore(self, target, step: int | None = None):
    """Restores `step` (default: latest) into the shapes, dtypes and shardings of `target`."""
    step = self.manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_latest(self, target):
    """The latest checkpoint if there is one, else `target` unchanged."""
    if self.manager.latest_step() is None:
      return target
    logging.info("restoring checkpoint %d from %s", self.manager.latest_step(), self.directory)
    return self.restore(target)

  def save(self, step: int, state) -> bool:
    """Saves now; the caller decides when (Orbax's own interval logic would
    also save the first step it sees)."""
    return self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


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
