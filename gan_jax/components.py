"""An experiment's static parts, built from its config: models, optimisers,
loss and penalties (`Components`, frozen and passed into the step), the
initial state, latents and the inference-mode generator."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from gan_jax import (augment as augment_lib, losses, mesh as mesh_lib, models,
                     penalties as penalties_lib, registry)
from gan_jax.state import GANState, create_state, make_optimizers


@dataclasses.dataclass(frozen=True)
class Components:
  """The static parts of an experiment, built from its config."""
  g: Any
  d: Any
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  loss: losses.Loss
  # (name, registered penalty, weight > 0), in config order
  penalties: tuple[tuple[str, penalties_lib.Penalty, float], ...]
  latent_dim: int
  latent_dist: str
  image_shape: tuple[int, int, int]
  d_steps: int = 1
  d_weight_clip: float = 0.0
  real_label: float = 1.0
  real_label_noise: float = 0.0
  ema_decay: float = 0.0
  ema_start: int = 0
  num_classes: int = 0          # > 0: G and D take labels
  class_loss_weight: float = 1.0   # an ACGAN head's class loss
  augment: tuple[str, ...] = ()    # DiffAugment policy (gan_jax.augment), before D
  augment_p: float = 1.0
  ada_target: float = 0.0       # > 0: p adapts (its state in aux[ADA_KEY])
  ada_images: float = 500_000.0
  pixel_range: tuple[float, float] = (-1.0, 1.0)

  @property
  def conditional(self) -> bool:
    return self.num_classes > 0

  @property
  def smooth_labels(self) -> bool:
    return self.real_label != 1.0 or self.real_label_noise != 0.0

  def penalties_on(self, side: str):
    """(index, name, penalty, weight) of the penalties acting on `side`;
    the index keys each penalty's random draws."""
    return [(j, n, p, w) for j, (n, p, w) in enumerate(self.penalties) if p.on == side]


def build_components(config: ml_collections.ConfigDict) -> Components:
  registry.import_modules(config.imports)
  g, d = models.build_models(config.model, config.data.pixel_range, axis_name=mesh_lib.AXIS)
  g_tx, d_tx = make_optimizers(config.optim)
  return Components(
      g=g, d=d, g_tx=g_tx, d_tx=d_tx, loss=losses.get_loss(config.loss),
      penalties=penalties_lib.active(config.penalty), latent_dim=config.model.latent_dim,
      latent_dist=config.model.latent_dist, image_shape=models.image_shape(config.model),
      d_steps=config.d_steps, d_weight_clip=config.d_weight_clip,
      real_label=config.real_label, real_label_noise=config.real_label_noise,
      ema_decay=config.ema_decay, ema_start=config.ema_start,
      num_classes=config.model.num_classes, class_loss_weight=config.class_loss_weight,
      augment=augment_lib.parse_policy(config.augment.policy), augment_p=config.augment.p,
      ada_target=config.augment.ada_target, ada_images=float(config.augment.ada_images),
      pixel_range=tuple(float(v) for v in config.data.pixel_range))


def with_hparams(c: Components, optim_config: Any, hparams: dict[str, Any]) -> Components:
  """`c` with one sweep member's values (traced scalars, see gan_jax.sweep)
  in place of the config's: learning rates, penalty weights, EMA decay."""
  if not hparams:
    return c
  lrs = {k.split(".")[1]: v for k, v in hparams.items() if k.startswith("optim.")}
  g_tx, d_tx = make_optimizers(optim_config, **lrs) if lrs else (c.g_tx, c.d_tx)
  return dataclasses.replace(
      c, g_tx=g_tx, d_tx=d_tx, ema_decay=hparams.get("ema_decay", c.ema_decay),
      penalties=tuple((n, p, hparams.get(f"penalty.{n}", w)) for n, p, w in c.penalties))


def sample_latents(key: jax.Array, n: int, c: Components) -> jax.Array:
  if c.latent_dist == "uniform":
    return jax.random.uniform(key, (n, c.latent_dim), minval=-1.0, maxval=1.0)
  return jax.random.normal(key, (n, c.latent_dim))


# The adaptive augmentation probability's place in GANState.aux (beside the
# penalties' states, keyed by their names, which cannot start with '_').
ADA_KEY = "_ada"


def sample_labels(key: jax.Array, n: int, c: Components) -> jax.Array:
  """Generated labels, uniform over the classes."""
  return jax.random.randint(key, (n,), 0, c.num_classes, jnp.int32)


def init_state(config: ml_collections.ConfigDict, c: Components, mesh) -> GANState:
  aux = {n: p.init_state() for n, p, _ in c.penalties if p.stateful}
  if c.ada_target:
    aux[ADA_KEY] = {"p": jnp.asarray(c.augment_p, jnp.float32)}
  state = jax.jit(functools.partial(
      create_state, config.seed, c.g, c.d, c.g_tx, c.d_tx, c.latent_dim, c.image_shape,
      aux, c.num_classes))()
  return mesh_lib.replicate(state, mesh)


def generator_variables(state: GANState) -> dict[str, Any]:
  """G's variables for sampling: the EMA params (a copy of G's own params
  when ema_decay is 0) with the running BatchNorm statistics."""
  return {"params": state.g_ema_params, "batch_stats": state.g_batch_stats}


def make_generate(c: Components):
  """jitted (state, z[, labels]) -> images, G in inference mode (labels:
  a conditional G's classes, one per latent)."""
  @jax.jit
  def generate(state: GANState, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    args = (z,) if labels is None else (z, labels)
    return c.g.apply(generator_variables(state), *args, train=False)
  return generate


def class_rows(c: Components, n: int) -> tuple[np.ndarray | None, int | None]:
  """A conditional sample grid's labels, one row per class of max(1, n //
  classes) images (and that row length); (None, None) when unconditional."""
  if not c.conditional:
    return None, None
  cols = max(1, n // c.num_classes)
  return np.repeat(np.arange(c.num_classes, dtype=np.int32), cols), cols


def fixed_latents(config: ml_collections.ConfigDict, c: Components, n: int) -> jax.Array:
  """The same latent batch for every sample grid of a run (GANMonitor)."""
  return sample_latents(jax.random.PRNGKey(config.seed + 1), n, c)


def grid_inputs(config: ml_collections.ConfigDict, c: Components, n: int
                ) -> tuple[jax.Array, np.ndarray | None, int | None]:
  """The fixed latents of the run's sample grids, with their labels and row
  length for a conditional G (one row per class)."""
  labels, cols = class_rows(c, n)
  return fixed_latents(config, c, n if labels is None else len(labels)), labels, cols


def eval_labels(n: int, c: Components) -> np.ndarray | None:
  """The classes a conditional G is evaluated on: n samples, balanced."""
  return np.arange(n, dtype=np.int32) % c.num_classes if c.conditional else None


def evaluate_state(evaluator, generate, state: GANState, latents: jax.Array,
                   labels: np.ndarray | None = None) -> dict[str, Any]:
  """`evaluator`'s report (gan_jax.evaluation.Evaluator) on G's samples of
  `latents` (and `labels`, for a conditional G) (EMA params, inference
  mode), with the state's step."""
  report = evaluator.score_generator(lambda z, y=None: generate(state, z, y), latents, labels)
  return {"step": int(state.step), **report}
