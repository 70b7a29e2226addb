"""Sweeps: K GANs in one program.

`--config.sweep.seeds=K` trains seeds seed .. seed+K-1; `--config.sweep.param=KEY
--config.sweep.param_values=(v1, v2, ...)` trains one member per value of a
learning rate or loss weight (`SWEEPABLE`), for each seed when both are set.
`train.train_and_evaluate` runs them as one program: the fused step is
`vmap`-ed over a leading member axis of the state, of the batches and of the
swept values (which are traced, so one compiled step serves every value).
Member i is exactly the single run of its config (`members(...)[i].config`):
its own initialisation, PRNG stream, data order and hyperparameters.

Outputs are per member, in `WORKDIR/members/NAME/`, laid out like a single
run's work directory (config.json with that member's seed and value,
metrics.jsonl, TensorBoard, samples/, checkpoints/, generator/, eval/,
losses.png), so `gan-jax sample|eval|train --workdir WORKDIR/members/NAME`
work on one member. Resuming restores every member from its own checkpoints.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gan_jax.errors import ConfigError
from gan_jax.penalties import PENALTIES

# Keys a sweep may vary: values the step can take as traced numbers, so they
# change no shape and no program structure.
SWEEPABLE = ("optim.g_lr", "optim.d_lr", "ema_decay", "penalty.*")


@dataclasses.dataclass(frozen=True)
class Member:
  config: ml_collections.ConfigDict   # the member's own single-run config
  workdir: str
  hparams: dict[str, float]           # {sweep.param: its value}; {} for a seed sweep

  @property
  def name(self) -> str:
    return os.path.basename(self.workdir)


def is_sweep(config: ml_collections.ConfigDict) -> bool:
  return bool(config.sweep.seeds or config.sweep.param)


def sweepable(key: str) -> bool:
  return key in SWEEPABLE or key.startswith("penalty.")


def validate_sweep(config: ml_collections.ConfigDict) -> None:
  s = config.sweep
  if s.seeds < 0:
    raise ConfigError(f"sweep.seeds must be >= 0 (0 = off), got {s.seeds}")
  if s.param and not sweepable(s.param):
    raise ConfigError(f"sweep.param={s.param!r} cannot be swept in one program; sweepable: "
                      f"{', '.join(SWEEPABLE)} (PENALTY: one of {sorted(PENALTIES)})")
  if s.param.startswith("penalty.") and s.param[len("penalty."):] not in PENALTIES:
    raise ConfigError(f"sweep.param={s.param!r}: no such penalty; penalties: "
                      f"{sorted(PENALTIES)}")
  if bool(s.param) != bool(len(s.param_values)):
    raise ConfigError("sweep.param and sweep.param_values go together: e.g. --config."
                      "sweep.param=optim.d_lr --config.sweep.param_values='(1e-4, 4e-4)'")
  try:
    values = [float(v) for v in s.param_values]
  except (TypeError, ValueError):
    raise ConfigError(f"sweep.param_values must be numbers, got "
                      f"{tuple(s.param_values)}") from None
  if len(set(values)) != len(values):
    raise ConfigError(f"sweep.param_values has repeated values: {tuple(s.param_values)}")


def _node(config: ml_collections.ConfigDict, key: str):
  """(the ConfigDict holding dotted `key`, its last part)."""
  *parents, leaf = key.split(".")
  for p in parents:
    config = config[p]
  return config, leaf


def members(config: ml_collections.ConfigDict, workdir: str) -> list[Member]:
  """The runs `config` trains: itself in `workdir`, or a sweep's members,
  value-major (for each value, each seed), in `workdir/members/NAME`."""
  validate_sweep(config)
  if not is_sweep(config):
    return [Member(config, workdir, {})]
  s = config.sweep
  out = []
  for value in [float(v) for v in s.param_values] or [None]:
    for seed in range(config.seed, config.seed + max(s.seeds, 1)):
      m = ml_collections.ConfigDict(config.to_dict())
      m.seed = seed
      m.sweep.seeds, m.sweep.param, m.sweep.param_values = 0, "", ()
      name, hparams = f"seed_{seed}", {}
      if value is not None:
        node, leaf = _node(m, s.param)
        node[leaf] = value
        name, hparams = f"{s.param}={value!r}_seed_{seed}", {s.param: value}
      m.lock()
      out.append(Member(m, os.path.join(workdir, "members", name), hparams))
  return out


def static_config(config: ml_collections.ConfigDict, runs: list[Member]) -> ml_collections.ConfigDict:
  """The config whose static structure serves every member: a swept penalty
  is in the step if any member uses it (a member with weight 0 adds 0 x it)."""
  if not config.sweep.param:
    return runs[0].config
  return max(runs, key=lambda m: abs(m.hparams[config.sweep.param])).config


def stacked_hparams(runs: list[Member]) -> dict[str, np.ndarray]:
  """Each swept key -> its (K,) float32 values, one per member."""
  return {k: np.asarray([m.hparams[k] for m in runs], np.float32) for k in runs[0].hparams}


def stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree: Any, i: int):
  return jax.tree.map(lambda x: x[i], tree)
