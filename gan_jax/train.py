"""The training step and the training loop.

`train_step` is written per device in the pmap style: it sees its shard of
the global batch and averages gradients, BatchNorm statistics and metrics
with `lax.pmean` over the `data` axis. `make_train_step` maps it over every
device of a 1-D mesh with `jax.shard_map` under `jax.jit`, donating the state.
The same code runs on one device and on N. `make_train_steps` fuses k steps
into one call (`lax.scan`), optionally gathering each batch from a dataset
held on device; `train_and_evaluate` runs the loop with it.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from gan_jax import checkpointing, data, evaluation, losses, models, outputs, sweep
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
  loss: losses.Loss
  penalties: tuple[tuple[str, float], ...]   # (name in losses.PENALTIES, weight > 0)
  latent_dim: int
  latent_dist: str
  image_shape: tuple[int, int, int]
  d_steps: int = 1
  d_weight_clip: float = 0.0
  real_label: float = 1.0
  real_label_noise: float = 0.0
  ema_decay: float = 0.0
  ema_start: int = 0

  @property
  def smooth_labels(self) -> bool:
    return self.real_label != 1.0 or self.real_label_noise != 0.0


LATENT_DISTS = ("normal", "uniform")


def build_components(config: ml_collections.ConfigDict) -> Components:
  g, d = models.build_models(config.model, config.data.pixel_range, axis_name=AXIS)
  g_tx, d_tx = make_optimizers(config.optim)
  penalties = tuple((name, float(w)) for name, w in config.penalty.items() if w)
  for name, w in penalties:
    if name not in losses.PENALTIES:
      raise ConfigError(f"unknown penalty {name!r}; registered: {sorted(losses.PENALTIES)}")
    if w < 0:
      raise ConfigError(f"penalty.{name} must be >= 0, got {w}")
  c = Components(
      g=g, d=d, g_tx=g_tx, d_tx=d_tx, loss=losses.get_loss(config.loss), penalties=penalties,
      latent_dim=config.model.latent_dim, latent_dist=config.model.latent_dist,
      image_shape=models.image_shape(config.model), d_steps=config.d_steps,
      d_weight_clip=config.d_weight_clip, real_label=config.real_label,
      real_label_noise=config.real_label_noise, ema_decay=config.ema_decay,
      ema_start=config.ema_start)
  if c.smooth_labels and not losses.takes_real_target(c.loss):
    raise ConfigError(f"loss {config.loss!r} has no real-label target, so real_label / "
                      f"real_label_noise (label smoothing) cannot apply; losses that take one: "
                      f"{sorted(n for n, f in losses.LOSSES.items() if losses.takes_real_target(f))}")
  if c.latent_dist not in LATENT_DISTS:
    raise ConfigError(f"model.latent_dist must be one of {LATENT_DISTS}, got {c.latent_dist!r}")
  if c.d_steps < 1:
    raise ConfigError(f"d_steps must be >= 1, got {c.d_steps}")
  if not 0.0 <= c.ema_decay < 1.0:
    raise ConfigError(f"ema_decay must be in [0, 1), got {c.ema_decay}")
  return c


def with_hparams(c: Components, optim_config: Any, hparams: dict[str, Any]) -> Components:
  """`c` with one sweep member's values (traced scalars, see gan_jax.sweep)
  in place of the config's: learning rates, penalty weights, EMA decay."""
  if not hparams:
    return c
  lrs = {k.split(".")[1]: v for k, v in hparams.items() if k.startswith("optim.")}
  g_tx, d_tx = make_optimizers(optim_config, **lrs) if lrs else (c.g_tx, c.d_tx)
  return dataclasses.replace(
      c, g_tx=g_tx, d_tx=d_tx, ema_decay=hparams.get("ema_decay", c.ema_decay),
      penalties=tuple((n, hparams.get(f"penalty.{n}", w)) for n, w in c.penalties))


def sample_latents(key: jax.Array, n: int, c: Components) -> jax.Array:
  if c.latent_dist == "uniform":
    return jax.random.uniform(key, (n, c.latent_dim), minval=-1.0, maxval=1.0)
  return jax.random.normal(key, (n, c.latent_dim))


def _local_rows(key, draw, b: int, axis_name: str):
  """`draw(key, n)` for the global batch, then this device's `b` rows: N
  devices draw exactly the numbers one device would."""
  rows = draw(key, b * jax.lax.psum(1, axis_name))
  return jax.lax.dynamic_slice_in_dim(rows, jax.lax.axis_index(axis_name) * b, b)


def train_step(state: GANState, batch: jax.Array, *, c: Components,
               axis_name: str = AXIS) -> tuple[GANState, dict[str, jax.Array]]:
  """`c.d_steps` D updates, each on its own slice of the batch, then one G
  update, on this device's shard. The batch holds `d_steps` consecutive
  critic batches: its rows are (d_steps, per-device batch) in order."""
  b = batch.shape[0] // c.d_steps
  reals = batch.reshape(c.d_steps, b, *batch.shape[1:])
  key = jax.random.fold_in(state.rng, state.step)
  z_key, drop_key, pen_key, label_key = jax.random.split(key, 4)
  # Dropout masks and penalty draws (interpolation weights, perturbations)
  # are per device: each device draws for its own rows, with its own key.
  drop_key, pen_key = (jax.random.fold_in(k, jax.lax.axis_index(axis_name))
                       for k in (drop_key, pen_key))
  latents = lambda i: _local_rows(jax.random.fold_in(z_key, i),
                                  lambda k, n: sample_latents(k, n, c), b, axis_name)
  # Replicated params are "invariant" to shard_map; gradients taken w.r.t.
  # invariant values come back already summed over devices. Marking them
  # per-device ("varying") gives per-device gradients, averaged by pmean below.
  # On one device the averages are identities; skipping them spares XLA:CPU
  # copying every gradient through an all-reduce (FC GAN step 40 -> 25 ms).
  single = jax.lax.axis_size(axis_name) == 1
  local = lambda tree: tree if single else jax.lax.pcast(tree, axis_name, to="varying")
  pmean = lambda tree: tree if single else jax.lax.pmean(tree, axis_name)

  def generate(g_params, g_stats, z):
    fake, upd = c.g.apply({"params": g_params, "batch_stats": g_stats}, z,
                          train=True, mutable=["batch_stats"])
    return fake, upd.get("batch_stats", {})

  def discriminate(d_params, d_stats, x, key):
    logits, upd = c.d.apply({"params": d_params, "batch_stats": d_stats}, x, train=True,
                            mutable=["batch_stats"], rngs={"dropout": key})
    return logits, upd.get("batch_stats", {})

  def loss_terms(real_logits, fake_logits, real_target):
    kwargs = {"real_target": real_target} if c.smooth_labels else {}
    return c.loss(real_logits, fake_logits, **kwargs)

  def d_update(d, real, fake, i):
    """One D update on (real, fake); `d` = (params, opt_state, batch_stats)."""
    d_params, d_opt_state, d_stats = d
    k = lambda j: jax.random.fold_in(drop_key, 4 * i + j)
    real_target = c.real_label + c.real_label_noise * _local_rows(
        jax.random.fold_in(label_key, i), lambda key, n: jax.random.uniform(key, (n,)),
        b, axis_name)

    def objective(d_params):
      real_logits, stats = discriminate(d_params, d_stats, real, k(0))
      fake_logits, stats = discriminate(d_params, stats, fake, k(1))
      loss = loss_terms(real_logits, fake_logits, real_target)[0]
      terms = {"d_adv_loss": loss}
      # The critic seen by the penalties: train mode, statistics updates dropped.
      critic = lambda x: discriminate(d_params, stats, x, k(2))[0]
      for j, (name, weight) in enumerate(c.penalties):
        value = losses.PENALTIES[name](critic, real, fake, jax.random.fold_in(
            jax.random.fold_in(pen_key, i), j))
        terms[f"penalty_{name}"] = value
        loss = loss + weight * value
      return loss, (stats, real_logits, fake_logits, terms)

    (loss, (stats, real_logits, fake_logits, terms)), grads = jax.value_and_grad(
        objective, has_aux=True)(local(d_params))
    grads = pmean(grads)
    updates, d_opt_state = c.d_tx.update(grads, d_opt_state, d_params)
    d_params = optax.apply_updates(d_params, updates)
    if c.d_weight_clip:
      d_params = losses.clip_weights(d_params, c.d_weight_clip)
    metrics = {"d_loss": loss, "d_real_logit": real_logits.mean(),
               "d_fake_logit": fake_logits.mean(), **terms,
               "d_grad_norm": optax.global_norm(grads)}
    return (d_params, d_opt_state, stats), metrics, real_logits

  d = (state.d_params, state.d_opt_state, state.d_batch_stats)
  g_stats = state.g_batch_stats
  if c.d_steps > 1:
    # The first d_steps - 1 critic updates on fakes drawn without gradient.
    # Unrolled: a rolled loop over a GAN update is ~45x slower on XLA:CPU.
    def critic_step(carry, i):
      d, g_stats = carry
      fake, g_stats = generate(state.g_params, g_stats, latents(i))
      d, _, _ = d_update(d, reals[i], fake, i)
      return (d, g_stats), None
    (d, g_stats), _ = jax.lax.scan(critic_step, (d, g_stats), jnp.arange(c.d_steps - 1),
                                   unroll=True)
  # The last critic update and the G update share one G forward (as PyTorch's
  # DCGAN does): D sees it without gradient, G backpropagates through the
  # saved VJP.
  last = c.d_steps - 1
  fake, g_vjp, g_stats = jax.vjp(lambda p: generate(p, g_stats, latents(last)),
                                 local(state.g_params), has_aux=True)
  (d_params, d_opt_state, d_stats), metrics, real_logits = d_update(
      d, reals[last], jax.lax.stop_gradient(fake), last)

  def g_objective(fake):
    logits, stats = discriminate(d_params, d_stats, fake, jax.random.fold_in(drop_key, 4 * last + 3))
    return loss_terms(jax.lax.stop_gradient(real_logits), logits, c.real_label)[1], stats
  (g_loss, d_stats), fake_grad = jax.value_and_grad(g_objective, has_aux=True)(fake)
  (g_grads,) = g_vjp(fake_grad)
  g_grads = pmean(g_grads)
  g_updates, g_opt_state = c.g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)
  # EMA of G: a copy of G until ema_start, then averaged with ema_decay.
  decay = jnp.where(state.step >= c.ema_start, c.ema_decay, 0.0)
  g_ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                              state.g_ema_params, g_params)

  grad_norms = {"d_grad_norm": metrics.pop("d_grad_norm"), "g_grad_norm": optax.global_norm(g_grads)}
  metrics = {**pmean({**metrics, "g_loss": g_loss}), **grad_norms}
  # Synchronised BatchNorm already made the statistics equal on every device;
  # the pmean only tells shard_map so.
  g_stats, d_stats = pmean((g_stats, d_stats))
  new_state = state.replace(
      step=state.step + 1, g_params=g_params, d_params=d_params, g_ema_params=g_ema_params,
      g_batch_stats=g_stats, d_batch_stats=d_stats,
      g_opt_state=g_opt_state, d_opt_state=d_opt_state)
  return new_state, metrics


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,))


def _check_vma(mesh) -> bool:
  # One device: `train_step` skips its pmeans, so nothing is marked replicated.
  return mesh.devices.size > 1


def make_train_step(c: Components, mesh: jax.sharding.Mesh):
  """`train_step` over all devices of `mesh`: state replicated, batch split."""
  step = jax.shard_map(functools.partial(train_step, c=c), mesh=mesh,
                       in_specs=(P(), P(AXIS)), out_specs=(P(), P()),
                       check_vma=_check_vma(mesh))
  return jax.jit(step, donate_argnums=0)


def train_steps(state: GANState, inputs: jax.Array, images: jax.Array | None = None, *,
                c: Components, pixel_range=(-1.0, 1.0),
                axis_name: str = AXIS) -> tuple[GANState, dict[str, jax.Array]]:
  """k = inputs.shape[0] consecutive `train_step`s in one program; metrics
  come back stacked (k,). `inputs` holds the k step batches, or, with the
  on-device `images`, the k steps' example indices into them."""
  def one(state, x):
    if images is not None:
      x = data.gather_batch(images, x, pixel_range)
    return train_step(state, x, c=c, axis_name=axis_name)
  if inputs.shape[0] == 1:  # no scan at all: XLA:CPU runs the plain step faster
    state, metrics = one(state, inputs[0])
    return state, jax.tree.map(lambda m: m[None], metrics)
  # Unrolled: a rolled loop over a GAN step is ~45x slower on XLA:CPU.
  return jax.lax.scan(one, state, inputs, unroll=True)


def make_train_steps(c: Components, mesh: jax.sharding.Mesh, pixel_range=(-1.0, 1.0),
                     on_device: bool = False):
  """`train_steps` over all devices of `mesh`, jitted, state donated:
  (state, inputs[, images]) -> (state, metrics). inputs (k, rows, ...) are
  split over devices along rows; on-device images are replicated."""
  return _over_mesh(functools.partial(train_steps, c=c, pixel_range=tuple(pixel_range)),
                    mesh, P(None, AXIS), on_device)


def _over_mesh(steps, mesh: jax.sharding.Mesh, inputs_spec: P, on_device: bool):
  """`steps(state, inputs[, images])` over all devices of `mesh`, jitted,
  state donated: state and metrics replicated, inputs split by
  `inputs_spec`, on-device images replicated."""
  in_specs = (P(), inputs_spec) + ((P(),) if on_device else ())
  steps = jax.shard_map(steps, mesh=mesh, in_specs=in_specs, out_specs=(P(), P()),
                        check_vma=_check_vma(mesh))
  return jax.jit(steps, donate_argnums=0)


def sweep_train_steps(states: GANState, inputs: jax.Array, images: jax.Array | None = None, *,
                      c: Components, optim_config: Any, hparams: dict[str, jax.Array],
                      pixel_range=(-1.0, 1.0), axis_name: str = AXIS):
  """`train_steps` for every member of a sweep: states and inputs carry a
  leading member axis (inputs (K, k, rows, ...)), `hparams` each swept key's
  (K,) values; metrics come back (K, k)."""
  def one(state, x, h):
    return train_steps(state, x, images, c=with_hparams(c, optim_config, h),
                       pixel_range=pixel_range, axis_name=axis_name)
  return jax.vmap(one)(states, inputs, hparams)


def make_sweep_steps(c: Components, mesh: jax.sharding.Mesh, optim_config: Any,
                     hparams: dict[str, Any], pixel_range=(-1.0, 1.0), on_device: bool = False):
  """`sweep_train_steps` over all devices of `mesh`, jitted, states donated;
  called like `make_train_steps`' function."""
  return _over_mesh(functools.partial(sweep_train_steps, c=c, optim_config=optim_config,
                                     hparams={k: jnp.asarray(v) for k, v in hparams.items()},
                                     pixel_range=tuple(pixel_range)),
                    mesh, P(None, None, AXIS), on_device)


def replicate(tree, mesh: jax.sharding.Mesh):
  return jax.device_put(tree, NamedSharding(mesh, P()))


def init_state(config: ml_collections.ConfigDict, c: Components, mesh) -> GANState:
  state = jax.jit(functools.partial(
      create_state, config.seed, c.g, c.d, c.g_tx, c.d_tx, c.latent_dim, c.image_shape))()
  return replicate(state, mesh)


def generator_variables(state: GANState) -> dict[str, Any]:
  """G's variables for sampling: the EMA params (a copy of G's own params
  when ema_decay is 0) with the running BatchNorm statistics."""
  return {"params": state.g_ema_params, "batch_stats": state.g_batch_stats}


def make_generate(c: Components):
  """jitted (state, z) -> images, G in inference mode."""
  @jax.jit
  def generate(state: GANState, z: jax.Array) -> jax.Array:
    return c.g.apply(generator_variables(state), z, train=False)
  return generate


def evaluate_state(evaluator: evaluation.Evaluator, generate, state: GANState,
                   latents: jax.Array) -> dict[str, Any]:
  """The evaluator's report on G's samples (EMA params, inference mode)."""
  report = evaluator.score_generator(lambda z: generate(state, z), latents)
  return {"step": int(state.step), **report}


def fixed_latents(config: ml_collections.ConfigDict, c: Components, n: int) -> jax.Array:
  """The same latent batch for every sample grid of a run (GANMonitor)."""
  return sample_latents(jax.random.PRNGKey(config.seed + 1), n, c)


def num_train_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  return config.num_steps if config.num_steps > 0 else config.num_epochs * steps_per_epoch


def validate_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """Values that would only fail deep inside training, checked up front."""
  def positive(*keys):
    for key in keys:
      if config[key] <= 0:
        raise ConfigError(f"config key '{key}' must be positive, got {config[key]}")
  positive("batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
           "num_grid_samples", "steps_per_call")
  for key in ("sample_every", "sample_every_epochs", "export_generator_every_epochs"):
    if config[key] < 0:
      raise ConfigError(f"config key '{key}' must be >= 0 (0 = off), got {config[key]}")
  if config.num_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError("set num_epochs > 0 or num_steps > 0")
  if config.batch_size % num_devices:
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by the "
                      f"{num_devices} devices")
  lo, hi = config.data.pixel_range
  if not lo < hi:
    raise ConfigError(f"data.pixel_range must be (low, high) with low < high, got {(lo, hi)}")
  if config.eval.every:
    evaluation.validate_eval_config(config, num_devices)


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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop: checkpointing.StopOnSignal | None = None) -> GANState:
  """Trains (or resumes) the experiment in `workdir`; returns the final state.

  A sweep (`gan_jax.sweep`) trains its K members as one program, each with
  its own outputs in `workdir/members/NAME`, and returns their states
  stacked on a leading member axis.

  SIGTERM or SIGINT during the loop stops it after the current compiled
  call: that step's metrics are checked, it is checkpointed (the save
  finished), and its state returned; `stop` (made here if not given) then
  says which signal and at which step. Running again resumes from there."""
  runs = sweep.members(config, workdir)
  swept = sweep.is_sweep(config)   # a member axis on the state, inputs and metrics
  mesh = make_mesh()
  validate_config(config, mesh.devices.size)
  for m in runs:
    build_components(m.config)   # every member's values are checked
  c = build_components(sweep.static_config(config, runs))
  # The data first: a bad dataset fails before the work directory is touched.
  # One source per seed: the epoch order depends only on the seed.
  sources = {}
  for m in runs:
    if m.config.seed not in sources:
      sources[m.config.seed] = data.TrainData(
          config.data, config.batch_size, m.config.seed, mesh, image_shape=c.image_shape,
          batches_per_step=c.d_steps)
  source = sources[config.seed]
  for m in runs:
    os.makedirs(m.workdir, exist_ok=True)

  evaluator, best = None, [None] * len(runs)
  if config.eval.every:
    # Before training: a bad eval setting fails now, and the extractor (the
    # domain classifier is trained once, then cached) and the real statistics
    # are ready for every evaluation.
    evaluator = evaluation.Evaluator(config, c.image_shape, mesh)
    eval_latents = sample_latents(jax.random.PRNGKey(config.eval.seed), config.eval.num_samples, c)
    if config.eval.best_metric:
      best = [checkpointing.BestCheckpoint(
          m.workdir, config.eval.best_metric,
          evaluation.HIGHER_IS_BETTER[config.eval.best_metric]) for m in runs]

  ckpts = [checkpointing.Checkpointer(m.workdir, keep=config.keep_checkpoints) for m in runs]
  states = [ck.restore_latest(init_state(m.config, c, mesh)) for ck, m in zip(ckpts, runs)]
  starts = sorted({int(s.step) for s in states})
  if len(starts) != 1:
    raise ConfigError(f"sweep members are at different steps {starts} in {workdir}/members: "
                      f"resume needs them at one step (delete the newer checkpoints)")
  # After the restore: a config that does not fit the checkpoint (an error
  # above) leaves the run's config.json as it was.
  if jax.process_index() == 0:  # multi-process: one writer (see gan_jax.outputs)
    for cfg, d in [(m.config, m.workdir) for m in runs] + ([(config, workdir)] if swept else []):
      with open(os.path.join(d, "config.json"), "w") as f:
        f.write(cfg.to_json_best_effort(indent=2))
  state = replicate(sweep.stack(states), mesh) if swept else states[0]
  del states
  at = (lambda state, i: sweep.member(state, i)) if swept else (lambda state, i: state)
  start = starts[0]
  for m in runs:
    outputs.truncate_metrics(os.path.join(m.workdir, "metrics.jsonl"), start)
  total = num_train_steps(config, source.steps_per_epoch)
  if start:
    logging.info("resuming from step %d of %d", start, total)
  on_device = config.data.on_device
  if swept:
    steps_fn = make_sweep_steps(c, mesh, config.optim, sweep.stacked_hparams(runs),
                                config.data.pixel_range, on_device)
  else:
    steps_fn = make_train_steps(c, mesh, config.data.pixel_range, on_device)
  images = (source.device_images(),) if on_device else ()
  events = functools.partial(events_after, total=total, config=config,
                             steps_per_epoch=source.steps_per_epoch)
  sizes = list(chunk_sizes(start, total, config.steps_per_call, lambda n: events(n).any()))
  generate = make_generate(c)
  grids = jax.jit(jax.vmap(generate, in_axes=(0, None))) if swept else (
      lambda state, z: generate(state, z)[None])
  z_grid = fixed_latents(config, c, config.num_grid_samples)
  writers = [outputs.MetricWriter(m.workdir) for m in runs]
  pixel_range = tuple(config.data.pixel_range)
  members = [m.name if swept else "" for m in runs]   # named in a divergence error

  pending: list[dict[str, jax.Array]] = []   # on device, not yet checked
  checked: list[list[dict[str, np.ndarray]]] = [[] for _ in runs]   # per member: on host, finite
  t_last, step_last = time.perf_counter(), start
  bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
             disable=not config.progress_bar)
  inputs = data.member_chunks([sources[m.config.seed] for m in runs], start, iter(sizes),
                              indices=on_device, member_axis=swept)
  done = start
  stop = checkpointing.StopOnSignal() if stop is None else stop
  stop.install()   # until the last save is committed: a signal only sets a flag
  try:
    for call, k in enumerate(sizes):
      state, metrics = steps_fn(state, next(inputs), *images)
      pending.append(metrics)
      done += k
      bar.update(k)
      now_do = events(done)
      stopping = stop.should_stop(call) and done < total
      if now_do.log or now_do.save or now_do.export or now_do.eval or stopping:
        # The only host syncs: every step's metrics are checked before a log
        # line or a checkpoint, so a diverged state is never saved.
        # each name -> (K, k): K members (1 outside a sweep), k steps
        synced = [m if swept else {n: v[None] for n, v in m.items()}
                  for m in jax.device_get(pending)]
        step = done - sum(next(iter(m.values())).shape[1] for m in synced)
        for m in synced:
          for j in range(next(iter(m.values())).shape[1]):
            step += 1   # a non-finite value is reported at its own step
            for i, member in enumerate(members):
              row = {n: v[i][j] for n, v in m.items()}
              outputs.check_finite(step, row, member)
              checked[i].append(row)
        pending = []
      if now_do.log:
        now = time.perf_counter()
        rate = (done - step_last) / (now - t_last)
        for i, w in enumerate(writers):
          row = {n: float(np.mean([m[n] for m in checked[i]])) for n in checked[i][0]}
          row.update(steps_per_sec=rate, images_per_sec=rate * config.batch_size * c.d_steps,
                     epoch=done / source.steps_per_epoch)
          w.write(done, row)
          if i == 0:
            bar.set_postfix(d_loss=f"{row['d_loss']:.3f}", g_loss=f"{row['g_loss']:.3f}")
        checked = [[] for _ in runs]
        t_last, step_last = now, done
      if now_do.sample:
        for m, g in zip(runs, np.asarray(grids(state, z_grid))):
          outputs.save_image_grid(g, os.path.join(m.workdir, "samples", f"step_{done:07d}.png"),
                                  pixel_range)
      if now_do.eval:
        for i, m in enumerate(runs):
          member_state = at(state, i)
          report = evaluate_state(evaluator, generate, member_state, eval_latents)
          outputs.write_report(os.path.join(m.workdir, "eval", f"step_{done:07d}.json"), report)
          writers[i].write(done, {f"eval/{k}": v for k, v in report["scores"].items()})
          if best[i] is not None:
            best[i].update(done, member_state, report)
      if now_do.save or stopping:
        # Preempted: this step (checked above) is saved, unless it just was,
        # and committed before saying so; a later run resumes from it.
        for i, ck in enumerate(ckpts):
          ck.save(done, at(state, i))
      if now_do.export:
        name = "final" if done == total else f"epoch_{now_do.epoch:04d}"
        for i, m in enumerate(runs):
          outputs.export_generator(os.path.join(m.workdir, "generator", f"{name}.msgpack"),
                                   generator_variables(at(state, i)))
      if stopping:
        for ck in ckpts:
          ck.wait()
        bar.close()
        stop.stopped(done)
        break
  finally:
    try:
      bar.close()
      for closable in ckpts + [b for b in best if b is not None] + writers:
        closable.close()
    finally:
      stop.uninstall()
  for m in runs:
    outputs.plot_losses(os.path.join(m.workdir, "metrics.jsonl"),
                        os.path.join(m.workdir, "losses.png"))
  if swept:
    logging.info("sweep of %d members done: %s", len(runs), [m.workdir for m in runs])
  return state
