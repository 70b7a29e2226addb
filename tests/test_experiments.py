"""Every experiment config builds and trains 2 real steps on small data:
TFDS mock data for TFDS sources, a generated image folder for folder sources."""
import glob
import json
import os

import chex
import flax.serialization
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from gan_jax import components, config as config_lib, train
from conftest import ROOT, write_image_folder

EXPERIMENTS = sorted(glob.glob(os.path.join(ROOT, "experiments", "*.py")))
pytestmark = pytest.mark.usefixtures("no_local_idx_files")


def _shrunk(path):
  """The experiment's own models and losses, with a tiny batch and 2 steps."""
  cfg = config_lib.load_config(path)
  with cfg.unlocked():
    cfg.batch_size = 4
    cfg.num_steps = 2
    cfg.progress_bar = False
    cfg.log_every = cfg.checkpoint_every = 1
    cfg.sample_every = 2
    cfg.num_grid_samples = 4
    cfg.data.shuffle_buffer = 64
    cfg.eval.every = 0   # scoring needs thousands of samples (tests/test_evaluation.py)
  return cfg


def test_every_experiment_is_covered():
  names = {os.path.basename(p)[:-3] for p in EXPERIMENTS}
  assert names >= {"dcgan_fashion_mnist", "fc_gan_mnist", "dcgan_celeba", "dcgan_color64",
                   "lsgan_cifar10", "wgan_fashion_mnist", "wgan_gp_fashion_mnist",
                   "cgan_fashion_mnist", "sngan_cifar10", "sngan_fashion_mnist",
                   "sngan_projection_cifar10"}


# Each experiment compiles its own step (the ResNet ones for a minute or
# more): the default suite keeps the default experiment and the FC GAN, the
# slow suite runs the rest (CI runs both).
FAST_EXPERIMENTS = {"dcgan_fashion_mnist", "fc_gan_mnist"}


@pytest.mark.parametrize("path", [p if os.path.basename(p)[:-3] in FAST_EXPERIMENTS
                                  else pytest.param(p, marks=pytest.mark.slow)
                                  for p in EXPERIMENTS], ids=lambda p: os.path.basename(p)[:-3])
def test_experiment_trains_two_steps(path, tmp_path):
  doc = open(path).read()
  assert f"--config experiments/{os.path.basename(path)}" in doc  # the run command
  cfg = _shrunk(path)
  if cfg.data.source == "folder":
    with cfg.unlocked():
      cfg.data.folder = str(write_image_folder(tmp_path / "photos", 4 * cfg.d_steps + 2))
    state = train.train_and_evaluate(cfg, str(tmp_path / "w"))
  else:
    with tfds.testing.mock_data(num_examples=8 * cfg.d_steps):
      state = train.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert int(state.step) == 2
  chex.assert_tree_all_finite(jax.device_get(state))
  rows = [json.loads(l) for l in open(tmp_path / "w" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(v) for r in rows for v in r.values())
  # The exported generator loads back into a fresh G and draws images.
  c = components.build_components(cfg)
  z = components.sample_latents(jax.random.PRNGKey(0), 3, c)
  labels = (components.sample_labels(jax.random.PRNGKey(2), 3, c),) if c.conditional else ()
  template = c.g.init(jax.random.PRNGKey(1), z, *labels, train=False)
  with open(tmp_path / "w" / "generator" / "final.msgpack", "rb") as f:
    variables = flax.serialization.from_bytes(template, f.read())
  images = c.g.apply(variables, z, *labels, train=False)
  chex.assert_shape(images, (3, *c.image_shape))
  lo, hi = cfg.data.pixel_range
  assert lo - 1e-6 <= float(images.min()) and float(images.max()) <= hi + 1e-6
  assert os.path.isfile(tmp_path / "w" / "samples" / "step_0000002.png")
