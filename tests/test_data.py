"""The TFDS input pipeline on a real (small) TFDS dataset prepared from generated IDX files."""
import itertools

import numpy as np
import pytest

from gan_jax import data, train
from gan_jax.config import base_config
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
  return data.TrainData(cfg, BATCH, seed, train.make_mesh(), image_shape=shape)


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
  assert batch.sharding.spec == train.P(train.AXIS)
  assert len(batch.addressable_shards) == len(train.make_mesh().devices)


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
  return data.TrainData(cfg, BATCH // batches_per_step, seed, train.make_mesh(),
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
    np.testing.assert_allclose(np.asarray(data.gather_batch(images, idx, (-1.0, 1.0))),
                               batch, rtol=0, atol=1e-6)
  resumed = _take(source.host_batches(start_step=2, indices=True), steps - 2)
  assert all(np.array_equal(a, b) for a, b in zip(indices[2:], resumed))


def test_chunks_stack_consecutive_steps(prepared):
  source = _source_k(prepared)
  flat = _take(source.host_batches(start_step=1, indices=True), 6)
  chunks = _take(source.chunks(1, iter([3, 1, 2]), indices=True), 3)
  assert [c.shape for c in chunks] == [(3, BATCH), (1, BATCH), (2, BATCH)]
  np.testing.assert_array_equal(np.concatenate(chunks), np.stack(flat))
