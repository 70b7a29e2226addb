"""Samples from a trained generator: the latest (or a given) checkpoint of a
work directory -> `.npy` array plus a PNG grid."""
from __future__ import annotations

import os

import jax
import ml_collections
import numpy as np

from gan_jax import checkpointing, outputs, train
from gan_jax.config import ConfigError


def write_samples(config: ml_collections.ConfigDict, workdir: str, num: int,
                  step: int | None = None, seed: int = 0) -> list[str]:
  if num <= 0:
    raise ConfigError(f"number of samples must be positive, got {num}")
  c = train.build_components(config)
  mesh = train.make_mesh()
  ckpt = checkpointing.Checkpointer(workdir, keep=1, read_only=True)
  state = ckpt.restore(train.init_state(config, c, mesh), step=step)
  step = int(state.step)
  z = train.sample_latents(jax.random.PRNGKey(seed), num, c)
  images = np.asarray(train.make_generate(c)(state, z))
  out = os.path.join(workdir, "samples")
  os.makedirs(out, exist_ok=True)
  npy = os.path.join(out, f"samples_step{step}_n{num}_seed{seed}.npy")
  png = npy[:-4] + ".png"
  np.save(npy, images)
  outputs.save_image_grid(images, png, tuple(config.data.pixel_range))
  return [npy, png]
