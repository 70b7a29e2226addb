"""When the training loop does what: the number of steps, the events after
each step (log, checkpoint, export, samples, evaluation) and the sizes of
the fused calls between them."""
from __future__ import annotations

from typing import Iterator, NamedTuple

import ml_collections


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  return config.num_steps if config.num_steps > 0 else config.num_epochs * steps_per_epoch


def _every(count: int, period: int) -> bool:
  """True every `period` counts; never when period is 0 (off)."""
  return period > 0 and count % period == 0


class Events(NamedTuple):
  """What the training loop does after a step, besides training."""
  log: bool
  save: bool
  export: bool
  sample: bool
  epoch: int
  eval: bool = False

  def any(self) -> bool:
    return self.log or self.save or self.export or self.sample or self.eval


def events_after(done: int, total: int, config: ml_collections.ConfigDict,
                 steps_per_epoch: int) -> Events:
  epoch, rest = divmod(done, steps_per_epoch)
  epoch_end, last = rest == 0, done == total
  return Events(
      log=last or _every(done, config.log_every),
      save=last or _every(done, config.checkpoint_every),
      export=last or (epoch_end and _every(epoch, config.export_generator_every_epochs)),
      sample=last or _every(done, config.sample_every) or (
          epoch_end and _every(epoch, config.sample_every_epochs)),
      epoch=epoch,
      eval=config.eval.every > 0 and (last or _every(done, config.eval.every)))


def chunk_sizes(start: int, total: int, k: int, has_event) -> Iterator[int]:
  """Steps per fused call from `start` to `total`: k where no event falls
  inside the chunk (only after its last step), else single steps. Two
  compiled programs at most (k and 1)."""
  step = start
  while step < total:
    n = k if step + k <= total and not any(has_event(step + i) for i in range(1, k)) else 1
    yield n
    step += n
