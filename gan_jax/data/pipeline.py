"""Training batches of one source, for the mesh.

source images (uint8) -> seeded shuffle (a new order each epoch) ->
normalise to the configured pixel range -> global batch (drop_remainder) ->
split over the devices of the mesh -> prefetch to device. On several
processes (multi-host), each process feeds the rows of every global batch
that its own devices hold.

A tf.data source (TFDS, image folder) is shuffled, batched and normalised by
tf.data, on the CPU. An in-memory source (a uint8 numpy array) is shuffled
and normalised in numpy, and TensorFlow is never imported: this module
imports it only on first use by a tf.data source.

On-device mode (`data.on_device`, for datasets that fit in device memory):
the whole split is put on every device once, as uint8, and the host sends
only each step's example indices, in the same seeded epoch order; the
compiled step gathers and normalises its batch itself (`gather_batch`).

Labels (`labels=True`, class-conditional models): every batch is an
(images, int32 labels) pair, the labels travelling with their images through
the shuffle, the split over processes and devices, and the on-device gather.
`data.num_examples` keeps only the first N examples of the split
(limited-data experiments); a tf.data source's cut is then cached in memory,
so a source that streams or transforms at random reads it once.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Iterator

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from gan_jax.data import (_tf, check_labels, describe, device_major, first_examples,
                          in_memory, pixel_table, prefetch_to_device, process_rows,
                          source_images)
from gan_jax.errors import DataError
from gan_jax.mesh import AXIS

if TYPE_CHECKING:
  import tensorflow as tf


def normalise(images: tf.Tensor, pixel_range) -> tf.Tensor:
  """uint8 [0, 255] -> float32 [lo, hi], by `pixel_table`."""
  tf = _tf.tf()
  return tf.gather(tf.constant(pixel_table(pixel_range)), tf.cast(images, tf.int32))


def normalise_array(images: np.ndarray, pixel_range) -> np.ndarray:
  """`normalise` in numpy, to the same float32 values."""
  return pixel_table(pixel_range)[images]


class TrainData:
  """Training images of one source, batched for the mesh.

  The epoch order depends only on (seed, epoch), so a run resumed at step s
  sees the batches an uninterrupted run sees from step s on. A step takes
  `batches_per_step` consecutive global batches (one per D update). With
  `data.on_device`, `device_images()` holds the split and the host sends
  indices (`chunks(..., indices=True)`), in exactly the same order.

  The order: a tf.data source is shuffled by `Dataset.shuffle` with
  `data.shuffle_buffer`; an in-memory source takes a full numpy permutation
  per (seed, epoch) (no buffer). Either way each epoch drops the remainder.

  Multi-process: every process reads the whole split and computes the same
  seeded epoch order, then feeds only the rows of each step's global batch
  that its own devices hold (`process_rows`). This is the equivalent of
  `tfds.split_for_jax_process` that keeps the global batch identical for any
  process count: a run on N processes trains on exactly the batches of the
  one-process run (same results, same resume position).
  """

  def __init__(self, data_config: Any, global_batch: int, seed: int,
               mesh: jax.sharding.Mesh, image_shape: tuple[int, int, int],
               batches_per_step: int = 1, num_classes: int = 0):
    self.labels = num_classes > 0
    self.num_classes = num_classes
    limit = data_config.get("num_examples", 0)
    if limit < 0:
      raise DataError(f"data.num_examples must be >= 0 (0 = the whole split), got {limit}")
    images = first_examples(source_images(data_config, tuple(image_shape), self.labels), limit)
    if in_memory(images):
      if self.labels:
        check_labels(images[1], len(images[0]), data_config, num_classes)
      self._array, self._images = images, None
      self.num_examples = len(images[0] if self.labels else images)
    else:
      if limit:
        # Epochs read the cut from memory: a source's own cache() behind the
        # cut, read only partly, is dropped (with a warning) and the source
        # read again every epoch.
        images = (images[0].cache(), images[1])
      self._array, (self._images, size) = None, images
      self.num_examples = size if size is not None else int(
          self._images.reduce(0, lambda n, *_: n + 1))
    self.step_batch = global_batch * batches_per_step
    self.steps_per_epoch = self.num_examples // self.step_batch
    if self.steps_per_epoch == 0:
      raise DataError(f"the data ({describe(data_config)}) has {self.num_examples} "
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

  @property
  def in_memory(self) -> bool:
    """Whether the source is a numpy array (no TensorFlow involved)."""
    return self._array is not None

  # -- tf.data sources: this order is what runs and tests were made with.

  def _shuffle(self, ds: tf.data.Dataset, epoch: int) -> tf.data.Dataset:
    # One fixed order per (seed, epoch): the epoch can be rebuilt on resume.
    # The order depends only on the positions, not on the elements: shuffling
    # the images and shuffling their indices give the same permutation.
    ds = ds.shuffle(min(self.config.shuffle_buffer, self.num_examples),
                    seed=self.seed * 100_003 + epoch, reshuffle_each_iteration=False)
    return ds.batch(self.step_batch, drop_remainder=True)

  @staticmethod
  def _take_rows(ds: tf.data.Dataset, rows: np.ndarray | None) -> tf.data.Dataset:
    tf = _tf.tf()
    return ds if rows is None else ds.map(
        lambda *x: tuple(tf.gather(t, rows) for t in x) if len(x) > 1 else tf.gather(x[0], rows))

  def _normalised(self, batch):
    """A host batch's images normalised (labels as they are)."""
    pixel_range = self.config.pixel_range
    if self.labels:
      return normalise_array(batch[0], pixel_range), batch[1]
    return normalise_array(batch, pixel_range)

  def _rows_of(self, positions: np.ndarray):
    """The in-memory examples (with labels) at `positions`."""
    return jax.tree.map(lambda a: a[positions], self._array)

  # -- in-memory sources.

  def _order(self, epoch: int, rows: np.ndarray | None) -> np.ndarray:
    """(steps_per_epoch, rows) source positions of the epoch's step batches."""
    order = np.random.default_rng([int(self.seed) % 2**64, epoch]).permutation(
        self.num_examples)
    order = order[:self.steps_per_epoch * self.step_batch].reshape(
        self.steps_per_epoch, self.step_batch)
    return order if rows is None else order[:, rows]

  # -- both.

  def epoch(self, epoch: int, rows: np.ndarray | None = None) -> Iterable:
    """One epoch of normalised global batches in the (seed, epoch) order
    (with `rows`, only those rows of each batch, in that order: only they
    are normalised). A tf.data.Dataset, or (in memory) an iterator of arrays."""
    if self.in_memory:
      return (self._normalised(self._rows_of(b)) for b in self._order(epoch, rows))
    tf = _tf.tf()
    pixel_range = self.config.pixel_range
    ds = self._take_rows(self._shuffle(self._images, epoch), rows).map(
        (lambda x, y: (normalise(x, pixel_range), y)) if self.labels else
        (lambda x: normalise(x, pixel_range)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)

  def epoch_indices(self, epoch: int, rows: np.ndarray | None = None) -> Iterable:
    """The source positions of `epoch(epoch, rows)`'s batches, batch by batch
    (a tf.data.Dataset, or (in memory) a (steps, rows) array)."""
    if self.in_memory:
      return self._order(epoch, rows)
    tf = _tf.tf()
    return self._take_rows(self._shuffle(tf.data.Dataset.range(self.num_examples), epoch), rows)

  def _host_epoch(self, epoch: int, skip: int, indices: bool) -> Iterator[np.ndarray]:
    if self.in_memory:
      for batch in self._order(epoch, self._rows)[skip:]:
        yield batch.astype(np.int32) if indices else self._normalised(self._rows_of(batch))
      return
    ds = (self.epoch_indices(epoch, self._rows) if indices
          else self.epoch(epoch, self._rows))
    for batch in ds.skip(skip).as_numpy_iterator():
      if indices:
        yield batch.astype(np.int32)
      elif self.labels:   # a tf.data source's labels are only seen here
        yield batch[0], check_labels(batch[1], len(batch[1]), self.config, self.num_classes)
      else:
        yield batch

  def host_batches(self, start_step: int = 0, indices: bool = False) -> Iterator[np.ndarray]:
    """Endless per-step host arrays from `start_step` on: the normalised
    images, or (`indices`) their int32 positions in `device_images()`; this
    process's rows of each step's batches, in device-major order."""
    epoch, skip = divmod(start_step, self.steps_per_epoch)
    while True:
      yield from self._host_epoch(epoch, skip, indices)
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

  def device_images(self):
    """The whole split as one uint8 array in source order, on every device
    (every process puts the same copy on its own devices); with labels, the
    (images, int32 labels) pair."""
    if self.in_memory:
      images = self._array
    else:
      parts = list(self._images.batch(4096).as_numpy_iterator())
      images = (tuple(np.concatenate([p[i] for p in parts]) for i in range(2)) if self.labels
                else np.concatenate(parts))
      if self.labels:
        images = images[0], check_labels(images[1], len(images[0]), self.config,
                                         self.num_classes)
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
    stack = lambda parts: jax.tree.map(lambda *a: np.stack(a), *parts)
    for k in sizes:
      chunk = dict(zip(unique, (stack([next(r) for _ in range(k)]) for r in rows)))
      yield stack([chunk[s] for s in sources]) if member_axis else chunk[sources[0]]
  spec = P(None, None, AXIS) if member_axis else P(None, AXIS)
  return prefetch_to_device(stacked(), sources[0].mesh, spec=spec, rows=sources[0].step_batch)
