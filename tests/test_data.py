"""The input pipeline: the TFDS source on a real (small) TFDS dataset prepared
from generated IDX files, and a registered in-memory (numpy) source."""
from __future__ import annotations

import itertools
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gan_jax import data
from gan_jax.config import base_config
from gan_jax.data import pipeline
from gan_jax.errors import ConfigError
from gan_jax.mesh import AXIS, make_mesh
from conftest import make_idx_data, write_idx_folder

N_TRAIN, N_TEST, BATCH = 24, 8, 8


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  arrays = make_idx_data({"train": N_TRAIN, "test": N_TEST})
  folder = write_idx_folder(root / "idx", arrays)
  return root, folder, arrays["train"][0]


def _source(prepared, seed=0, pixel_range=(-1.0, 1.0), split="train", shape=(28, 28, 1)):
  root, folder, _ = prepared
  cfg = base_config().data
  cfg.update(dict(name="fashion_mnist", split=split, data_dir=str(root / "tfds"),
                  idx_dir=str(folder), pixel_range=pixel_range, shuffle_buffer=1000))
  return pipeline.TrainData(cfg, BATCH, seed, make_mesh(), image_shape=shape)


def _take(it, n):
  return [np.asarray(b) for b in itertools.islice(it, n)]


def test_epoch_visits_every_image_once_normalised(prepared):
  _, _, images = prepared
  source = _source(prepared, pixel_range=(-0.5, 0.5))
  assert source.num_examples == N_TRAIN and source.steps_per_epoch == N_TRAIN // BATCH
  batches = _take(source.batches(), source.steps_per_epoch)
  assert all(b.shape == (BATCH, 28, 28, 1) and b.dtype == np.float32 for b in batches)
  seen = np.concatenate(batches)[..., 0]
  assert seen.min() >= -0.5 and seen.max() <= 0.5
  # Back to uint8 exactly: the normalisation is v / 255 - 0.5.
  restored = np.round((seen + 0.5) * 255).astype(np.uint8)
  np.testing.assert_allclose(seen, restored / 255.0 - 0.5, atol=1e-6)
  assert sorted(map(bytes, restored)) == sorted(map(bytes, images))  # each image exactly once


def test_order_is_seeded_and_changes_per_epoch(prepared):
  a = _take(_source(prepared, seed=0).host_batches(), 6)
  b = _take(_source(prepared, seed=0).host_batches(), 6)
  c = _take(_source(prepared, seed=1).host_batches(), 6)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not all(np.array_equal(x, y) for x, y in zip(a, c))
  assert not all(np.array_equal(x, y) for x, y in zip(a[:3], a[3:]))  # epoch 1 != epoch 0


def test_resume_position_gives_the_same_batches(prepared):
  source = _source(prepared)
  full = _take(source.host_batches(), 8)
  for start in (2, 4):  # mid-epoch, and across the epoch boundary at 3
    resumed = _take(source.host_batches(start_step=start), 8 - start)
    assert all(np.array_equal(x, y) for x, y in zip(full[start:], resumed))


def test_batches_are_split_over_the_mesh(prepared):
  batch = next(_source(prepared).batches())
  assert batch.shape == (BATCH, 28, 28, 1)
  assert batch.sharding.spec == P(AXIS)
  assert len(batch.addressable_shards) == len(make_mesh().devices)


def test_wrong_image_shape_and_split_are_clear_errors(prepared):
  with pytest.raises(data.DataError, match=r"images of shape \(28, 28, 1\).*takes \(32, 32, 3\)"):
    _source(prepared, shape=(32, 32, 3))
  with pytest.raises(data.DataError, match="no split 'validation'"):
    _source(prepared, split="validation")


def _source_k(prepared, seed=0, batches_per_step=1, shuffle_buffer=1000):
  root, folder, _ = prepared
  cfg = base_config().data
  cfg.update(dict(name="fashion_mnist", data_dir=str(root / "tfds"), idx_dir=str(folder),
                  shuffle_buffer=shuffle_buffer, on_device=True))
  return pipeline.TrainData(cfg, BATCH // batches_per_step, seed, make_mesh(),
                        image_shape=(28, 28, 1), batches_per_step=batches_per_step)


@pytest.mark.parametrize("batches_per_step,shuffle_buffer", [(1, 1000), (2, 5)])
def test_on_device_mode_matches_the_tfds_pipeline_order(prepared, batches_per_step,
                                                        shuffle_buffer):
  """Indices gathered on device give exactly the pipeline's batches, epoch
  after epoch, for a full and for a partial shuffle buffer, and after resume;
  each epoch visits every example once."""
  source = _source_k(prepared, 3, batches_per_step, shuffle_buffer)
  images = source.device_images()
  assert images.dtype == np.uint8 and images.shape == (N_TRAIN, 28, 28, 1)
  steps = 2 * source.steps_per_epoch
  piped = _take(source.host_batches(), steps)
  indices = _take(source.host_batches(indices=True), steps)
  for epoch in range(2):
    seen = np.concatenate(indices[epoch * source.steps_per_epoch:][:source.steps_per_epoch])
    assert sorted(seen) == list(range(N_TRAIN))
  assert not np.array_equal(indices[0], indices[source.steps_per_epoch])
  for batch, idx in zip(piped, indices):
    np.testing.assert_array_equal(np.asarray(data.gather_batch(images, idx, (-1.0, 1.0))),
                                  batch)
  resumed = _take(source.host_batches(start_step=2, indices=True), steps - 2)
  assert all(np.array_equal(a, b) for a, b in zip(indices[2:], resumed))


def test_chunks_stack_consecutive_steps(prepared):
  source = _source_k(prepared)
  flat = _take(source.host_batches(start_step=1, indices=True), 6)
  chunks = _take(source.chunks(1, iter([3, 1, 2]), indices=True), 3)
  assert [c.shape for c in chunks] == [(3, BATCH), (1, BATCH), (2, BATCH)]
  np.testing.assert_array_equal(np.concatenate(chunks), np.stack(flat))


def test_load_images_gives_the_first_images_in_source_order(prepared):
  root, folder, images = prepared
  cfg = base_config().data
  cfg.update(dict(name="fashion_mnist", data_dir=str(root / "tfds"), idx_dir=str(folder)))
  everything = data.load_images(cfg, (28, 28, 1))
  assert everything.dtype == np.uint8 and everything.shape == (N_TRAIN, 28, 28, 1)
  assert sorted(map(bytes, everything[..., 0])) == sorted(map(bytes, images))
  np.testing.assert_array_equal(data.load_images(cfg, (28, 28, 1), limit=5), everything[:5])
  cfg.split = "test"
  with pytest.raises(data.DataError, match=rf"split 'test' of 'fashion_mnist' has {N_TEST} "
                                           rf"images, fewer than the {N_TEST + 1}"):
    data.load_images(cfg, (28, 28, 1), limit=N_TEST + 1)


# -- An in-memory (numpy) source: no TensorFlow.

N_MEM, SHAPE = 27, (5, 5, 1)   # 27 = 3 steps of 8, and 3 left over each epoch


def _memory_images(n=N_MEM):
  return np.random.default_rng(7).integers(0, 256, (n, *SHAPE), dtype=np.uint8)


@pytest.fixture
def memory_source(monkeypatch):
  """'memory' registered for this test only: N_MEM images, or data.name of them."""
  def source(data_config, image_shape):
    assert image_shape == SHAPE
    return _memory_images(int(data_config.name or N_MEM))
  monkeypatch.setitem(data.SOURCES, "memory", source)
  return _memory_images()


def _memory_cfg(**values):
  cfg = base_config().data
  cfg.update(dict(dict(source="memory", name="", pixel_range=(-0.5, 0.5)), **values))
  return cfg


def _memory_data(seed=0, batch=BATCH, batches_per_step=1, **values):
  return pipeline.TrainData(_memory_cfg(**values), batch, seed, make_mesh(), SHAPE,
                            batches_per_step=batches_per_step)


def test_memory_source_order_is_a_seeded_permutation_per_epoch(memory_source):
  source = _memory_data(seed=3)
  assert source.in_memory and source.num_examples == N_MEM and source.steps_per_epoch == 3
  steps = source.steps_per_epoch
  indices = _take(source.host_batches(indices=True), 3 * steps)
  assert all(i.dtype == np.int32 and i.shape == (BATCH,) for i in indices)
  epochs = [np.concatenate(indices[e * steps:(e + 1) * steps]) for e in range(3)]
  for seen in epochs:   # each epoch: distinct examples, the remainder dropped
    assert len(set(seen)) == steps * BATCH and set(seen) <= set(range(N_MEM))
  assert not np.array_equal(epochs[0], epochs[1]) and not np.array_equal(epochs[1], epochs[2])
  again = _take(_memory_data(seed=3).host_batches(indices=True), 3 * steps)
  other = _take(_memory_data(seed=4).host_batches(indices=True), 3 * steps)
  assert all(np.array_equal(a, b) for a, b in zip(indices, again))
  assert not all(np.array_equal(a, b) for a, b in zip(indices, other))
  # The images are those examples, normalised as tf.data normalises.
  images = _take(source.host_batches(), 3 * steps)
  for batch, idx in zip(images, indices):
    assert batch.dtype == np.float32 and batch.shape == (BATCH, *SHAPE)
    np.testing.assert_array_equal(batch, memory_source[idx] * np.float32(1 / 255) - 0.5)
    np.testing.assert_array_equal(batch, pipeline.normalise(memory_source[idx], (-0.5, 0.5)))
  device = source.device_images()
  np.testing.assert_array_equal(np.asarray(device), memory_source)
  np.testing.assert_array_equal(np.asarray(data.gather_batch(device, indices[0], (-0.5, 0.5))),
                                images[0])


def test_memory_source_resumes_where_it_left_off(memory_source):
  source = _memory_data(batch=4, batches_per_step=2)
  assert source.step_batch == 8 and source.steps_per_epoch == 3
  for indices in (False, True):
    full = _take(source.host_batches(indices=indices), 8)
    for start in (2, 3, 5):   # mid-epoch, at and across the epoch boundary
      resumed = _take(source.host_batches(start_step=start, indices=indices), 8 - start)
      assert all(np.array_equal(x, y) for x, y in zip(full[start:], resumed))
  chunks = _take(source.chunks(1, iter([2, 3]), indices=True), 2)
  np.testing.assert_array_equal(np.concatenate(chunks),
                                np.stack(_take(source.host_batches(1, indices=True), 5)))


def test_normalise_in_numpy_tensorflow_and_on_device_agree_bitwise():
  """The three feeds give the same bits (a plain `x * scale + lo` compiled by
  XLA is a fused multiply-add, 1 ulp off tf.data in most pixels)."""
  values = np.arange(256, dtype=np.uint8)
  on_device = jax.jit(lambda v, scale: data.gather_batch(v, jnp.arange(256), scale),
                      static_argnums=1)
  for pixel_range in ((-1.0, 1.0), (0.0, 1.0), (-0.5, 0.5), (-1.3, 2.7)):
    expected = pipeline.normalise_array(values, pixel_range)
    assert expected.dtype == np.float32 and expected[0] == np.float32(pixel_range[0])
    np.testing.assert_allclose(expected[-1], pixel_range[1], rtol=1e-6)
    np.testing.assert_array_equal(pipeline.normalise(values, pixel_range).numpy(), expected)
    np.testing.assert_array_equal(np.asarray(on_device(values, pixel_range)), expected)


def test_load_images_of_a_memory_source(memory_source):
  np.testing.assert_array_equal(data.load_images(_memory_cfg(), SHAPE), memory_source)
  np.testing.assert_array_equal(data.load_images(_memory_cfg(), SHAPE, limit=10),
                                memory_source[:10])
  with pytest.raises(data.DataError, match=rf"data.source 'memory' \(split 'train'\) has "
                                           rf"{N_MEM} images, fewer than the {N_MEM + 1}"):
    data.load_images(_memory_cfg(), SHAPE, limit=N_MEM + 1)
  with pytest.raises(data.DataError, match=r"has 3 examples, fewer than one step's"):
    _memory_data(name="3")


def test_a_bad_memory_source_is_a_clear_error(monkeypatch):
  monkeypatch.setitem(data.SOURCES, "memory", lambda cfg, shape: np.zeros((4, 5, 5, 3), np.uint8))
  with pytest.raises(data.DataError, match=r"images of shape \(5, 5, 3\).*takes \(5, 5, 1\)"):
    _memory_data()
  monkeypatch.setitem(data.SOURCES, "memory", lambda cfg, shape: np.zeros((4, 5, 5, 1)))
  with pytest.raises(data.DataError, match="float64 array.*uint8"):
    data.load_images(_memory_cfg(), SHAPE)


def test_an_unknown_source_lists_the_registered_ones(memory_source):
  cfg = _memory_cfg(source="nope")
  for load in (lambda: pipeline.TrainData(cfg, BATCH, 0, make_mesh(), SHAPE),
               lambda: data.load_images(cfg, SHAPE)):
    with pytest.raises(ConfigError, match=r"unknown data source 'nope'.*folder, memory, tfds"):
      load()
  assert "memory" in data.SOURCES


def test_no_source_leaks_out_of_a_test():
  assert "memory" not in data.SOURCES and {"tfds", "folder"} <= set(data.SOURCES)


_TF_FREE = textwrap.dedent("""
  import importlib.abc, sys

  class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
      if name.partition(".")[0] in ("tensorflow", "tensorflow_datasets"):
        raise ImportError(f"{name} is not installed here")

  sys.meta_path.insert(0, NoTensorFlow())
  import itertools
  import jax, ml_collections, numpy as np
  from gan_jax import data
  from gan_jax.data import pipeline
  from gan_jax.mesh import make_mesh

  images = np.random.default_rng(0).integers(0, 256, (40, 4, 4, 1), dtype=np.uint8)
  data.register_source("memory")(lambda cfg, shape: images)
  cfg = ml_collections.ConfigDict(dict(source="memory", split="train", pixel_range=(-1.0, 1.0),
                                       shuffle_buffer=1000))

  def take(source, n, indices=False):
    return [np.asarray(b) for b in itertools.islice(source.host_batches(indices=indices), n)]

  one = pipeline.TrainData(cfg, 4, 1, make_mesh(jax.devices()[:1]), (4, 4, 1),
                           batches_per_step=2)
  idx, batches = take(one, 7, True), take(one, 7)
  for i, b in zip(idx, batches):
    np.testing.assert_array_equal(b, images[i] * np.float32(2 / 255) - 1)
  assert np.asarray(one.device_images()).tobytes() == images.tobytes()
  assert next(one.batches()).shape == (8, 4, 4, 1)
  assert data.load_images(cfg, (4, 4, 1), limit=3).tobytes() == images[:3].tobytes()
  # Four devices: each holds its rows of both batches of a step (device-major).
  four = pipeline.TrainData(cfg, 4, 1, make_mesh(jax.devices()[:4]), (4, 4, 1),
                            batches_per_step=2)
  for a, b in zip(take(four, 7, True), idx):
    np.testing.assert_array_equal(a, data.device_major(b, 2, 4))
  chunk = next(four.chunks(0, iter([3]), indices=True))
  assert chunk.shape == (3, 8) and len(chunk.addressable_shards) == 4
  assert "tensorflow" not in sys.modules and "tensorflow_datasets" not in sys.modules
  try:   # a tf.data source says what it needs
    data.load_images(ml_collections.ConfigDict(dict(cfg, source="tfds", name="mnist")), (4, 4, 1))
  except data.DataError as e:
    assert "need TensorFlow and TensorFlow Datasets" in str(e), e
  else:
    raise AssertionError("the tfds source loaded without TensorFlow")
  print("TF-FREE OK")
""")


def test_a_memory_source_trains_without_tensorflow():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
  run = subprocess.run([sys.executable, "-c", _TF_FREE], cwd=root, env=env,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0 and "TF-FREE OK" in run.stdout, run.stderr[-3000:]
