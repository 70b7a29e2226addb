import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_EXPERIMENT = os.path.join(ROOT, "experiments", "dcgan_fashion_mnist.py")


def small_config(**overrides):
  """The default experiment, shrunk so a step compiles and runs in seconds."""
  from gan_jax import config as config_lib
  cfg = config_lib.load_config(DEFAULT_EXPERIMENT)
  with cfg.unlocked():
    cfg.model.g_features = 32
    cfg.model.d_features = 16
    cfg.model.latent_dim = 16
    cfg.batch_size = 16
    cfg.progress_bar = False
    cfg.log_every = 1
    cfg.sample_every = 2
    cfg.checkpoint_every = 2
    cfg.num_grid_samples = 16
    for key, value in overrides.items():
      node = cfg
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return cfg


@pytest.fixture
def small_cfg():
  return small_config()
