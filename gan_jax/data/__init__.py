"""Training data: registered sources, and batches split over the device mesh.

A data source (`data.source`, a name in `SOURCES`) is
`fn(data_config, image_shape) -> images`, registered with
`@register_source(name)`. It returns either

  * a uint8 numpy array (N, H, W, C) held in memory: no TensorFlow is
    involved anywhere (`gan_jax.data.pipeline` shuffles and normalises it in
    numpy), or
  * a `(tf.data.Dataset of uint8 (H, W, C) images, size or None)` pair, as the
    built-in 'tfds' and 'folder' sources do (`gan_jax.data.sources`).

This module never imports TensorFlow or TFDS: they are imported on first use
by a tf.data source (`gan_jax.data._tf`), so a machine with JAX alone can
train on an in-memory source. `pipeline.TrainData` turns a source into
seeded, resumable, device-sharded batches; the helpers here are the
TF-free parts it and the trainer share.
"""
from __future__ import annotations

import collections
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


def source_images(data_config: Any, image_shape) -> np.ndarray | tuple[Any, int | None]:
  """What the configured source gives: a checked uint8 (N, H, W, C) array, or
  a (tf.data.Dataset, size or None) pair (the source checks its own shapes)."""
  image_shape = tuple(image_shape)
  fn = SOURCES.lookup(data_config.source, "data.source")
  out = fn(data_config, image_shape)
  if isinstance(out, np.ndarray):
    if out.dtype != np.uint8 or out.ndim != 4:
      raise DataError(f"{describe(data_config)} gave a {out.dtype} array of shape "
                      f"{out.shape}; a source's images are uint8 (N, H, W, C)")
    if out.shape[1:] != image_shape:
      raise DataError(f"{describe(data_config)} has images of shape {out.shape[1:]}, but "
                      f"the model takes {image_shape} (model.image_size, model.channels)")
    return out
  if isinstance(out, tuple) and len(out) == 2:
    return out
  raise DataError(f"{describe(data_config)} returned a {type(out).__name__}; a source "
                  f"returns a uint8 numpy array (N, H, W, C) or a (tf.data.Dataset, "
                  f"size or None) pair")


def load_images(data_config: Any, image_shape, limit: int = 0, key: str = "") -> np.ndarray:
  """The first `limit` (0: all) uint8 images of the configured source and
  split, in source order. DataError where it has fewer than `limit` (set by
  the config key `key`, named in the message)."""
  images = source_images(data_config, image_shape)
  if isinstance(images, np.ndarray):
    images = images[:limit] if limit else images
  else:
    ds, _ = images
    if limit:
      ds = ds.take(limit)
    parts = list(ds.batch(4096).as_numpy_iterator())
    images = (np.concatenate(parts) if parts
              else np.zeros((0, *tuple(image_shape)), np.uint8))
  if limit and len(images) < limit:
    raise DataError(f"{describe(data_config)} has {len(images)} images, fewer than the "
                    f"{limit} asked for" + (f" ({key}={limit})" if key else ""))
  return images


def gather_batch(images: jax.Array, indices: jax.Array, pixel_range) -> jax.Array:
  """`normalise(images[indices])` on device (the on-device data mode)."""
  lo, hi = (float(v) for v in pixel_range)
  x = jnp.take(images, indices, axis=0).astype(jnp.float32)
  return x * np.float32((hi - lo) / 255.0) + np.float32(lo)


def shard_batch(batch: np.ndarray, mesh: jax.sharding.Mesh, spec=P(AXIS),
                rows: int | None = None) -> jax.Array:
  """A host batch -> one global array split over the mesh's `data` axis (for
  a stack of step batches, spec P(None, 'data')). `batch` holds this
  process's rows (`process_rows`) of a global batch of `rows` rows; on one
  process, the whole batch."""
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
