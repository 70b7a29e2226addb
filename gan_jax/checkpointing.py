"""Orbax checkpoints of the GAN state: every N steps and at the end, keep the
last K, written asynchronously while training goes on."""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp
from absl import logging


class Checkpointer:
  """Thin wrapper over `ocp.CheckpointManager` for one state pytree."""

  def __init__(self, workdir: str, keep: int, read_only: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
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
