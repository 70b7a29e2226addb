"""TFDS + tf.data input pipeline.

builder -> seeded shuffle (a new order each epoch) -> normalise to the
configured pixel range -> global batch (drop_remainder) -> split over the
devices of the mesh -> prefetch to device. TensorFlow runs on the CPU only.

Datasets are TFDS names. Where a dataset is not prepared yet, MNIST-style
datasets are prepared offline from local IDX files when a folder is known
(`data.idx_dir`, $GAN_JAX_IDX_DIR, or Debian's dataset package); otherwise
TFDS downloads them as usual.
"""
from __future__ import annotations

import collections
import os
import socket
import urllib.parse
from typing import Any, Iterator

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from gan_jax import idx

# TensorFlow must not take GPU memory from JAX.
tf.config.set_visible_devices([], "GPU")


class DataError(ValueError):
  """The dataset cannot serve this experiment (missing, wrong split or shape)."""


def resolve_data_dir(data_dir: str) -> str:
  return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepared_builder(data_config: Any) -> tfds.core.DatasetBuilder:
  """The TFDS builder for `data_config.name`, prepared (offline where possible)."""
  data_dir = resolve_data_dir(data_config.data_dir)
  builder = tfds.builder(data_config.name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  offline = data_config.name in idx.SUPPORTED_DATASETS
  folder = offline and (data_config.idx_dir or idx.default_idx_dir(data_config.name))
  if folder:
    logging.info("preparing %s in %s from IDX files in %s", data_config.name, data_dir, folder)
    return idx.prepare_from_idx(data_config.name, folder, data_dir)
  try:
    if offline:  # fail in seconds, not after minutes of TFDS retries
      _check_reachable(type(builder).URL)
    builder.download_and_prepare()
  except Exception as e:  # no network, or the source moved
    hint = ""
    if offline:
      hint = ("\nOffline: put the four IDX files (train-images-idx3-ubyte.gz, ...) in a folder "
              "and pass --config.data.idx_dir=FOLDER or set GAN_JAX_IDX_DIR; on Debian, "
              "`apt-get install dataset-fashion-mnist` provides Fashion-MNIST.")
    raise DataError(f"could not download and prepare TFDS dataset "
                    f"'{data_config.name}' in {data_dir}: {e}{hint}") from e
  return builder


def _check_reachable(url: str, timeout: float = 5.0) -> None:
  parsed = urllib.parse.urlparse(url)
  port = parsed.port or (443 if parsed.scheme == "https" else 80)
  try:
    socket.create_connection((parsed.hostname, port), timeout=timeout).close()
  except OSError as e:
    raise ConnectionError(f"{parsed.hostname}:{port} is not reachable ({e})") from e


def normalise(images: tf.Tensor, pixel_range) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [lo, hi]."""
  lo, hi = (float(v) for v in pixel_range)
  return tf.cast(images, tf.float32) * ((hi - lo) / 255.0) + lo


def shard_batch(batch: np.ndarray, mesh: jax.sharding.Mesh) -> jax.Array:
  """A host batch -> one global array split over the mesh's `data` axis."""
  return jax.make_array_from_process_local_data(NamedSharding(mesh, P("data")), batch)


def prefetch_to_device(iterator: Iterator[np.ndarray], mesh, size: int = 2) -> Iterator[jax.Array]:
  """Keeps `size` batches in flight to the devices ahead of the consumer."""
  queue = collections.deque()
  for batch in iterator:
    queue.append(shard_batch(batch, mesh))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def _split_size(builder, split: str) -> int | None:
  """Examples in `split` as TFDS recorded them; None where nothing is recorded
  (e.g. under tfds.testing.mock_data)."""
  splits = builder.info.splits
  if not splits:
    return None
  try:
    return splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise DataError(f"dataset '{builder.name}' has no split '{split}'; "
                    f"splits: {sorted(splits)}") from e


class TrainData:
  """Training images of one TFDS split, batched for the mesh.

  The epoch order depends only on (seed, epoch), so a run resumed at step s
  sees the batches an uninterrupted run sees from step s on.
  """

  def __init__(self, data_config: Any, global_batch: int, seed: int,
               mesh: jax.sharding.Mesh, image_shape: tuple[int, int, int]):
    builder = prepared_builder(data_config)
    split = data_config.split
    shape = tuple(builder.info.features["image"].shape)
    if shape != tuple(image_shape):
      raise DataError(f"dataset '{data_config.name}' has images of shape {shape}, "
                      f"the model takes {tuple(image_shape)}")
    size = _split_size(builder, split)
    self._images = builder.as_dataset(split=split, shuffle_files=False).map(
        lambda ex: ex["image"], num_parallel_calls=tf.data.AUTOTUNE).cache()
    self.num_examples = size if size is not None else int(
        self._images.reduce(0, lambda n, _: n + 1))
    self.steps_per_epoch = self.num_examples // global_batch
    if self.steps_per_epoch == 0:
      raise DataError(f"split '{split}' of '{data_config.name}' has {self.num_examples} "
                      f"examples, fewer than one batch of {global_batch}")
    self.global_batch = global_batch
    self.seed = seed
    self.mesh = mesh
    self.config = data_config

  def epoch(self, epoch: int) -> tf.data.Dataset:
    """One epoch of normalised global batches in the (seed, epoch) order."""
    # One fixed order per (seed, epoch): the epoch can be rebuilt on resume.
    ds = self._images.shuffle(min(self.config.shuffle_buffer, self.num_examples),
                              seed=self.seed * 100_003 + epoch, reshuffle_each_iteration=False)
    ds = ds.batch(self.global_batch, drop_remainder=True)
    ds = ds.map(lambda x: normalise(x, self.config.pixel_range),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)

  def host_batches(self, start_step: int = 0) -> Iterator[np.ndarray]:
    epoch, skip = divmod(start_step, self.steps_per_epoch)
    while True:
      yield from self.epoch(epoch).skip(skip).as_numpy_iterator()
      epoch, skip = epoch + 1, 0

  def batches(self, start_step: int = 0) -> Iterator[jax.Array]:
    """Endless device batches from global step `start_step` on."""
    return prefetch_to_device(self.host_batches(start_step), self.mesh)
