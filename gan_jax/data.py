"""TFDS / image-folder + tf.data input pipeline.

source images (uint8, decoded once, cached) -> seeded shuffle (a new order
each epoch) -> normalise to the configured pixel range -> global batch
(drop_remainder) -> split over the devices of the mesh -> prefetch to device.
TensorFlow runs on the CPU only. On several processes (multi-host), each
process feeds the rows of every global batch that its own devices hold.

On-device mode (`data.on_device`, for datasets that fit in device memory):
the whole split is put on every device once, as uint8, and the host sends
only each step's example indices, in the same seeded epoch order; the
compiled step gathers and normalises its batch itself (`gather_batch`).

A source is a TFDS name (`data.source='tfds'`; optionally centre-cropped and
resized, e.g. CelebA) or an image folder (`data.source='folder'`, see
`gan_jax.image_folder`). Where a dataset is not prepared yet, MNIST-style
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
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from gan_jax import idx, image_folder
from gan_jax.errors import DataError  # noqa: F401  (re-exported: data.DataError)

# TensorFlow must not take GPU memory from JAX.
tf.config.set_visible_devices([], "GPU")


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


def gather_batch(images: jax.Array, indices: jax.Array, pixel_range) -> jax.Array:
  """`normalise(images[indices])` on device (the on-device data mode)."""
  lo, hi = (float(v) for v in pixel_range)
  x = jnp.take(images, indices, axis=0).astype(jnp.float32)
  return x * np.float32((hi - lo) / 255.0) + np.float32(lo)


def shard_batch(batch: np.ndarray, mesh: jax.sharding.Mesh, spec=P("data"),
                rows: int | None = None) -> jax.Array:
  """A host batch -> one global array split over the mesh's `data` axis (for
  a stack of step batches, spec P(None, 'data')). `batch` holds this
  process's rows (`process_rows`) of a global batch of `rows` rows; on one
  process, the whole batch."""
  shape = None
  if rows is not None:
    axis = tuple(spec).index("data")
    shape = batch.shape[:axis] + (rows,) + batch.shape[axis + 1:]
  return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), batch, shape)


def process_rows(mesh: jax.sharding.Mesh, rows: int) -> np.ndarray:
  """Positions of the rows this process's devices hold when a batch of `rows`
  rows is split over the mesh's `data` axis, in order (what
  `make_array_from_process_local_data` expects of the process's data): one
  contiguous slice per process when each process's devices are adjacent in
  the mesh, as in `jax.devices()` order; every row on one process."""
  sharding = NamedSharding(mesh, P("data"))
  slices = {index[0].indices(rows)[:2]
            for index in sharding.addressable_devices_indices_map((rows,)).values()}
  return np.concatenate([np.arange(a, b) for a, b in sorted(slices)])


def prefetch_to_device(iterator: Iterator[np.ndarray], mesh, size: int = 2,
                       spec=P("data"), rows: int | None = None) -> Iterator[jax.Array]:
  """Keeps `size` batches in flight to the devices ahead of the consumer."""
  queue = collections.deque()
  for batch in iterator:
    queue.append(shard_batch(batch, mesh, spec, rows))
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


def tfds_images(data_config: Any, image_shape) -> tuple[tf.data.Dataset, int | None]:
  """uint8 images of a TFDS split (and the split's size where TFDS records one)."""
  builder = prepared_builder(data_config)
  shape = tuple(builder.info.features["image"].shape)
  size = _split_size(builder, data_config.split)
  ds = builder.as_dataset(split=data_config.split, shuffle_files=False).map(
      lambda ex: ex["image"], num_parallel_calls=tf.data.AUTOTUNE)
  resize = bool(data_config.image_size or data_config.crop)
  if resize:
    side = data_config.image_size or image_shape[0]
    ds = ds.map(lambda x: image_folder.crop_and_resize(x, side, data_config.crop),
                num_parallel_calls=tf.data.AUTOTUNE)
    shape = (side, side, shape[-1])
  if shape != tuple(image_shape):
    how = (f"cropped/resized to {shape} (data.image_size={data_config.image_size}, "
           f"data.crop={data_config.crop})" if resize else f"of shape {shape}")
    raise DataError(f"dataset '{data_config.name}' has images {how}, but the model "
                    f"takes {tuple(image_shape)} (model.image_size, model.channels)")
  return ds.cache(), size


def folder_images(data_config: Any, image_shape) -> tuple[tf.data.Dataset, int]:
  """uint8 images of an image folder, resized to data.image_size."""
  if not data_config.folder:
    raise DataError("data.source='folder' needs data.folder=PATH")
  side = data_config.image_size or image_shape[0]
  if (side, side, image_shape[2]) != tuple(image_shape):
    raise DataError(f"images from {data_config.folder} are resized to {side}x{side} "
                    f"(data.image_size), but the model takes {image_shape[0]}x{image_shape[1]} "
                    f"(model.image_size)")
  return image_folder.load_image_folder(data_config.folder, side, image_shape[2],
                                        crop=data_config.crop)


SOURCES = {"tfds": tfds_images, "folder": folder_images}


def device_major(batch: np.ndarray, batches_per_step: int, num_devices: int) -> np.ndarray:
  """`batches_per_step` consecutive global batches, stacked -> rows ordered so
  that each device's contiguous shard holds its rows of each batch in turn
  (what `train_step` reshapes to (batches_per_step, per-device batch))."""
  k, n = batches_per_step, num_devices
  if k == 1:
    return batch
  x = batch.reshape(k, n, batch.shape[0] // (k * n), *batch.shape[1:])
  return x.swapaxes(0, 1).reshape(batch.shape)


class TrainData:
  """Training images of one source, batched for the mesh.

  The epoch order depends only on (seed, epoch), so a run resumed at step s
  sees the batches an uninterrupted run sees from step s on. A step takes
  `batches_per_step` consecutive global batches (one per D update). With
  `data.on_device`, `device_images()` holds the split and the host sends
  indices (`chunks(..., indices=True)`), in exactly the same order.

  Multi-process: every process reads the whole split and computes the same
  seeded epoch order, then feeds only the rows of each step's global batch
  that its own devices hold (`process_rows`). This is the equivalent of
  `tfds.split_for_jax_process` that keeps the global batch identical for any
  process count: a run on N processes trains on exactly the batches of the
  one-process run (same results, same resume position).
  """

  def __init__(self, data_config: Any, global_batch: int, seed: int,
               mesh: jax.sharding.Mesh, image_shape: tuple[int, int, int],
               batches_per_step: int = 1):
    if data_config.source not in SOURCES:
      raise DataError(f"unknown data.source {data_config.source!r}; valid: {sorted(SOURCES)}")
    self._images, size = SOURCES[data_config.source](data_config, tuple(image_shape))
    self.num_examples = size if size is not None else int(
        self._images.reduce(0, lambda n, _: n + 1))
    self.step_batch = global_batch * batches_per_step
    self.steps_per_epoch = self.num_examples // self.step_batch
    if self.steps_per_epoch == 0:
      raise DataError(f"the data ({self.describe(data_config)}) has {self.num_examples} "
                      f"examples, fewer than one step's {batches_per_step} batch(es) of "
                      f"{global_batch}")
    self.global_batch = global_batch
    self.batches_per_step = batches_per_step
    self.seed = seed
    self.mesh = mesh
    self.config = data_config
    # This process's rows of a step batch, as positions in the stacked
    # global batches, in device-major order (`device_major`): what its
    # devices hold, in their order. None: every row as it comes (one process,
    # one batch per step).
    rows = device_major(np.arange(self.step_batch), batches_per_step, mesh.devices.size)
    rows = rows[process_rows(mesh, self.step_batch)]
    self._rows = None if np.array_equal(rows, np.arange(self.step_batch)) else rows

  @staticmethod
  def describe(data_config) -> str:
    if data_config.source == "folder":
      return f"folder {data_config.folder}"
    return f"split '{data_config.split}' of '{data_config.name}'"

  def _shuffle(self, ds: tf.data.Dataset, epoch: int) -> tf.data.Dataset:
    # One fixed order per (seed, epoch): the epoch can be rebuilt on resume.
    # The order depends only on the positions, not on the elements: shuffling
    # the images and shuffling their indices give the same permutation.
    ds = ds.shuffle(min(self.config.shuffle_buffer, self.num_examples),
                    seed=self.seed * 100_003 + epoch, reshuffle_each_iteration=False)
    return ds.batch(self.step_batch, drop_remainder=True)

  @staticmethod
  def _take_rows(ds: tf.data.Dataset, rows: np.ndarray | None) -> tf.data.Dataset:
    return ds if rows is None else ds.map(lambda x: tf.gather(x, rows))

  def epoch(self, epoch: int, rows: np.ndarray | None = None) -> tf.data.Dataset:
    """One epoch of normalised global batches in the (seed, epoch) order
    (with `rows`, only those rows of each batch, in that order: only they
    are normalised)."""
    ds = self._take_rows(self._shuffle(self._images, epoch), rows).map(
        lambda x: normalise(x, self.config.pixel_range), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)

  def epoch_indices(self, epoch: int, rows: np.ndarray | None = None) -> tf.data.Dataset:
    """The source positions of `epoch(epoch, rows)`'s batches, batch by batch."""
    return self._take_rows(self._shuffle(tf.data.Dataset.range(self.num_examples), epoch), rows)

  def host_batches(self, start_step: int = 0, indices: bool = False) -> Iterator[np.ndarray]:
    """Endless per-step host arrays from `start_step` on: the normalised
    images, or (`indices`) their int32 positions in `device_images()`; this
    process's rows of each step's batches, in device-major order."""
    epoch, skip = divmod(start_step, self.steps_per_epoch)
    while True:
      ds = (self.epoch_indices(epoch, self._rows) if indices
            else self.epoch(epoch, self._rows))
      for batch in ds.skip(skip).as_numpy_iterator():
        yield batch.astype(np.int32) if indices else batch
      epoch, skip = epoch + 1, 0

  def batches(self, start_step: int = 0) -> Iterator[jax.Array]:
    """Endless device batches from global step `start_step` on."""
    return prefetch_to_device(self.host_batches(start_step), self.mesh, rows=self.step_batch)

  def chunks(self, start_step: int, sizes: Iterator[int],
             indices: bool = False) -> Iterator[jax.Array]:
    """For each k in `sizes`, the next k steps' batches (or indices) stacked
    into one (k, rows, ...) device array, for a fused k-step call (each
    process stacks its own rows)."""
    return member_chunks([self], start_step, sizes, indices, member_axis=False)

  def device_images(self) -> jax.Array:
    """The whole split as one uint8 array in source order, on every device
    (every process puts the same copy on its own devices)."""
    images = np.concatenate(list(self._images.batch(4096).as_numpy_iterator()))
    return jax.device_put(images, NamedSharding(self.mesh, P()))


def member_chunks(sources: list[TrainData], start_step: int, sizes: Iterator[int],
                  indices: bool = False, member_axis: bool = True) -> Iterator[jax.Array]:
  """`TrainData.chunks` of each source (a sweep's members, each in its own
  order), stacked into (K, k, rows, ...) device arrays; `member_axis=False`
  takes one source and leaves the member axis out. A source listed for
  several members (one seed, several learning rates) is read once."""
  unique = list(dict.fromkeys(sources))
  def stacked():
    rows = [s.host_batches(start_step, indices) for s in unique]
    for k in sizes:
      chunk = dict(zip(unique, (np.stack([next(r) for _ in range(k)]) for r in rows)))
      yield np.stack([chunk[s] for s in sources]) if member_axis else chunk[sources[0]]
  spec = P(None, None, "data") if member_axis else P(None, "data")
  return prefetch_to_device(stacked(), sources[0].mesh, spec=spec, rows=sources[0].step_batch)
