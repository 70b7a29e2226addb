"""K independent GANs in one program: `--config.sweep.seeds=K`.

The fused training step (`train.train_steps`: critic steps, penalties, EMA,
on-device batches) is `vmap`-ed over a leading member axis of the state and
of the batches, inside the same `shard_map` over the data axis, so K small
models fill the machine as one program instead of K. Member i is exactly the
single run with `seed = config.seed + i`: its own initialisation, PRNG
stream and data order (each member reads its seed's epoch order).

Outputs are per member, in `WORKDIR/members/seed_S/`, laid out like a single
run's work directory (config.json with that seed, metrics.jsonl,
TensorBoard, samples/, checkpoints/, generator/, losses.png), so `gan-jax
sample|eval --workdir WORKDIR/members/seed_S` work on a member. Resuming
restores every member from its own checkpoints.
"""
from __future__ import annotations

import functools
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import PartitionSpec as P
from tqdm import tqdm

from gan_jax import checkpointing, data, outputs, train
from gan_jax.config import ConfigError


def member_configs(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  """The single-run config of each member: seed + i, no sweep."""
  out = []
  for i in range(config.sweep.seeds):
    m = ml_collections.ConfigDict(config.to_dict())
    m.seed = config.seed + i
    m.sweep.seeds = 0
    m.lock()
    out.append(m)
  return out


def member_dir(workdir: str, seed: int) -> str:
  return os.path.join(workdir, "members", f"seed_{seed}")


def sweep_train_steps(states, inputs, images=None, *, c, pixel_range, axis_name=train.AXIS):
  """`train.train_steps` for every member: states and inputs carry a leading
  member axis (inputs: (K, k, rows, ...)); metrics come back (K, k)."""
  one = functools.partial(train.train_steps, c=c, pixel_range=pixel_range,
                          axis_name=axis_name)
  return jax.vmap(lambda s, x: one(s, x, images))(states, inputs)


def make_sweep_steps(c: train.Components, mesh, pixel_range=(-1.0, 1.0), on_device=False):
  """`sweep_train_steps` over all devices of `mesh`, jitted, states donated."""
  in_specs = (P(), P(None, None, train.AXIS)) + ((P(),) if on_device else ())
  steps = jax.shard_map(
      functools.partial(sweep_train_steps, c=c, pixel_range=tuple(pixel_range)),
      mesh=mesh, in_specs=in_specs, out_specs=(P(), P()), check_vma=train._check_vma(mesh))
  return jax.jit(steps, donate_argnums=0)


def stack(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def member(tree, i: int):
  return jax.tree.map(lambda x: x[i], tree)


def validate_sweep(config: ml_collections.ConfigDict) -> None:
  k = config.sweep.seeds
  if k < 0:
    raise ConfigError(f"sweep.seeds must be >= 0 (0 = off), got {k}")
  if k and config.eval.every:
    raise ConfigError("eval.every > 0 is not supported in a sweep yet: evaluate the "
                      "members afterwards with gan-jax eval --workdir WORKDIR/members/seed_S")


def train_sweep(config: ml_collections.ConfigDict, workdir: str) -> Any:
  """Trains (or resumes) config.sweep.seeds members; returns the stacked state."""
  validate_sweep(config)
  configs = member_configs(config)
  seeds = [m.seed for m in configs]
  mesh = train.make_mesh()
  train.validate_config(config, mesh.devices.size)
  c = train.build_components(config)
  sources = [data.TrainData(m.data, m.batch_size, m.seed, mesh, image_shape=c.image_shape,
                            batches_per_step=c.d_steps) for m in configs]
  dirs = [member_dir(workdir, s) for s in seeds]
  for d, m in zip(dirs, configs):
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
      f.write(m.to_json_best_effort(indent=2))
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))

  ckpts = [checkpointing.Checkpointer(d, keep=config.keep_checkpoints) for d in dirs]
  states = [ck.restore_latest(train.init_state(m, c, mesh)) for ck, m in zip(ckpts, configs)]
  starts = {int(s.step) for s in states}
  if len(starts) != 1:
    raise ConfigError(f"sweep members are at different steps {sorted(starts)} in {workdir}/"
                      f"members: resume needs them at one step (delete the newer checkpoints)")
  start = starts.pop()
  states = train.replicate(stack(states), mesh)
  for d in dirs:
    outputs.truncate_metrics(os.path.join(d, "metrics.jsonl"), start)
  steps_per_epoch = sources[0].steps_per_epoch
  total = train.num_train_steps(config, steps_per_epoch)
  on_device = config.data.on_device
  steps_fn = make_sweep_steps(c, mesh, config.data.pixel_range, on_device)
  images = (sources[0].device_images(),) if on_device else ()
  events = functools.partial(train.events_after, total=total, config=config,
                             steps_per_epoch=steps_per_epoch)
  sizes = list(train.chunk_sizes(start, total, config.steps_per_call,
                                 lambda n: events(n).any()))
  generate = jax.jit(jax.vmap(train.make_generate(c), in_axes=(0, None)))
  z_grid = train.fixed_latents(config, c, config.num_grid_samples)
  writers = [outputs.MetricWriter(d) for d in dirs]
  pixel_range = tuple(config.data.pixel_range)

  def host_inputs():
    rows = [s.host_batches(start, indices=on_device) for s in sources]
    for k in sizes:
      yield np.stack([np.stack([next(r) for _ in range(k)]) for r in rows])
  inputs = data.prefetch_to_device(host_inputs(), mesh, spec=P(None, None, train.AXIS))

  pending, checked = [], [[] for _ in seeds]
  t_last, step_last, done = time.perf_counter(), start, start
  bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
             disable=not config.progress_bar)
  try:
    for k in sizes:
      states, metrics = steps_fn(states, next(inputs), *images)
      pending.append(metrics)
      done += k
      bar.update(k)
      now_do = events(done)
      if now_do.log or now_do.save or now_do.export:
        stacked = jax.device_get(pending)   # each (K, k)
        step = done - sum(len(next(iter(m.values()))[0]) for m in stacked)
        for m in stacked:
          for j in range(len(next(iter(m.values()))[0])):
            step += 1   # a non-finite value is reported at its own step
            for i, seed in enumerate(seeds):
              row = {name: v[i][j] for name, v in m.items()}
              outputs.check_finite(step, {f"seed {seed} {n}": v for n, v in row.items()})
              checked[i].append(row)
        pending = []
      if now_do.log:
        now = time.perf_counter()
        rate = (done - step_last) / (now - t_last)
        for i, w in enumerate(writers):
          row = {n: float(np.mean([m[n] for m in checked[i]])) for n in checked[i][0]}
          row.update(steps_per_sec=rate, images_per_sec=rate * config.batch_size * c.d_steps,
                     epoch=done / steps_per_epoch)
          w.write(done, row)
        checked = [[] for _ in seeds]
        t_last, step_last = now, done
      if now_do.sample:
        grids = np.asarray(generate(states, z_grid))
        for d, g in zip(dirs, grids):
          outputs.save_image_grid(g, os.path.join(d, "samples", f"step_{done:07d}.png"),
                                  pixel_range)
      if now_do.save:
        for i, ck in enumerate(ckpts):
          ck.save(done, member(states, i))
      if now_do.export:
        name = "final" if done == total else f"epoch_{now_do.epoch:04d}"
        for i, d in enumerate(dirs):
          outputs.export_generator(os.path.join(d, "generator", f"{name}.msgpack"),
                                   train.generator_variables(member(states, i)))
  finally:
    bar.close()
    for ck in ckpts:
      ck.close()
    for w in writers:
      w.close()
  for d in dirs:
    outputs.plot_losses(os.path.join(d, "metrics.jsonl"), os.path.join(d, "losses.png"))
  logging.info("sweep of %d members done: %s", len(seeds), dirs)
  return states
