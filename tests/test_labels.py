"""Labels (class-conditional models) in the input pipeline: every batch's
labels stay those of its images through the shuffle, the on-device gather,
a sweep's stacked chunks, several batches per step and 8 devices;
data.num_examples; unlabelled sources; an image folder's classes."""
from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
import textwrap
import types

import numpy as np
import pytest
from PIL import Image

from gan_jax import data, train
from gan_jax.config import base_config
from gan_jax.data import image_folder, pipeline, sources
from gan_jax.errors import ConfigError, DataError
from gan_jax.mesh import make_mesh
from conftest import ROOT, make_idx_data, small_config, write_idx_folder, write_image_folder

CLASSES, SHAPE, RANGE = 10, (4, 4, 1), (-1.0, 1.0)


# --- an image's label (and id) can be read back from its pixels -----------------------

def _pixel(label, ident):
  """Every pixel of the image of class `label` and small id (< 20)."""
  return label * 20 + ident


def _uint8(batch_images):
  """Normalised images (in RANGE) -> their uint8 pixel values, exactly."""
  lo, hi = RANGE
  x = np.round((np.asarray(batch_images, np.float64) - lo) * 255.0 / (hi - lo))
  assert np.all(x == x.reshape(len(x), -1)[:, :1, None, None]), "an image is not constant"
  return x.reshape(len(x), -1)[:, 0].astype(np.int64)


def _read_labels(batch_images):
  return _uint8(batch_images) // 20


def _read_ids(batch_images):
  return _uint8(batch_images) % 20


def _assert_aligned(batch, where=""):
  images, labels = (np.asarray(b) for b in batch)
  assert labels.dtype == np.int32, where
  assert images.shape[:-len(SHAPE)] == labels.shape, where
  np.testing.assert_array_equal(labels.reshape(-1), _read_labels(images.reshape(-1, *SHAPE)),
                                err_msg=where)


def _take(it, n):
  return list(itertools.islice(it, n))


# --- an in-memory labelled source -----------------------------------------------------

N_MEM = 40   # 5 steps of 8; id = i % 20, and (label, id) is unique per image


def _memory_labels(n=N_MEM):
  i = np.arange(n)
  return ((3 * i + i // 20) % CLASSES).astype(np.int64)


def _memory_images(n=N_MEM):
  values = _pixel(_memory_labels(n), np.arange(n) % 20).astype(np.uint8)
  return np.broadcast_to(values[:, None, None, None], (n, *SHAPE)).copy()


@pytest.fixture
def labelled_source(monkeypatch):
  """'labelled_mem': N_MEM images (their labels with labels=True)."""
  def source(data_config, image_shape, labels=False):
    assert tuple(image_shape) == SHAPE
    images = _memory_images()
    return (images, _memory_labels()) if labels else images
  monkeypatch.setitem(data.SOURCES, "labelled_mem", source)


def _cfg(**values):
  cfg = base_config().data
  cfg.update(dict(dict(source="labelled_mem", name="", pixel_range=RANGE), **values))
  return cfg


def _data(cfg, seed=0, batch=8, batches_per_step=1, num_classes=CLASSES):
  return pipeline.TrainData(cfg, batch, seed, make_mesh(), SHAPE,
                            batches_per_step=batches_per_step, num_classes=num_classes)


def test_in_memory_labels_follow_their_images_through_every_epoch(labelled_source):
  for seed in (0, 1, 7):
    source = _data(_cfg(), seed=seed)
    assert source.in_memory and source.labels and source.steps_per_epoch == 5
    steps = 3 * source.steps_per_epoch   # three epochs, each a new order
    host = _take(source.host_batches(), steps)
    for i, batch in enumerate(host):
      assert isinstance(batch, tuple) and len(batch) == 2
      assert batch[0].dtype == np.float32 and batch[0].shape == (8, *SHAPE)
      _assert_aligned(batch, f"seed {seed} step {i}")
    for e in range(3):   # each epoch: every example once, with its own label
      epoch = host[e * 5:(e + 1) * 5]
      seen = {(l, k) for b in epoch for l, k in zip(b[1], _read_ids(b[0]))}
      assert seen == set(zip(_memory_labels(), np.arange(N_MEM) % 20))
    assert not np.array_equal(_uint8(host[0][0]), _uint8(host[5][0]))   # epoch 1 != epoch 0
    # The device batches are the host batches, as (images, labels) pairs.
    for batch, on_device in zip(host[:6], _take(source.batches(), 6)):
      assert isinstance(on_device, tuple) and on_device[1].dtype == np.int32
      np.testing.assert_array_equal(np.asarray(on_device[0]), batch[0])
      np.testing.assert_array_equal(np.asarray(on_device[1]), batch[1])


def test_on_device_gather_keeps_labels_with_their_images(labelled_source):
  source = _data(_cfg(on_device=True), seed=3, batch=4, batches_per_step=2)
  images = source.device_images()
  assert isinstance(images, tuple) and images[1].dtype == np.int32
  np.testing.assert_array_equal(np.asarray(images[0]), _memory_images())
  np.testing.assert_array_equal(np.asarray(images[1]), _memory_labels())
  steps = 2 * source.steps_per_epoch + 1
  indices = _take(source.host_batches(indices=True), steps)
  host = _take(source.host_batches(), steps)
  assert indices[0].dtype == np.int32 and indices[0].shape == (8,)
  for i, (idx, batch) in enumerate(zip(indices, host)):
    gathered = data.gather_batch(images, idx, RANGE)
    _assert_aligned(gathered, f"step {i}")
    np.testing.assert_array_equal(np.asarray(gathered[0]), batch[0])
    np.testing.assert_array_equal(np.asarray(gathered[1]), batch[1])
  # A fused call's stacked indices gather the same pairs.
  chunk = np.asarray(next(source.chunks(0, iter([3]), indices=True)))
  _assert_aligned(data.gather_batch(images, chunk.reshape(-1), RANGE))


def test_several_batches_per_step_and_chunks_keep_pairs(labelled_source):
  source = _data(_cfg(), seed=2, batch=4, batches_per_step=2)
  assert source.step_batch == 8 and source.steps_per_epoch == 5
  for i, batch in enumerate(_take(source.host_batches(start_step=3), 7)):
    assert batch[0].shape == (8, *SHAPE) and batch[1].shape == (8,)
    _assert_aligned(batch, f"step {i}")
  flat = _take(source.host_batches(start_step=1), 5)
  chunks = _take(source.chunks(1, iter([3, 2])), 2)
  assert [(c[0].shape, c[1].shape) for c in chunks] == [((3, 8, *SHAPE), (3, 8)),
                                                       ((2, 8, *SHAPE), (2, 8))]
  for part in (0, 1):
    np.testing.assert_array_equal(np.concatenate([np.asarray(c[part]) for c in chunks]),
                                  np.stack([b[part] for b in flat]))


def test_a_sweep_stacks_each_members_pairs(labelled_source):
  """Members of different seeds each see their own order, the labels with
  their images; a seed listed twice (a learning-rate sweep) is read once."""
  a, b = _data(_cfg(), seed=0), _data(_cfg(), seed=1)
  for indices in (False, True):
    chunks = _take(pipeline.member_chunks([a, b, a], 2, iter([2, 3]), indices=indices), 2)
    if indices:
      assert [c.shape for c in chunks] == [(3, 2, 8), (3, 3, 8)]
      images = (data.gather_batch((_memory_images(), _memory_labels().astype(np.int32)),
                                  np.asarray(c), RANGE) for c in chunks)
      chunks = [tuple(np.asarray(x) for x in pair) for pair in images]
    else:
      assert [(c[0].shape, c[1].shape) for c in chunks] == [((3, 2, 8, *SHAPE), (3, 2, 8)),
                                                           ((3, 3, 8, *SHAPE), (3, 3, 8))]
    for c in chunks:
      _assert_aligned(c)
    for member, single in ((0, a), (1, b), (2, a)):
      own = _take(single.host_batches(start_step=2), 5)
      for part in (0, 1):
        np.testing.assert_array_equal(
            np.concatenate([np.asarray(c[part][member]) for c in chunks]),
            np.stack([x[part] for x in own]))
    assert not np.array_equal(np.asarray(chunks[0][1][0]), np.asarray(chunks[0][1][1]))


def test_num_examples_keeps_the_first_examples(labelled_source):
  for num_classes in (CLASSES, 0):
    source = _data(_cfg(num_examples=12), seed=5, batch=4, num_classes=num_classes)
    assert source.num_examples == 12 and source.steps_per_epoch == 3
    for e in range(3):
      epoch = _take(source.host_batches(start_step=3 * e), 3)
      images = np.concatenate([b[0] if num_classes else b for b in epoch])
      assert sorted(_read_ids(images)) == list(range(12))   # the first 12, each once
      if num_classes:
        _assert_aligned((images, np.concatenate([b[1] for b in epoch])))
    idx = np.concatenate(_take(source.host_batches(indices=True), 9))
    assert set(idx) == set(range(12))
  assert _data(_cfg(num_examples=0)).num_examples == N_MEM   # 0 = all
  assert _data(_cfg(num_examples=10 * N_MEM)).num_examples == N_MEM
  with pytest.raises(DataError, match="data.num_examples must be >= 0"):
    _data(_cfg(num_examples=-1))
  with pytest.raises(DataError, match="has 6 examples, fewer than one step's"):
    _data(_cfg(num_examples=6))
  on_device = _data(_cfg(num_examples=12, on_device=True), batch=4)
  images, labels = on_device.device_images()
  assert images.shape == (12, *SHAPE) and labels.shape == (12,)
  np.testing.assert_array_equal(np.asarray(labels), _memory_labels()[:12])


def test_num_examples_of_a_cached_dataset_reads_the_source_once(monkeypatch):
  """A tf.data source that caches itself (as the TFDS source does), cut to
  its first examples: later epochs come from memory, not from the source."""
  import tensorflow as tf
  reads = []
  def examples():
    for i in range(N_MEM):
      reads.append(i)
      yield _memory_images()[i], np.int32(_memory_labels()[i])
  signature = (tf.TensorSpec(SHAPE, tf.uint8), tf.TensorSpec((), tf.int32))
  monkeypatch.setitem(data.SOURCES, "counted_tf", lambda cfg, shape, labels=False: (
      tf.data.Dataset.from_generator(examples, output_signature=signature).cache(), None))
  source = _data(_cfg(source="counted_tf", num_examples=16), batch=4)
  assert source.num_examples == 16 and source.steps_per_epoch == 4
  epochs = _take(source.host_batches(), 3 * 4)
  for e in range(3):
    epoch = epochs[4 * e:4 * (e + 1)]
    assert sorted(_read_ids(np.concatenate([b[0] for b in epoch]))) == list(range(16))
    for b in epoch:
      _assert_aligned(b)
  assert reads == list(range(16))   # the count's pass filled the cache; no epoch read again


def test_bad_labels_of_a_source_are_clear_errors(monkeypatch):
  images = _memory_images()
  def reg(fn):
    monkeypatch.setitem(data.SOURCES, "labelled_mem", fn)
  reg(lambda cfg, shape, labels=False: (images, _memory_labels() + 1))   # label 10
  with pytest.raises(DataError, match=r"labels in \[1, 10\], outside the model's 10 classes"):
    _data(_cfg())
  reg(lambda cfg, shape, labels=False: (images, _memory_labels()[:-1]))
  with pytest.raises(DataError, match=r"labels of dtype .* and shape \(39,\) for 40 images"):
    _data(_cfg())
  reg(lambda cfg, shape, labels=False: (images, _memory_labels().astype(np.float32)))
  with pytest.raises(DataError, match="labels are integers"):
    data.load_images(_cfg(), SHAPE, labels=True)
  reg(lambda cfg, shape, labels=False: images)   # labels asked for, images only given
  with pytest.raises(DataError, match=r"returned a ndarray; a source returns an \(images, "
                                      r"labels\) pair"):
    _data(_cfg())


def test_out_of_range_labels_of_a_tf_data_source_are_a_data_error(monkeypatch):
  """A tf.data source's labels are seen batch by batch (host batches) or all
  at once (on device): either way a label >= model.num_classes is an error
  naming the range, not an embedding row read out of bounds."""
  import tensorflow as tf
  shifted = _memory_labels() + 1   # one image has label 10
  monkeypatch.setitem(data.SOURCES, "labelled_tf", lambda cfg, shape, labels=False: (
      tf.data.Dataset.from_tensor_slices((_memory_images(), shifted)), N_MEM))
  with pytest.raises(DataError, match=r"labels in \[\d+, 10\], outside the model's 10 classes"):
    _take(_data(_cfg(source="labelled_tf"), batch=N_MEM).host_batches(), 1)
  with pytest.raises(DataError, match=r"labels in \[1, 10\], outside the model's 10 classes"):
    _data(_cfg(source="labelled_tf", on_device=True)).device_images()
  images, got = _take(_data(_cfg(source="labelled_tf"), num_classes=11).host_batches(), 1)[0]
  np.testing.assert_array_equal(got, _read_labels(images) + 1)   # in range for 11 classes


def test_load_images_with_labels(labelled_source):
  images, labels = data.load_images(_cfg(), SHAPE, limit=7, labels=True)
  np.testing.assert_array_equal(images, _memory_images()[:7])
  np.testing.assert_array_equal(labels, _memory_labels()[:7])
  assert labels.dtype == np.int32
  np.testing.assert_array_equal(data.load_images(_cfg(), SHAPE), _memory_images())


def test_a_source_without_labels_is_one_data_error_naming_it(monkeypatch, tmp_path):
  monkeypatch.setitem(data.SOURCES, "unlabelled_mem",
                      lambda cfg, shape: np.zeros((16, 28, 28, 1), np.uint8))
  cfg = _cfg(source="unlabelled_mem")
  with pytest.raises(DataError, match=r"data.source 'unlabelled_mem' \(split 'train'\) has "
                                      r"no labels.*model.num_classes > 0"):
    pipeline.TrainData(cfg, 4, 0, make_mesh(), (28, 28, 1), num_classes=CLASSES)
  with pytest.raises(DataError, match="'unlabelled_mem'.*has no labels"):
    data.load_images(cfg, (28, 28, 1), labels=True)
  pipeline.TrainData(cfg, 4, 0, make_mesh(), (28, 28, 1))   # unconditional: fine
  # Training a conditional model on it stops before the work directory exists.
  run = small_config(**{"data.source": "unlabelled_mem", "model.num_classes": CLASSES,
                        "batch_size": 4, "num_steps": 2})
  with pytest.raises(DataError, match="'unlabelled_mem'.*has no labels"):
    train.train_and_evaluate(run, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


# --- an image folder with class subfolders (a tf.data source) -------------------------

# Class subfolders, created in this (unsorted) order; label i is the i-th in sorted order.
FOLDER_CLASSES = ("zebra", "ant", "mole", "cat", "bee")
PER_CLASS = 6


def _write_class_folder(root):
  """PER_CLASS constant grey 4x4 PNGs per class; the class's last image one
  folder deeper (FOLDER/CLASS/deeper/x.png is still that class). Returns
  the (label, id) pairs in sorted file order."""
  ordered = sorted(FOLDER_CLASSES)
  for name in FOLDER_CLASSES:
    label = ordered.index(name)
    for k in range(PER_CLASS):
      sub = root / name / ("deeper" if k == PER_CLASS - 1 else "")
      sub.mkdir(parents=True, exist_ok=True)
      value = _pixel(label, 3 * label + k)   # ids differ across the classes
      Image.fromarray(np.full((4, 4), value, np.uint8)).save(sub / f"img{k}.png")
  paths = sorted(str(p) for p in root.rglob("*.png"))
  out = []
  for p in paths:
    v = int(np.asarray(Image.open(p))[0, 0])
    out.append((v // 20, v % 20))
  return out


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("classes") / "photos"
  return root, _write_class_folder(root)


def _folder_cfg(folder, **values):
  cfg = base_config().data
  cfg.update(dict(dict(source="folder", folder=str(folder), image_size=4,
                       pixel_range=RANGE), **values))
  return cfg


def test_folder_classes_are_the_sorted_subfolders(class_folder):
  root, _ = class_folder
  assert image_folder.class_folders(str(root)) == tuple(sorted(FOLDER_CLASSES))
  assert sources.class_names(_folder_cfg(root)) == ("ant", "bee", "cat", "mole", "zebra")
  paths = [str(root / "cat" / "a.png"), str(root / "zebra" / "deeper" / "b.png")]
  np.testing.assert_array_equal(image_folder._labels_of(str(root), paths), [2, 4])
  assert sources.class_names(_cfg()) is None   # other sources name no classes


def test_folder_labels_follow_their_images(class_folder):
  root, expected = class_folder
  images, labels = data.load_images(_folder_cfg(root), SHAPE, labels=True)
  assert labels.dtype == np.int32 and len(labels) == len(FOLDER_CLASSES) * PER_CLASS
  pixels = images.reshape(len(images), -1)[:, 0].astype(int)
  assert list(zip(labels, pixels % 20)) == expected   # sorted file order
  np.testing.assert_array_equal(labels, pixels // 20)
  for seed, buffer in ((0, 1000), (4, 5)):   # a full and a partial shuffle buffer
    source = _data(_folder_cfg(root, shuffle_buffer=buffer), seed=seed, batch=4,
                   batches_per_step=2)
    assert not source.in_memory and source.steps_per_epoch == 3
    host = _take(source.host_batches(), 3 * source.steps_per_epoch)
    for i, batch in enumerate(host):
      assert batch[0].dtype == np.float32 and batch[1].dtype == np.int32
      _assert_aligned(batch, f"seed {seed} step {i}")
    for e in range(3):
      seen = [(l, k) for b in host[3 * e:3 * e + 3] for l, k in zip(b[1], _read_ids(b[0]))]
      assert len(set(seen)) == 24 and set(seen) <= set(expected)
    # On device: the split and its labels, gathered by the epoch indices.
    pair = source.device_images()
    assert pair[0].dtype == np.uint8 and pair[1].dtype == np.int32
    np.testing.assert_array_equal(np.asarray(pair[1]), labels)
    indices = _take(source.host_batches(indices=True), len(host))
    for idx, batch in zip(indices, host):
      gathered = data.gather_batch(pair, idx, RANGE)
      np.testing.assert_array_equal(np.asarray(gathered[0]), batch[0])
      np.testing.assert_array_equal(np.asarray(gathered[1]), batch[1])
    chunks = _take(pipeline.member_chunks([source, source], 0, iter([2])), 1)
    assert chunks[0][0].shape == (2, 2, 8, *SHAPE) and chunks[0][1].shape == (2, 2, 8)
    _assert_aligned(chunks[0])


def test_folder_num_examples_takes_the_first_files(class_folder):
  root, expected = class_folder
  source = _data(_folder_cfg(root, num_examples=8), seed=1, batch=4)
  assert source.num_examples == 8 and source.steps_per_epoch == 2
  for e in range(2):
    batches = _take(source.host_batches(start_step=2 * e), 2)
    for b in batches:
      _assert_aligned(b)
    seen = sorted((int(l), int(k)) for b in batches for l, k in zip(b[1], _read_ids(b[0])))
    assert seen == sorted(expected[:8])
  images, labels = source.device_images()
  assert images.shape == (8, *SHAPE) and list(np.asarray(labels)) == [l for l, _ in expected[:8]]


def test_a_folder_without_class_subfolders_is_a_data_error(tmp_path):
  flat = tmp_path / "flat"
  flat.mkdir()
  for k in range(4):
    Image.fromarray(np.full((4, 4), k, np.uint8)).save(flat / f"{k}.png")
  with pytest.raises(DataError, match=rf"image folder {re.escape(str(flat))} has no class "
                                      rf"subfolders"):
    _data(_folder_cfg(flat), batch=2)
  _data(_folder_cfg(flat), batch=2, num_classes=0)   # unconditional: fine
  mixed = tmp_path / "mixed"
  _write_class_folder(mixed)
  Image.fromarray(np.zeros((4, 4), np.uint8)).save(mixed / "stray.png")
  with pytest.raises(DataError, match=rf"image folder {re.escape(str(mixed))}: 1 image\(s\) are not in a "
                                      rf"class subfolder \(e.g. stray.png\)"):
    _data(_folder_cfg(mixed), batch=2)
  with pytest.raises(DataError, match="not in a class subfolder"):
    data.load_images(_folder_cfg(mixed), SHAPE, labels=True)


def test_conditional_training_on_a_folder_records_its_classes(tmp_path):
  folder = write_image_folder(tmp_path / "photos", 10)   # classes part0, part1, part2
  overrides = {"data.source": "folder", "data.folder": str(folder), "data.image_size": 28,
               "model.num_classes": 3, "batch_size": 4, "num_steps": 2,
               "sample_every": 2, "checkpoint_every": 2, "num_grid_samples": 9}
  state = train.train_and_evaluate(small_config(**overrides), str(tmp_path / "w"))
  assert int(state.step) == 2
  saved = json.loads((tmp_path / "w" / "config.json").read_text())
  assert saved["data"]["class_names"] == ["part0", "part1", "part2"]
  assert (tmp_path / "w" / "samples" / "step_0000002.png").exists()
  # Another number of classes than the model has: one ConfigError, nothing written.
  for k in (2, 4):
    with pytest.raises(ConfigError, match=r"the data has 3 classes \(part0, part1, part2\); "
                                          rf"set model.num_classes=3 \(it is {k}\)"):
      train.train_and_evaluate(small_config(**{**overrides, "model.num_classes": k}),
                               str(tmp_path / f"w{k}"))
    assert not (tmp_path / f"w{k}").exists()


# --- the tfds source -----------------------------------------------------------------

@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("data")
  arrays = make_idx_data({"train": 24, "test": 8})
  return root, write_idx_folder(root / "idx", arrays), arrays["train"]


def test_tfds_labels_follow_their_images(prepared):
  root, folder, (images, labels) = prepared
  cfg = base_config().data
  cfg.update(dict(name="fashion_mnist", data_dir=str(root / "tfds"), idx_dir=str(folder),
                  pixel_range=RANGE))
  label_of = {bytes(x): int(y) for x, y in zip(images, labels)}
  loaded, got = data.load_images(cfg, (28, 28, 1), labels=True)
  assert got.dtype == np.int32 and len(got) == 24
  assert [label_of[bytes(x[..., 0])] for x in loaded] == list(got)
  source = pipeline.TrainData(cfg, 8, 3, make_mesh(), (28, 28, 1), num_classes=CLASSES)
  for batch in _take(source.host_batches(), 6):
    pixels = np.round((batch[0][..., 0] + 1) * 127.5).astype(np.uint8)
    assert [label_of[bytes(x)] for x in pixels] == list(batch[1])
  names = sources.class_names(cfg)
  assert len(names) == 10 and names[0] == "T-shirt/top"


def test_a_tfds_dataset_without_a_label_feature_is_a_data_error():
  cfg = types.SimpleNamespace(name="faces")
  builder = types.SimpleNamespace(info=types.SimpleNamespace(
      features={"image": None, "attributes": None}))
  with pytest.raises(DataError, match=r"dataset 'faces' has no class-label feature 'label' "
                                      r"\(features: \['attributes', 'image'\]\)"):
    sources._label_feature(builder, cfg)


# --- 8 (simulated) devices -----------------------------------------------------------

_EIGHT_DEVICES = textwrap.dedent("""
  import itertools
  import jax, ml_collections, numpy as np
  from gan_jax import data
  from gan_jax.data import pipeline
  from gan_jax.mesh import make_mesh

  assert len(jax.devices()) == 8
  n = 48
  labels = (np.arange(n) * 7 % 10).astype(np.int32)
  images = np.broadcast_to((labels * 20 + np.arange(n) % 20).astype(np.uint8)[:, None, None, None],
                           (n, 4, 4, 1)).copy()
  classes = labels
  data.register_source("labelled8")(lambda cfg, shape, labels=False:
                                    (images, classes) if labels else images)
  cfg = ml_collections.ConfigDict(dict(source="labelled8", split="train", pixel_range=(-1.0, 1.0),
                                       shuffle_buffer=1000, num_examples=0))
  read = lambda x: np.round((np.asarray(x).reshape(len(x), -1)[:, 0] + 1) * 127.5).astype(int) // 20

  def check(pair):
    x, y = (np.asarray(a) for a in pair)
    assert np.array_equal(read(x.reshape(-1, 4, 4, 1)), y.reshape(-1)), (read(x), y)

  take = lambda it, k: list(itertools.islice(it, k))
  mk = lambda devices, seed: pipeline.TrainData(cfg, 8, seed, make_mesh(devices), (4, 4, 1),
                                                batches_per_step=2, num_classes=10)
  one, eight = mk(jax.devices()[:1], 1), mk(jax.devices(), 1)
  steps = 2 * one.steps_per_epoch + 1
  for a, b in zip(take(eight.host_batches(), steps), take(one.host_batches(), steps)):
    check(a)
    for part in (0, 1):   # device-major: each device's rows of both batches
      assert np.array_equal(a[part], data.device_major(b[part], 2, 8))
  for x, y in take(eight.batches(), 4):
    assert len(x.addressable_shards) == len(y.addressable_shards) == 8
    for sx, sy in zip(sorted(x.addressable_shards, key=lambda s: s.device.id),
                      sorted(y.addressable_shards, key=lambda s: s.device.id)):
      assert sx.index[0] == sy.index[0] and sx.data.shape[0] == 2
      check((sx.data, sy.data))
  pair = eight.device_images()
  for idx in take(eight.chunks(0, iter([3, 2]), indices=True), 2):
    assert len(idx.addressable_shards) == 8
    check(data.gather_batch(pair, idx, (-1.0, 1.0)))
  other = mk(jax.devices(), 2)
  for x, y in take(pipeline.member_chunks([eight, other], 0, iter([2, 1])), 2):
    assert x.shape[:3] == y.shape == (2, x.shape[1], 16)
    check((x, y))
  print("EIGHT DEVICES OK")
""")


def test_labels_stay_with_their_images_on_eight_devices():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
  run = subprocess.run([sys.executable, "-c", _EIGHT_DEVICES], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
  assert run.returncode == 0 and "EIGHT DEVICES OK" in run.stdout, run.stderr[-3000:]
