"""The domain classifier: it learns (synthetic patterns; real Fashion-MNIST in
the slow test), trains deterministically, caches by content and settings,
detects a corrupt cache, and gives clear errors for unlabelled data."""
import json
import os
import time
import types

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from gan_jax import config as config_lib
from gan_jax.data import idx
from gan_jax.evaluation import classifier


def synthetic(n: int, seed: int, num_classes: int = 10, noise: float = 1.0):
  """`n` uint8 28x28x1 images of `num_classes` fixed random 4x4-block
  patterns (the same for every seed) under heavy noise and random contrast
  (hard enough that one epoch of the budget below stays near 0.55),
  with their labels."""
  templates = np.random.default_rng(1234).random((num_classes, 7, 7)) > 0.5
  templates = templates.repeat(4, 1).repeat(4, 2).astype(np.float32)
  rng = np.random.default_rng(seed)
  y = rng.integers(0, num_classes, n)
  contrast = rng.uniform(0.4, 1.0, (n, 1, 1))
  x = templates[y] * contrast + rng.normal(0, noise, (n, 28, 28))
  x = np.clip(x * 0.7 + 0.15, 0, 1)
  return (x[..., None] * 255).round().astype(np.uint8), y


@pytest.fixture(scope="module")
def small_data():
  return synthetic(400, seed=0), synthetic(200, seed=1)


SMALL = dict(num_classes=10, epochs=3, batch_size=32, learning_rate=3e-3)


def test_learns_synthetic_patterns_and_trains_deterministically(small_data):
  (tx, ty), (vx, vy) = small_data
  v1, acc1 = classifier.train_classifier(tx, ty, vx, vy, seed=0, **SMALL)
  v2, acc2 = classifier.train_classifier(tx, ty, vx, vy, seed=0, **SMALL)
  assert acc1 >= 0.9
  assert acc1 == acc2
  leaves1, leaves2 = jax.tree.leaves(v1), jax.tree.leaves(v2)
  assert len(leaves1) == len(leaves2) == 10
  for a, b in zip(leaves1, leaves2):
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes()   # bitwise
  assert classifier.weights_sha256(v1) == classifier.weights_sha256(v2)
  v3, _ = classifier.train_classifier(tx, ty, vx, vy, seed=1, **SMALL)
  assert classifier.weights_sha256(v3) != classifier.weights_sha256(v1)


def test_random_labels_are_not_learned(small_data):
  """The accuracy bar above can fail: with labels unrelated to the images
  the test accuracy stays near chance."""
  (tx, ty), (vx, vy) = small_data
  shuffled = np.random.default_rng(0).permutation(ty)
  _, acc = classifier.train_classifier(tx, shuffled, vx, vy, seed=0, **SMALL)
  assert acc < 0.4


def test_output_shapes_chunking_and_input_checks(monkeypatch):
  module = classifier.DomainClassifier(num_classes=7, feature_dim=16)
  variables = module.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
  x = np.random.default_rng(0).random((5, 28, 28, 1)).astype(np.float32)
  features, logits = module.apply(variables, x)
  assert features.shape == (5, 16) and logits.shape == (5, 7)
  assert float(features.min()) >= 0.0   # the penultimate layer, after its ReLU
  trained = classifier.TrainedClassifier(
      module, classifier._on_device(variables), "toy", (28, 28, 1), 7, 16, 0.5,
      classifier.weights_sha256(variables), "")
  assert trained.name == "domain:toy"
  f1, l1 = trained.apply(x)
  np.testing.assert_allclose(f1, features, rtol=1e-5, atol=1e-6)
  monkeypatch.setattr(classifier, "APPLY_CHUNK", 2)   # 5 images in chunks of 2, 2, 1
  f2, l2 = trained.apply(x)
  assert f2.shape == (5, 16) and l2.shape == (5, 7)
  np.testing.assert_allclose(f2, f1, rtol=1e-5, atol=1e-6)
  u8 = (x * 255).round().astype(np.uint8)
  np.testing.assert_allclose(trained.apply(u8)[0], trained.apply(u8 / np.float32(255))[0],
                             rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"takes images of shape \(28, 28, 1\)"):
    trained.apply(np.zeros((2, 32, 32, 3), np.float32))
  with pytest.raises(ValueError, match="labels must lie in"):
    classifier.train_classifier(u8, np.full(5, 7), u8, np.zeros(5), num_classes=7, epochs=1)


# --- load_or_train: cache -------------------------------------------------------

def _data_config(**overrides):
  cfg = config_lib.base_config().data
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


FAST = dict(epochs=1, batch_size=32)


@pytest.mark.usefixtures("no_local_idx_files")
def test_load_or_train_caches_loads_and_retrains_a_corrupt_cache(tmp_path, monkeypatch):
  calls = []
  real_train = classifier.train_classifier

  def counting_train(*args, **kwargs):
    calls.append(kwargs)
    return real_train(*args, **kwargs)

  def no_training(*args, **kwargs):
    raise AssertionError("trained again instead of loading the cache")

  monkeypatch.setattr(classifier, "train_classifier", counting_train)
  cfg = _data_config()
  images = synthetic(6, seed=3)[0].astype(np.float32) / 255
  with tfds.testing.mock_data(num_examples=64):
    first = classifier.load_or_train(cfg, str(tmp_path), **FAST)
    assert len(calls) == 1
    folder = first.cache_dir
    assert os.path.dirname(folder) == str(tmp_path / "classifiers")
    assert os.path.basename(folder).startswith("fashion_mnist-")
    assert sorted(os.listdir(tmp_path / "classifiers")) == [os.path.basename(folder)]  # no temp
    meta = json.loads((tmp_path / "classifiers" / folder / "meta.json").read_text())
    assert meta["weights_sha256"] == first.weights_sha256 and len(first.weights_sha256) == 64
    assert meta["hyperparameters"]["epochs"] == 1 and meta["num_train"] == 64
    assert meta["test_accuracy"] == first.test_accuracy
    assert (first.name, first.image_shape, first.num_classes, first.feature_dim) == (
        "domain:fashion_mnist", (28, 28, 1), 10, 128)

    monkeypatch.setattr(classifier, "train_classifier", no_training)
    second = classifier.load_or_train(cfg, str(tmp_path), **FAST)
    assert second.cache_dir == folder and second.weights_sha256 == first.weights_sha256
    assert second.test_accuracy == first.test_accuracy
    for a, b in zip(first.apply(images), second.apply(images)):
      assert np.array_equal(np.asarray(a), np.asarray(b))

    # Other settings are another classifier: they train, beside the first.
    monkeypatch.setattr(classifier, "train_classifier", counting_train)
    other = classifier.load_or_train(cfg, str(tmp_path), seed=1, **FAST)
    assert len(calls) == 2 and other.cache_dir != folder
    assert other.weights_sha256 != first.weights_sha256

    # Garbage in the weights file: detected, retrained (to the same weights).
    params = os.path.join(folder, "params")
    files = [os.path.join(d, f) for d, _, fs in os.walk(params) for f in fs]
    biggest = max(files, key=os.path.getsize)
    with open(biggest, "r+b") as f:
      size = os.path.getsize(biggest)
      f.seek(size // 2)
      f.write(b"\x5a" * min(64, size - size // 2))
    third = classifier.load_or_train(cfg, str(tmp_path), **FAST)
    assert len(calls) == 3
    assert third.cache_dir == folder and third.weights_sha256 == first.weights_sha256

    # A half-written meta.json: the same.
    with open(os.path.join(folder, "meta.json"), "w") as f:
      f.write('{"dataset": "fashion_mn')
    classifier.load_or_train(cfg, str(tmp_path), **FAST)
    assert len(calls) == 4
    monkeypatch.setattr(classifier, "train_classifier", no_training)
    classifier.load_or_train(cfg, str(tmp_path), **FAST)   # repaired: loads again
  assert sorted(os.listdir(tmp_path / "classifiers")) == sorted(
      {os.path.basename(folder), os.path.basename(other.cache_dir)})


@pytest.mark.usefixtures("no_local_idx_files")
def test_new_train_data_retrains_and_cache_root_from_environment(tmp_path, monkeypatch):
  monkeypatch.setenv("GAN_JAX_CACHE", str(tmp_path / "env"))
  cfg = _data_config()
  with tfds.testing.mock_data(num_examples=32):
    a = classifier.load_or_train(cfg, None, **FAST)
  with tfds.testing.mock_data(num_examples=48):   # other train content: another key
    b = classifier.load_or_train(cfg, None, **FAST)
  assert os.path.dirname(a.cache_dir) == os.path.dirname(b.cache_dir) == str(
      tmp_path / "env" / "classifiers")
  assert a.cache_dir != b.cache_dir


def _fake_builder(features, splits):
  info = types.SimpleNamespace(features=features, splits=splits)
  return types.SimpleNamespace(info=info, name="fake")


def test_unlabelled_or_untested_dataset_is_a_clear_error(monkeypatch):
  from gan_jax.data import sources
  image = tfds.features.Image(shape=(28, 28, 1))
  label = tfds.features.ClassLabel(num_classes=10)
  cfg = _data_config(name="celeb_a")
  monkeypatch.setattr(sources, "prepared_builder",
                      lambda c: _fake_builder({"image": image}, {"train": 1, "test": 1}))
  with pytest.raises(ValueError, match=r"dataset 'celeb_a' has no 'label' class feature"):
    classifier.load_or_train(cfg)
  monkeypatch.setattr(sources, "prepared_builder", lambda c: _fake_builder(
      {"image": image, "label": label}, {"train": 1, "validation": 1}))
  with pytest.raises(ValueError, match=r"dataset 'celeb_a' has no 'test' split"):
    classifier.load_or_train(cfg)
  with pytest.raises(ValueError, match="needs a labelled TFDS dataset"):
    classifier.load_or_train(_data_config(source="folder", folder="/photos"))


# --- real Fashion-MNIST -----------------------------------------------------------

@pytest.mark.slow
def test_real_fashion_mnist_reaches_90_percent_with_the_defaults(tmp_path):
  from gan_jax.data import sources
  cfg = _data_config()
  prepared = tfds.builder("fashion_mnist", data_dir=sources.resolve_data_dir("")).is_prepared()
  if not prepared and not idx.default_idx_dir("fashion_mnist"):
    pytest.skip("Fashion-MNIST is not prepared (gan-jax prepare --config "
                "experiments/dcgan_fashion_mnist.py) and no local IDX folder "
                "(apt-get install dataset-fashion-mnist) to prepare it from")
  start = time.time()
  trained = classifier.load_or_train(cfg, str(tmp_path))
  seconds = time.time() - start
  meta = json.loads(open(os.path.join(trained.cache_dir, "meta.json")).read())
  print(f"\nreal Fashion-MNIST: test accuracy {trained.test_accuracy:.4f}, training "
        f"{meta['train_seconds']:.1f} s, load_or_train {seconds:.1f} s")
  assert meta["num_train"] == 60_000 and meta["num_test"] == 10_000
  assert trained.test_accuracy >= 0.90
