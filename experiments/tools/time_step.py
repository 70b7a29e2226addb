r"""Times an experiment's compiled train step alone (random data, no input
pipeline), on the experiment's own batch size and models.

  python experiments/tools/time_step.py experiments/wgan_gp_fashion_mnist.py \
      [--steps 10] [--config.KEY=VALUE ...]

Prints ms/step, steps/s and real images/s (batch_size * d_steps per step),
timed over --steps calls after one warm-up (compiling) call.
"""
import argparse
import sys
import time

import jax
import numpy as np

from gan_jax import cli, data, train
from gan_jax.config import apply_overrides, load_config


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("config")
  parser.add_argument("--steps", type=int, default=10)
  args, extra = parser.parse_known_args(argv)
  cfg = apply_overrides(load_config(args.config), cli._split_overrides(extra, parser))
  c = train.build_components(cfg)
  mesh = train.make_mesh()
  state = train.init_state(cfg, c, mesh)
  step = train.make_train_step(c, mesh)
  rows = cfg.batch_size * cfg.d_steps
  batch = data.shard_batch(np.random.default_rng(0).uniform(
      -1, 1, (rows, *c.image_shape)).astype(np.float32), mesh)
  t = time.perf_counter()
  state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - t
  t = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = step(state, batch)
  jax.block_until_ready(metrics)
  dt = (time.perf_counter() - t) / args.steps
  print(f"{args.config}: {dt * 1e3:.0f} ms/step, {1 / dt:.2f} steps/s, {rows / dt:.0f} real "
        f"images/s (batch {cfg.batch_size} x {cfg.d_steps} D steps; first call {compile_s:.1f} s)")


if __name__ == "__main__":
  sys.exit(main())
