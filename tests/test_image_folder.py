"""The image-folder dataset, on real files written with PIL."""
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from gan_jax.data import image_folder
from gan_jax.errors import DataError


def _save(path, array, fmt=None, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(array).save(path, fmt, **kwargs)
  return path


def _noise(shape, seed):
  return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _good_folder(root):
  """Five readable images of mixed formats, sizes and modes in nested folders."""
  _save(os.path.join(root, "a.jpg"), _noise((50, 70, 3), 0))  # (H, W) = (50, 70)
  _save(os.path.join(root, "b", "c.PNG"), _noise((64, 64, 3), 1))
  _save(os.path.join(root, "b", "d", "e.webp"), _noise((20, 30, 3), 2), lossless=True)
  _save(os.path.join(root, "b", "gray.png"), _noise((33, 40), 3))
  _save(os.path.join(root, "rgba.png"), _noise((40, 33, 4), 4))
  # Hidden files and folders are not part of the dataset, not even as skips.
  _save(os.path.join(root, ".hidden", "x.png"), _noise((8, 8, 3), 5))
  _save(os.path.join(root, ".y.png"), _noise((8, 8, 3), 6))
  return 5


def _add_bad_files(root):
  good = _noise((16, 16, 3), 7)
  _save(os.path.join(root, "b", "truncated.png"), good)
  with open(os.path.join(root, "b", "truncated.png"), "r+b") as f:
    f.truncate(60)
  with open(os.path.join(root, "garbage.jpg"), "wb") as f:
    f.write(b"\xff\xd8\xff\xe0 this is not really a jpeg" * 4)
  open(os.path.join(root, "empty.png"), "wb").close()
  with open(os.path.join(root, "b", "notes.txt"), "w") as f:
    f.write("not an image")


@pytest.fixture
def warned(monkeypatch):
  """Messages of every absl warning logged while the test runs."""
  messages = []
  monkeypatch.setattr(image_folder.logging, "warning",
                      lambda msg, *args: messages.append(msg % args))
  return messages


def _images(ds):
  return [x for x in ds.as_numpy_iterator()]


@pytest.mark.parametrize("channels", [1, 3])
def test_reads_all_formats_nested(tmp_path, channels, warned):
  n = _good_folder(str(tmp_path))
  ds, count = image_folder.load_image_folder(str(tmp_path), size=32, channels=channels)
  assert count == n
  assert ds.element_spec == tf.TensorSpec((32, 32, channels), tf.uint8)
  images = _images(ds)
  assert len(images) == n
  for x in images:
    assert x.shape == (32, 32, channels) and x.dtype == np.uint8
  assert warned == []  # nothing skipped, nothing to say


def test_order_is_sorted_and_deterministic(tmp_path):
  root = str(tmp_path)
  # Constant-colour images whose value says which file they came from.
  for value, rel in [(10, "z.png"), (20, "a/b.png"), (30, "a/a.jpg"), (40, "m.webp")]:
    _save(os.path.join(root, rel), np.full((12, 12, 3), value, np.uint8), quality=100)
  first, n = image_folder.load_image_folder(root, size=12, channels=3)
  second, _ = image_folder.load_image_folder(root, size=12, channels=3)
  a, b = _images(first), _images(second)
  assert n == 4
  np.testing.assert_array_equal(np.stack(a), np.stack(b))
  # Sorted paths: a/a.jpg, a/b.png, m.webp, z.png.
  np.testing.assert_allclose([x.mean() for x in a], [30, 20, 40, 10], atol=1)


def test_skips_bad_files_with_one_warning(tmp_path, warned):
  root = str(tmp_path)
  n = _good_folder(root)
  _add_bad_files(root)
  ds, count = image_folder.load_image_folder(root, size=16, channels=3)
  assert count == n
  assert len(warned) == 1
  message = warned[0]
  assert "3 undecodable" in message and "1 not images" in message
  for name in ("truncated.png", "garbage.jpg", "empty.png", "notes.txt"):
    assert name in message
  for _ in range(2):  # every epoch completes
    assert len(_images(ds)) == n
  assert len(warned) == 1


def test_empty_folder(tmp_path):
  with pytest.raises(DataError, match="no readable images"):
    image_folder.load_image_folder(str(tmp_path), size=8, channels=3)


def test_only_bad_files(tmp_path):
  _add_bad_files(str(tmp_path))
  with pytest.raises(DataError, match=r"4 files: 3 undecodable, 1 not images") as e:
    image_folder.load_image_folder(str(tmp_path), size=8, channels=3)
  assert str(tmp_path) in str(e.value) and ".webp" in str(e.value)


def test_missing_folder_and_bad_arguments(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(DataError, match="does not exist") as e:
    image_folder.load_image_folder(missing, size=8, channels=3)
  assert missing in str(e.value)
  a_file = _save(str(tmp_path / "x.png"), _noise((8, 8, 3), 0))
  with pytest.raises(DataError, match="not a directory"):
    image_folder.load_image_folder(a_file, size=8, channels=3)
  for kwargs in (dict(size=0, channels=3), dict(size=8, channels=2),
                 dict(size=8, channels=3, crop=-1)):
    with pytest.raises(DataError):
      image_folder.load_image_folder(str(tmp_path), **kwargs)


def test_decoded_once_cache(tmp_path):
  root = str(tmp_path)
  _good_folder(root)
  ds, n = image_folder.load_image_folder(root, size=16, channels=3)
  before = np.stack(_images(ds))
  # Overwrite one file and delete the rest: a re-read would change or drop images.
  for dirpath, _, files in os.walk(root):
    for name in files:
      os.remove(os.path.join(dirpath, name))
  _save(os.path.join(root, "a.jpg"), np.zeros((50, 70, 3), np.uint8))
  after = np.stack(_images(ds))
  np.testing.assert_array_equal(before, after)
  # Also through a training-style pipeline built on top.
  batches = list(ds.shuffle(n, seed=0).batch(n).prefetch(1).as_numpy_iterator())
  np.testing.assert_array_equal(np.sort(batches[0], axis=0), np.sort(before, axis=0))


def test_crop_and_resize_unchanged_at_size():
  x = _noise((24, 24, 3), 0)
  out = image_folder.crop_and_resize(tf.constant(x), 24)
  assert out.dtype == tf.uint8
  np.testing.assert_array_equal(out.numpy(), x)
  # Centre square of a non-square image at the size: the exact middle pixels.
  y = _noise((24, 40, 3), 1)
  np.testing.assert_array_equal(image_folder.crop_and_resize(tf.constant(y), 24).numpy(),
                                y[:, 8:32])


@pytest.mark.parametrize("shape", [(100, 50, 3), (50, 100, 1), (7, 9, 3)])
def test_crop_and_resize_shape(shape):
  out = image_folder.crop_and_resize(tf.constant(_noise(shape, 0)), 16)
  assert out.shape == (16, 16, shape[2]) and out.dtype == tf.uint8


def test_centre_crop_picks_the_centre():
  x = np.zeros((60, 80, 3), np.uint8)
  x[15:45, 25:55] = 255  # a white 30x30 centre, black border
  out = image_folder.crop_and_resize(tf.constant(x), 8, crop=30).numpy()
  np.testing.assert_array_equal(out, np.full((8, 8, 3), 255, np.uint8))
  # crop larger than the image: crops min(crop, H, W) and does not fail.
  big = image_folder.crop_and_resize(tf.constant(x), 8, crop=500)
  assert big.shape == (8, 8, 3)


def test_constant_colour_survives_resize():
  colour = np.array([200, 17, 90], np.uint8)
  for shape, size in [((40, 56, 3), 16), ((10, 10, 3), 33)]:  # shrink and grow
    x = np.broadcast_to(colour, shape).copy()
    out = image_folder.crop_and_resize(tf.constant(x), size).numpy().astype(int)
    assert np.abs(out - colour).max() <= 1


def test_crop_and_resize_in_graph():
  ds = tf.data.Dataset.from_generator(
      lambda: (np.full((h, 30, 3), 9, np.uint8) for h in (20, 30, 45)),
      output_signature=tf.TensorSpec((None, None, 3), tf.uint8))
  ds = ds.map(lambda x: image_folder.crop_and_resize(x, 10, crop=18))
  assert ds.element_spec.shape == (10, 10, 3)
  for x in ds.as_numpy_iterator():
    assert np.abs(x.astype(int) - 9).max() <= 1
