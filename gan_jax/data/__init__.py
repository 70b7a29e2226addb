"""Training data: registered sources, and batches split over the device mesh.

A data source (`data.source`, a name in `SOURCES`) is
`fn(data_config, image_shape) -> images`, registered with
`@register_source(name)`. It returns either

  * a uint8 numpy array (N, H, W, C) held in memory: no TensorFlow is
    involved anywhere (`gan_jax.data.pipeline` shuffles and normalises it in
    numpy), or
  * a `(tf.data.Dataset of uint8 (H, W, C) images, size or None)` pair, as the
    built-in 'tfds' and 'folder' sources do (`gan_jax.data.sources`).

Labels (class-conditional experiments, `model.num_classes > 0`): the source
is called with `labels=True` and returns `(images, labels)` numpy arrays
(labels integers (N,)), or a `(tf.data.Dataset of (image, label) pairs,
size or None)` pair. A source that takes no `labels` argument has none.

This module never imports TensorFlow or TFDS: they are imported on first use
by a tf.data source (`gan_jax.data._tf`), so a machine with JAX alone can
train on an in-memory source. `pipeline.TrainData` turns a source into
seeded, resumable, device-sharded batches; the helpers here are the
TF-free parts it and the trainer share.
"""
from __future__ import annotations

import collections
import inspect
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from gan_jax.errors import DataError  # noqa: F401  (re-exported: data.DataError)
from gan_jax.mesh import AXIS
from gan_jax.registry import Registry

SOURCES = Registry("data source")


def register_source(name: str) -> Callable:
  """`@register_source("name")` over `fn(data_config, image_shape) -> images`."""
  return SOURCES.register(name)


def describe(data_config: Any) -> str:
  """The configured data, in words, for error messages."""
  source = data_config.source
  if source == "folder":
    return f"folder {data_config.folder}"
  if source == "tfds":
    return f"split '{data_config.split}' of '{data_config.name}'"
  split = getattr(data_config, "split", "")
  return f"data.source '{source}'" + (f" (split '{split}')" if split else "")


def _labelled(out: Any) -> bool:
  return isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], np.ndarray)


def in_memory(out: Any) -> bool:
  """Whether `source_images` gave numpy arrays (images, or (images, labels))
  rather than a (tf.data.Dataset, size) pair."""
  return isinstance(out, np.ndarray) or _labelled(out)


def first_examples(out: Any, limit: int) -> Any:
  """`source_images`' output cut to its first `limit` examples (0: all), in
  either form; a dataset's recorded size is cut alike."""
  if not limit:
    return out
  if in_memory(out):
    return jax.tree.map(lambda a: a[:limit], out)
  ds, size = out
  return ds.take(limit), None if size is None else min(size, limit)


def _check_array(images: np.ndarray, data_config: Any, image_shape) -> None:
  if images.dtype != np.uint8 or images.ndim != 4:
    raise DataError(f"{describe(data_config)} gave a {images.dtype} array of shape "
                    f"{images.shape}; a source's images are uint8 (N, H, W, C)")
  if images.shape[1:] != image_shape:
    raise DataError(f"{describe(data_config)} has images of shape {images.shape[1:]}, but "
                    f"the model takes {image_shape} (model.image_size, model.channels)")


def check_labels(labels: np.ndarray, num_images: int, data_config: Any,
                 num_classes: int = 0) -> np.ndarray:
  """A source's labels as int32 (N,), one per image, in [0, num_classes)
  (when num_classes is given)."""
  labels = np.asarray(labels)
  if labels.shape != (num_images,) or not np.issubdtype(labels.dtype, np.integer):
    raise DataError(f"{describe(data_config)} gave labels of dtype {labels.dtype} and shape "
                    f"{labels.shape} for {num_images} images; labels are integers (N,)")
  if num_classes and len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
    raise DataError(f"{describe(data_config)} has labels in [{labels.min()}, {labels.max()}], "
                    f"outside the model's {num_classes} classes (model.num_classes)")
  return labels.astype(np.int32)


def source_images(data_config: Any, image_shape, labels: bool = False) -> Any:
  """What the configured source gives: a checked uint8 (N, H, W, C) array, or
  a (tf.data.Dataset, size or None) pair (the source checks its own shapes);
  with `labels`, an (images, int32 labels) pair of arrays or a pair whose
  dataset yields (image, label). A source without labels is a DataError."""
  image_shape = tuple(image_shape)
  fn = SOURCES.lookup(data_config.source, "data.source")
  if labels:
    params = inspect.signature(fn).parameters
    if "labels" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
      raise DataError(f"{describe(data_config)} has no labels (data.source "
                      f"{data_config.source!r} takes no `labels` argument), but the model "
                      f"is class-conditional (model.num_classes > 0)")
    out = fn(data_config, image_shape, labels=True)
  else:
    out = fn(data_config, image_shape)
  if isinstance(out, np.ndarray) and not labels:
    _check_array(out, data_config, image_shape)
    return out
  if labels and _labelled(out):
    _check_array(out[0], data_config, image_shape)
    return out[0], check_labels(out[1], len(out[0]), data_config)
  if isinstance(out, tuple) and len(out) == 2 and not isinstance(out[0], np.ndarray):
    return out
  want = ("an (images, labels) pair of numpy arrays or a (tf.data.Dataset of (image, label), "
          "size or None) pair" if labels else "a uint8 numpy array (N, H, W, C) or a "
          "(tf.data.Dataset, size or None) pair")
  raise DataError(f"{describe(data_config)} returned a {type(out).__name__}; a source "
                  f"returns {want}")


def load_images(data_config: Any, image_shape, limit: int = 0, key: str = "",
                labels: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
  """The first `limit` (0: all) uint8 images of the configured source and
  split, in source order (with `labels`: and their int32 labels). DataError
  where it has fewer than `limit` (set by the config key `key`, named in the
  message)."""
  out = first_examples(source_images(data_config, image_shape, labels), limit)
  if not in_memory(out):
    parts = list(out[0].batch(4096).as_numpy_iterator())
    empty = np.zeros((0, *tuple(image_shape)), np.uint8)
    if labels:
      out = ((np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
             if parts else (empty, np.zeros((0,), np.int32)))
      out = (out[0], check_labels(out[1], len(out[0]), data_config))
    else:
      out = np.concatenate(parts) if parts else empty
  n = len(out[0] if labels else out)
  if limit and n < limit:
    raise DataError(f"{describe(data_config)} has {n} images, fewer than the "
                    f"{limit} asked for" + (f" ({key}={limit})" if key else ""))
  return out


def pixel_table(pixel_range) -> np.ndarray:
  """float32 (256,): the value of each uint8 pixel in `pixel_range` [lo, hi].

  Every normaliser (tf.data, numpy, on device) looks pixels up in this one
  table, so a batch is bitwise the same whichever feeds it: XLA contracts
  `x * scale + lo` into a fused multiply-add, which differs from tf.data's
  separate multiply and add in the last bit, and Adam amplifies such bits
  in parameters whose gradient is near its epsilon."""
  lo, hi = (float(v) for v in pixel_range)
  return np.arange(256, dtype=np.float32) * np.float32((hi - lo) / 255.0) + np.float32(lo)


def gather_batch(images, indices: jax.Array, pixel_range):
  """`normalise(images[indices])` on device (the on-device data mode); with
  labels (`images` an (images, labels) pair), the pair, gathered by the same
  indices."""
  if isinstance(images, tuple):
    return (gather_batch(images[0], indices, pixel_range),
            jnp.take(images[1], indices, axis=0))
  pixels = jnp.take(images, indices, axis=0).astype(jnp.int32)
  return jnp.take(jnp.asarray(pixel_table(pixel_range)), pixels, axis=0)


def shard_batch(batch, mesh: jax.sharding.Mesh, spec=P(AXIS),
                rows: int | None = None):
  """A host batch -> one global array split over the mesh's `data` axis (for
  a stack of step batches, spec P(None, 'data')). `batch` holds this
  process's rows (`process_rows`) of a global batch of `rows` rows; on one
  process, the whole batch. An (images, labels) pair is sharded alike."""
  if isinstance(batch, tuple):
    return tuple(shard_batch(b, mesh, spec, rows) for b in batch)
  shape = None
  if rows is not None:
    axis = tuple(spec).index(AXIS)
    shape = batch.shape[:axis] + (rows,) + batch.shape[axis + 1:]
  return jax.make_array_from_process_local_data(NamedSharding(mesh, spec), batch, shape)


def process_rows(mesh: jax.sharding.Mesh, rows: int) -> np.ndarray:
  """Positions of the rows this process's devices hold when a batch of `rows`
  rows is split over the mesh's `data` axis, in order (what
  `make_array_from_process_local_data` expects of the process's data): one
  contiguous slice per process when each process's devices are adjacent in
  the mesh, as in `jax.devices()` order; every row on one process."""
  sharding = NamedSharding(mesh, P(AXIS))
  slices = {index[0].indices(rows)[:2]
            for index in sharding.addressable_devices_indices_map((rows,)).values()}
  return np.concatenate([np.arange(a, b) for a, b in sorted(slices)])


def prefetch_to_device(iterator: Iterator[np.ndarray], mesh, size: int = 2,
                       spec=P(AXIS), rows: int | None = None) -> Iterator[jax.Array]:
  """Keeps `size` batches in flight to the devices ahead of the consumer."""
  queue = collections.deque()
  for batch in iterator:
    queue.append(shard_batch(batch, mesh, spec, rows))
    if len(queue) > size:
      yield queue.popleft()
  while queue:
    yield queue.popleft()


def device_major(batch: np.ndarray, batches_per_step: int, num_devices: int) -> np.ndarray:
  """`batches_per_step` consecutive global batches, stacked -> rows ordered so
  that each device's contiguous shard holds its rows of each batch in turn
  (what `train_step` reshapes to (batches_per_step, per-device batch))."""
  k, n = batches_per_step, num_devices
  if k == 1:
    return batch
  x = batch.reshape(k, n, batch.shape[0] // (k * n), *batch.shape[1:])
  return x.swapaxes(0, 1).reshape(batch.shape)


# The built-in sources ('tfds', 'folder') register themselves. Neither module
# imports TensorFlow until a tf.data source is used.
from gan_jax.data import sources  # noqa: E402,F401
