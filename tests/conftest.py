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


def make_idx_data(sizes: dict, seed: int = 0) -> dict:
  """{split: (uint8 images (n, 28, 28), uint8 labels (n,))} of random MNIST-style data."""
  import numpy as np
  rng = np.random.default_rng(seed)
  return {split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                  rng.integers(0, 10, (n,), dtype=np.uint8))
          for split, n in sizes.items()}


def write_idx_folder(folder, data: dict, suffix: str = ".gz"):
  """Writes `data` as the four standard IDX files of an MNIST-style folder."""
  from gan_jax import idx
  folder.mkdir(parents=True, exist_ok=True)
  for split, (images, labels) in data.items():
    image_name, label_name = idx.IDX_FILES[split]
    idx.write_idx(folder / f"{image_name}{suffix}", images)
    idx.write_idx(folder / f"{label_name}{suffix}", labels)
  return folder


@pytest.fixture
def small_cfg():
  return small_config()
