"""The training step: per device in the pmap style, mapped over the mesh.

`train_step` sees its shard of the global batch and averages gradients,
BatchNorm statistics and metrics with `lax.pmean` over the `data` axis.
`make_train_step` maps it over every device of a 1-D mesh with
`jax.shard_map` under `jax.jit`, donating the state; the same code runs on
one device and on N. `make_train_steps` fuses k steps into one call
(`lax.scan`), optionally gathering each batch from a dataset held on device;
`make_sweep_steps` vmaps that over a sweep's members.
"""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax
from jax.sharding import PartitionSpec as P

from gan_jax import augment as augment_lib, data, losses
from gan_jax.components import ADA_KEY, Components, sample_labels, sample_latents, with_hparams
from gan_jax.mesh import AXIS, check_vma
from gan_jax.state import GANState


def _local_rows(key, draw, b: int, axis_name: str):
  """`draw(key, n)` for the global batch, then this device's `b` rows: N
  devices draw exactly the numbers one device would."""
  rows = draw(key, b * jax.lax.psum(1, axis_name))
  return jax.lax.dynamic_slice_in_dim(rows, jax.lax.axis_index(axis_name) * b, b)


def _class_loss(class_logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(class_logits, labels).mean()


def train_step(state: GANState, batch, *, c: Components,
               axis_name: str = AXIS) -> tuple[GANState, dict[str, jax.Array]]:
  """`c.d_steps` D updates, each on its own slice of the batch, then one G
  update, on this device's shard. The batch holds `d_steps` consecutive
  critic batches: its rows are (d_steps, per-device batch) in order. A
  conditional model's batch is an (images, labels) pair."""
  images, labels = batch if isinstance(batch, tuple) else (batch, None)
  b = images.shape[0] // c.d_steps
  reals = images.reshape(c.d_steps, b, *images.shape[1:])
  key = jax.random.fold_in(state.rng, state.step)
  z_key, drop_key, pen_key, label_key = jax.random.split(key, 4)
  # Dropout masks, penalty draws (interpolation weights, perturbations) and
  # augmentations are per device: each device draws for its own rows, with
  # its own key. (Keys of the newer features are folded in, so the older
  # draws stay what they were.)
  aug_key = jax.random.fold_in(key, 11)
  drop_key, pen_key, aug_key = (jax.random.fold_in(k, jax.lax.axis_index(axis_name))
                                for k in (drop_key, pen_key, aug_key))
  latents = lambda i: _local_rows(jax.random.fold_in(z_key, i),
                                  lambda k, n: sample_latents(k, n, c), b, axis_name)
  real_labels = fake_labels = lambda i: None
  if c.conditional:
    real_labels = lambda i: labels.reshape(c.d_steps, b)[i]
    fake_labels = lambda i: _local_rows(jax.random.fold_in(jax.random.fold_in(key, 7), i),
                                        lambda k, n: sample_labels(k, n, c), b, axis_name)
  ada_p = state.aux[ADA_KEY]["p"] if c.ada_target else c.augment_p

  def augmented(x, key):
    """What D sees of images x: x, or x with the DiffAugment policy."""
    if not c.augment:
      return x
    return augment_lib.augment(x, key, c.augment, ada_p, c.pixel_range)
  # Replicated params are "invariant" to shard_map; gradients taken w.r.t.
  # invariant values come back already summed over devices. Marking them
  # per-device ("varying") gives per-device gradients, averaged by pmean below.
  # On one device the averages are identities; skipping them spares XLA:CPU
  # copying every gradient through an all-reduce (FC GAN step 40 -> 25 ms).
  single = jax.lax.axis_size(axis_name) == 1
  local = lambda tree: tree if single else jax.lax.pcast(tree, axis_name, to="varying")
  pmean = lambda tree: tree if single else jax.lax.pmean(tree, axis_name)

  def generate(g_params, g_stats, z, y):
    args = (z,) if y is None else (z, y)
    fake, upd = c.g.apply({"params": g_params, "batch_stats": g_stats}, *args,
                          train=True, mutable=["batch_stats"])
    return fake, upd.get("batch_stats", {})

  def discriminate_all(d_params, d_stats, x, y, key):
    """(logits, class logits or None, new statistics) of D on x (labels y)."""
    args = (x,) if y is None else (x, y)
    out, upd = c.d.apply({"params": d_params, "batch_stats": d_stats}, *args, train=True,
                         mutable=["batch_stats"], rngs={"dropout": key})
    logits, class_logits = out if isinstance(out, tuple) else (out, None)
    return logits, class_logits, upd.get("batch_stats", {})

  def discriminate(d_params, d_stats, x, key, y=None):
    logits, _, stats = discriminate_all(d_params, d_stats, x, y, key)
    return logits, stats

  def loss_terms(real_logits, fake_logits, real_target):
    kwargs = {"real_target": real_target} if c.smooth_labels else {}
    return c.loss(real_logits, fake_logits, **kwargs)

  def with_penalties(side, loss, critic, real, fake, logits, aux, key):
    """`loss` plus `side`'s weighted penalties (added one by one, in config
    order), each one's value (a metric), and the penalties' new states."""
    terms, aux = {}, dict(aux)
    for j, name, penalty, weight in c.penalties_on(side):
      value, new = penalty.apply(
          critic, real, fake, jax.random.fold_in(key, j), step=state.step,
          state=aux.get(name), vary=local, logits=logits, global_mean=pmean)
      if penalty.stateful:
        aux[name] = new
      terms[f"penalty_{name}"] = value
      loss = loss + weight * value
    return loss, terms, aux

  def d_update(d, real, fake, fake_y, i):
    """One D update on (real, fake) (fakes of labels `fake_y`); `d` =
    (params, opt_state, batch_stats, penalty states)."""
    d_params, d_opt_state, d_stats, aux = d
    k = lambda j: jax.random.fold_in(drop_key, 4 * i + j)
    real_target = c.real_label + c.real_label_noise * _local_rows(
        jax.random.fold_in(label_key, i), lambda key, n: jax.random.uniform(key, (n,)),
        b, axis_name)

    y = real_labels(i)
    real = augmented(real, jax.random.fold_in(aug_key, 3 * i))
    fake = augmented(fake, jax.random.fold_in(aug_key, 3 * i + 1))

    def objective(d_params):
      real_logits, real_classes, stats = discriminate_all(d_params, d_stats, real, y, k(0))
      fake_logits, stats = discriminate(d_params, stats, fake, k(1), fake_y)
      loss = loss_terms(real_logits, fake_logits, real_target)[0]
      # The critic seen by the penalties: train mode, statistics updates
      # dropped, conditioned on the real labels.
      critic = lambda x: discriminate(d_params, stats, x, k(2), y)[0]
      total, terms, new_aux = with_penalties(
          "d", loss, critic, real, fake, (real_logits, fake_logits), aux,
          jax.random.fold_in(pen_key, i))
      terms = {"d_adv_loss": loss, **terms}
      if real_classes is not None:   # ACGAN: D classifies the reals
        terms["d_class_loss"] = _class_loss(real_classes, y)
        total = total + c.class_loss_weight * terms["d_class_loss"]
      return total, (stats, real_logits, fake_logits, terms, new_aux)

    (loss, (stats, real_logits, fake_logits, terms, aux)), grads = jax.value_and_grad(
        objective, has_aux=True)(local(d_params))
    grads = pmean(grads)
    updates, d_opt_state = c.d_tx.update(grads, d_opt_state, d_params)
    d_params = optax.apply_updates(d_params, updates)
    if c.d_weight_clip:
      d_params = losses.clip_weights(d_params, c.d_weight_clip)
    metrics = {"d_loss": loss, "d_real_logit": real_logits.mean(),
               "d_fake_logit": fake_logits.mean(), **terms,
               "d_grad_norm": optax.tree.norm(grads)}
    # Penalty state stays the same on every device (the carry of the critic
    # updates must be), whether or not the penalty used global means.
    return (d_params, d_opt_state, stats, pmean(aux)), metrics, real_logits

  d = (state.d_params, state.d_opt_state, state.d_batch_stats, state.aux)
  g_stats = state.g_batch_stats
  if c.d_steps > 1:
    # The first d_steps - 1 critic updates on fakes drawn without gradient.
    # Unrolled: a rolled loop over a GAN update is ~45x slower on XLA:CPU.
    def critic_step(carry, i):
      d, g_stats = carry
      fake, g_stats = generate(state.g_params, g_stats, latents(i), fake_labels(i))
      d, _, _ = d_update(d, reals[i], fake, fake_labels(i), i)
      return (d, g_stats), None
    (d, g_stats), _ = jax.lax.scan(critic_step, (d, g_stats), jnp.arange(c.d_steps - 1),
                                   unroll=True)
  # The last critic update and the G update share one G forward (as PyTorch's
  # DCGAN does): D sees it without gradient, G backpropagates through the
  # saved VJP.
  last = c.d_steps - 1
  fake_y = fake_labels(last)
  fake, g_vjp, g_stats = jax.vjp(lambda p: generate(p, g_stats, latents(last), fake_y),
                                 local(state.g_params), has_aux=True)
  (d_params, d_opt_state, d_stats, aux), metrics, real_logits = d_update(
      d, reals[last], jax.lax.stop_gradient(fake), fake_y, last)
  real_logits = jax.lax.stop_gradient(real_logits)

  def g_objective(fake):
    # G's gradient flows through the augmentation (DiffAugment's point).
    fake = augmented(fake, jax.random.fold_in(aug_key, 3 * last + 2))
    logits, classes, stats = discriminate_all(d_params, d_stats, fake, fake_y,
                                              jax.random.fold_in(drop_key, 4 * last + 3))
    g_loss = loss_terms(real_logits, logits, c.real_label)[1]
    total, terms, new_aux = g_loss, {}, aux
    if c.penalties_on("g"):
      critic = lambda x: discriminate(d_params, stats, x,
                                      jax.random.fold_in(drop_key, 4 * c.d_steps), fake_y)[0]
      total, terms, new_aux = with_penalties("g", g_loss, critic, reals[last], fake,
                                             (real_logits, logits), aux,
                                             jax.random.fold_in(pen_key, c.d_steps))
      terms = {"g_adv_loss": g_loss, **terms}
    if classes is not None:   # ACGAN: G makes fakes D classifies as their labels
      terms = {"g_adv_loss": g_loss, **terms, "g_class_loss": _class_loss(classes, fake_y)}
      total = total + c.class_loss_weight * terms["g_class_loss"]
    return total, (stats, terms, new_aux)
  (g_loss, (d_stats, g_terms, aux)), fake_grad = jax.value_and_grad(
      g_objective, has_aux=True)(fake)
  (g_grads,) = g_vjp(fake_grad)
  g_grads = pmean(g_grads)
  g_updates, g_opt_state = c.g_tx.update(g_grads, state.g_opt_state, state.g_params)
  g_params = optax.apply_updates(state.g_params, g_updates)
  # EMA of G: a copy of G until ema_start, then averaged with ema_decay.
  decay = jnp.where(state.step >= c.ema_start, c.ema_decay, 0.0)
  g_ema_params = jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p,
                              state.g_ema_params, g_params)

  if c.ada_target:
    # ADA: r_t = E[sign(D(real))] over the global batch of the last D update.
    r_t = pmean(jnp.mean(jnp.sign(real_logits)))
    aux = {**aux, ADA_KEY: {"p": augment_lib.adjust_probability(
        ada_p, r_t, target=c.ada_target, batch=b * jax.lax.psum(1, axis_name),
        speed_images=c.ada_images)}}
    metrics = {**metrics, "augment_p": ada_p, "ada_r_t": r_t}
  grad_norms = {"d_grad_norm": metrics.pop("d_grad_norm"), "g_grad_norm": optax.tree.norm(g_grads)}
  metrics = {**pmean({**metrics, **g_terms, "g_loss": g_loss}), **grad_norms}
  # Synchronised BatchNorm already made the statistics equal on every device
  # (and penalties keep their state with global means); the pmean only
  # tells shard_map so.
  g_stats, d_stats, aux = pmean((g_stats, d_stats, aux))
  new_state = state.replace(
      step=state.step + 1, g_params=g_params, d_params=d_params, g_ema_params=g_ema_params,
      g_batch_stats=g_stats, d_batch_stats=d_stats,
      g_opt_state=g_opt_state, d_opt_state=d_opt_state, aux=aux)
  return new_state, metrics


def make_train_step(c: Components, mesh: jax.sharding.Mesh):
  """`train_step` over all devices of `mesh`: state replicated, batch split."""
  step = jax.shard_map(functools.partial(train_step, c=c), mesh=mesh,
                       in_specs=(P(), P(AXIS)), out_specs=(P(), P()),
                       check_vma=check_vma(mesh))
  return jax.jit(step, donate_argnums=0)


def train_steps(state: GANState, inputs, images=None, *,
                c: Components, pixel_range=(-1.0, 1.0),
                axis_name: str = AXIS) -> tuple[GANState, dict[str, jax.Array]]:
  """k = inputs.shape[0] consecutive `train_step`s in one program; metrics
  come back stacked (k,). `inputs` holds the k step batches, or, with the
  on-device `images`, the k steps' example indices into them (with labels:
  (images, labels) pairs, on device too)."""
  def one(state, x):
    if images is not None:
      x = data.gather_batch(images, x, pixel_range)
    return train_step(state, x, c=c, axis_name=axis_name)
  if jax.tree.leaves(inputs)[0].shape[0] == 1:  # no scan: XLA:CPU runs the plain step faster
    state, metrics = one(state, jax.tree.map(lambda a: a[0], inputs))
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
                        check_vma=check_vma(mesh))
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


