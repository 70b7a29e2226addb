"""The training step and the training loop.

`train_step` is written per device in the pmap style: it sees its shard of
the global batch and averages gradients, BatchNorm statistics and metrics
with `lax.pmean` over the `data` axis. `make_train_step` maps it over every
device of a 1-D mesh with `jax.shard_map` under `jax.jit`, donating the state.
The same code runs on one device and on N.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from gan_jax import checkpointing, data, losses, models, outputs
from gan_jax.config import ConfigError
from gan_jax.state import GANState, create_state, make_optimizers

AXIS = "data"


@dataclasses.dataclass(frozen=True)
class Components:
  """The static parts of an experiment, built from its config."""
  g: Any
  d: Any
  g_tx: optax.GradientTransformation
  d_tx: optax.GradientTransformation
  loss: losses.AdversarialLoss
  latent_dim: int
  image_shape: tuple[int, int, int]


def build_components(config: ml_collections.ConfigDict) -> Components:
  g, d = models.build_models(config.model, axis_name=AXIS)
  g_tx, d_tx = make_optimizers(config.optim)
  return Components(g=g, d=d, g_tx=g_tx, d_tx=d_tx, loss=losses.get_loss(config.loss),
                    latent_dim=config.model.latent_dim,
                    image_shape=models.image_shape(config.model))


def train_step(state: GANState, batch: jax.Array, *, c: Components,
               axis_name: str = AXIS) -> tuple[GANState, dict[str, jax.Array]]:
  """One D update then one G update, on this device's shard of the batch."""
  b = batch.shape[0]
  # Noise for the global batch from the step's key; each device takes its rows,
  # so N devices draw exactly the noise one device would.
  key = jax.random.fold_in(state.rng, state.step)
  z = jax.random.normal(key, (b * jax.lax.psum(1, axis_name), c.latent_dim))
  z = jax.lax.dynamic_slice_in_dim(z, jax.lax.axis_index(axis_name) * b, b)
  # Replicated params are "invariant" to shard_map; gradients taken w.r.t.
  # invariant values come back already summed over devices. Marking them
  # per-device ("varying") gives per-device gradients, averaged by pmean below.
  local = lambda tree: jax.lax.pcast(tree, axis_name, to="varying")

  def generate(g_params):
    fake, upd = c.g.apply({"params": g_params, "batch_stats": state.g_batch_stats}, z,
                          train=True, mutable=["batch_stats"])
    return fake, upd["batch_stats"]
  # One G forward serves both updates (as in PyTorch's DCGAN): D sees it
  # without gradient, G backpropagates through it with the saved VJP.
  fake, g_vjp, g_batch_stats = jax.vjp(generate, local(state.g_params), has_aux=True)

  def d_objective(d_params):
    real_logits, upd = c.d.apply({"params": d_params, "batch_stats": state.d_batch_stats},
                                 batch, train=True, mutable=["batch_stats"])
    fake_logits, upd = c.d.apply({"params": d_params, **upd}, jax.lax.stop_gradient(fake),
                                 train=True, mutable=["batch_stats"])
    return c.loss.d(real_logits, fake_logits), (upd["batch_stats"], real_logits, fake_logits)
  (d_loss, (d_batch_stats, real_logits, fake_logits)), d_grads = jax.value_and_grad(
      d_objective, has_aux=True)(local(state.d_params))
  d_grads = jax.lax.pmean(d_grads, axis_name)
  d_updates, d_opt_state = c.d_tx.update(d_grads, state.d_opt_state, state.d_params)
  d_params = optax.apply_updates(state.d_params, d_updates)

  def g_objective(fake):
    logits, upd = c.d.apply({"params": d_params, "batch_stats": d_batch_stats}, fake,
                            train=True, mutable=["batch_stats"])
    return c.loss.g(logits), upd["batch_stats"]
  (g_loss, d_batch_stats), fake_grad = jax.value_and_grad(g_objective, has_aux=True)(fake)
  (g_grads,) = g_vjp(fake_grad)
  g_grads = jax.lax.pmean(g_grads, axis_name)
  g_updates, g_opt_state = c.g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)

  metrics = jax.lax.pmean({
      "d_loss": d_loss, "g_loss": g_loss,
      "d_real_logit": real_logits.mean(), "d_fake_logit": fake_logits.mean(),
  }, axis_name)
  metrics["d_grad_norm"] = optax.global_norm(d_grads)
  metrics["g_grad_norm"] = optax.global_norm(g_grads)
  # Synchronised BatchNorm already made the statistics equal on every device;
  # the pmean only tells shard_map so.
  g_batch_stats, d_batch_stats = jax.lax.pmean((g_batch_stats, d_batch_stats), axis_name)
  new_state = state.replace(
      step=state.step + 1, g_params=g_params, d_params=d_params,
      g_batch_stats=g_batch_stats, d_batch_stats=d_batch_stats,
      g_opt_state=g_opt_state, d_opt_state=d_opt_state)
  return new_state, metrics


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,))


def make_train_step(c: Components, mesh: jax.sharding.Mesh):
  """`train_step` over all devices of `mesh`: state replicated, batch split."""
  step = jax.shard_map(functools.partial(train_step, c=c), mesh=mesh,
                       in_specs=(P(), P(AXIS)), out_specs=(P(), P()))
  return jax.jit(step, donate_argnums=0)


def replicate(tree, mesh: jax.sharding.Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def init_state(config: ml_collections.ConfigDict, c: Components, mesh) -> GANState:
  state = jax.jit(functools.partial(
      create_state, config.seed, c.g, c.d, c.g_tx, c.d_tx, c.latent_dim, c.image_shape))()
  return replicate(state, mesh)


def make_generate(c: Components):
  """jitted (state, z) -> images, G in inference mode (running BatchNorm stats)."""
  @jax.jit
  def generate(state: GANState, z: jax.Array) -> jax.Array:
    return c.g.apply({"params": state.g_params, "batch_stats": state.g_batch_stats}, z,
                     train=False)
  return generate


def fixed_latents(config: ml_collections.ConfigDict, n: int) -> jax.Array:
  """The same latent batch for every sample grid of a run (GANMonitor)."""
  return jax.random.normal(jax.random.PRNGKey(config.seed + 1), (n, config.model.latent_dim))


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  return config.num_steps if config.num_steps > 0 else config.num_epochs * steps_per_epoch


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Values that would only fail deep inside training, checked up front."""
  def positive(*keys):
    for key in keys:
      if config[key] <= 0:
        raise ConfigError(f"config key '{key}' must be positive, got {config[key]}")
  positive("batch_size", "log_every", "sample_every", "checkpoint_every",
           "keep_checkpoints", "num_grid_samples")
  if config.num_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError("set num_epochs > 0 or num_steps > 0")
  if config.batch_size % num_devices:
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by the "
                      f"{num_devices} devices")
  lo, hi = config.data.pixel_range
  if not lo < hi:
    raise ConfigError(f"data.pixel_range must be (low, high) with low < high, got {(lo, hi)}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> GANState:
  """Trains (or resumes) the experiment in `workdir`; returns the final state."""
  mesh = make_mesh()
  validate_config(config, mesh.devices.size)
  c = build_components(config)
  # The data first: a bad dataset fails before the work directory is touched.
  source = data.TrainData(config.data, config.batch_size, config.seed, mesh,
                          image_shape=c.image_shape)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  state = init_state(config, c, mesh)
  ckpt = checkpointing.Checkpointer(workdir, keep=config.keep_checkpoints)
  state = ckpt.restore_latest(state)
  start = int(state.step)
  outputs.truncate_metrics(os.path.join(workdir, "metrics.jsonl"), start)
  total = num_train_steps(config, source.steps_per_epoch)
  if start:
    logging.info("resuming from step %d of %d", start, total)
  step_fn = make_train_step(c, mesh)
  generate = make_generate(c)
  z_grid = fixed_latents(config, config.num_grid_samples)
  writer = outputs.MetricWriter(workdir)
  pixel_range = tuple(config.data.pixel_range)

  pending: list[dict[str, jax.Array]] = []   # on device, not yet checked
  checked: list[dict[str, np.ndarray]] = []   # on host, finite, not yet logged
  t_last, step_last = time.perf_counter(), start
  bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
             disable=not config.progress_bar)
  batches = source.batches(start_step=start)
  try:
    for step in range(start, total):
      state, metrics = step_fn(state, next(batches))
      pending.append(metrics)
      done = step + 1
      bar.update(1)
      log_now = done % config.log_every == 0 or done == total
      save_now = done % config.checkpoint_every == 0 or done == total
      if log_now or save_now:
        # The only host syncs: every step's metrics are checked before a log
        # line or a checkpoint, so a diverged state is never saved.
        for i, m in enumerate(jax.device_get(pending)):
          outputs.check_finite(done - len(pending) + i + 1, m)
          checked.append(m)
        pending = []
      if log_now:
        row = {k: float(np.mean([m[k] for m in checked])) for k in checked[0]}
        checked = []
        now = time.perf_counter()
        row["steps_per_sec"] = (done - step_last) / (now - t_last)
        row["images_per_sec"] = row["steps_per_sec"] * config.batch_size
        row["epoch"] = done / source.steps_per_epoch
        t_last, step_last = now, done
        writer.write(done, row)
        bar.set_postfix(d_loss=f"{row['d_loss']:.3f}", g_loss=f"{row['g_loss']:.3f}")
      if done % config.sample_every == 0 or done == total:
        outputs.save_image_grid(np.asarray(generate(state, z_grid)),
                                os.path.join(workdir, "samples", f"step_{done:07d}.png"),
                                pixel_range)
      if save_now:
        ckpt.save(done, state)
  finally:
    bar.close()
    ckpt.close()
    writer.close()
  outputs.plot_losses(os.path.join(workdir, "metrics.jsonl"),
                      os.path.join(workdir, "losses.png"))
  return state
