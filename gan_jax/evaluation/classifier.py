"""A domain classifier: a small CNN trained on a dataset's labelled train
split, used as an offline feature extractor for GAN evaluation (the role
Inception plays for FID, but trained here per dataset, so nothing is
downloaded).

`load_or_train(config.data)` trains it once and caches it under
<cache root>/classifiers/<dataset>-<key16>/ (Orbax params + meta.json), where
the key hashes the train split's content, the architecture and the training
hyperparameters: new data or settings retrain, the same ones load. Training
is deterministic: the same data and seed give bitwise-identical weights.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

# Bump when DomainClassifier's layers or the training recipe change: old
# caches then no longer match.
ARCH_VERSION = 1
# Images per compiled forward call in `TrainedClassifier.apply` (bounds memory).
APPLY_CHUNK = 2048

DEFAULT_EPOCHS = 4
DEFAULT_BATCH_SIZE = 128
DEFAULT_LEARNING_RATE = 2e-3


class DomainClassifier(nn.Module):
  """images (N, H, W, C) float in [0, 1] -> (features (N, feature_dim), logits).

  Three stride-2 3x3 convs (32, 64, 128), then a dense feature layer. Why
  not the classic conv-conv-maxpool stacks: on XLA:CPU their full-resolution
  convs and max pooling's backward pass cost ~12x the time per epoch (140 s
  vs 12 s on Fashion-MNIST, 2 cores) for no better accuracy in a fixed
  time budget.
  """
  num_classes: int
  feature_dim: int = 128

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    del train  # no dropout or batch statistics: train and eval are the same net
    x = jnp.asarray(x, jnp.float32) * 2.0 - 1.0
    for features in (32, 64, 128):
      x = nn.relu(nn.Conv(features, (3, 3), strides=(2, 2), padding="SAME")(x))
    x = x.reshape(x.shape[0], -1)
    features = nn.relu(nn.Dense(self.feature_dim)(x))
    return features, nn.Dense(self.num_classes)(features)


@functools.partial(jax.jit, static_argnums=0)
def _forward(module: DomainClassifier, variables, images: jax.Array):
  if images.dtype == jnp.uint8:
    images = images.astype(jnp.float32) / 255.0
  return module.apply(variables, images)


def _apply_chunked(module: DomainClassifier, variables, images) -> tuple[jax.Array, jax.Array]:
  """`module` on any number of images, in compiled chunks of APPLY_CHUNK."""
  n = images.shape[0]
  if n <= APPLY_CHUNK:
    return _forward(module, variables, images)
  outs = [_forward(module, variables, images[i:i + APPLY_CHUNK])
          for i in range(0, n, APPLY_CHUNK)]
  return (jnp.concatenate([f for f, _ in outs]), jnp.concatenate([l for _, l in outs]))


@dataclasses.dataclass(frozen=True)
class TrainedClassifier:
  module: DomainClassifier
  variables: dict
  dataset: str
  image_shape: tuple
  num_classes: int
  feature_dim: int
  test_accuracy: float
  weights_sha256: str   # sha256 of flax.serialization.to_bytes(variables)
  cache_dir: str        # the folder it was loaded from or saved to

  def apply(self, images) -> tuple[jax.Array, jax.Array]:
    """images (N, H, W, C) float in [0, 1] (uint8 [0, 255] also taken), any
    N -> (features (N, feature_dim), logits (N, num_classes))."""
    if tuple(images.shape[1:]) != tuple(self.image_shape):
      raise ValueError(f"classifier {self.name} takes images of shape {tuple(self.image_shape)},"
                       f" got a batch of shape {tuple(images.shape)}")
    return _apply_chunked(self.module, self.variables, images)

  @property
  def name(self) -> str:
    return f"domain:{self.dataset}"


def _canonical(variables) -> dict:
  """Host numpy copy with dict keys sorted, so weights hash the same however
  they were produced (trained or restored)."""
  return jax.tree.map(np.asarray, jax.device_get(variables))


def weights_sha256(variables) -> str:
  return hashlib.sha256(flax.serialization.to_bytes(_canonical(variables))).hexdigest()


def _on_device(variables) -> dict:
  # Uncommitted arrays: jit places them with whatever (sharded) images come in.
  return jax.tree.map(jnp.asarray, _canonical(variables))


def _accuracy(module, variables, x: np.ndarray, y: np.ndarray, batch: int = 1000) -> float:
  correct = 0
  for i in range(0, len(x), batch):
    _, logits = _forward(module, variables, x[i:i + batch])
    correct += int(np.sum(np.asarray(jnp.argmax(logits, -1)) == y[i:i + batch]))
  return correct / len(x)


def _check_xy(x: np.ndarray, y: np.ndarray, num_classes: int, what: str) -> None:
  if x.ndim != 4 or x.dtype != np.uint8:
    raise ValueError(f"{what} images must be uint8 (N, H, W, C), got {x.dtype} {x.shape}")
  if len(x) != len(y) or len(x) == 0:
    raise ValueError(f"{what}: {len(x)} images and {len(y)} labels (need as many, > 0)")
  if y.min() < 0 or y.max() >= num_classes:
    raise ValueError(f"{what} labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")


def train_classifier(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray,
                     test_y: np.ndarray, *, num_classes: int, seed: int = 0,
                     epochs: int = DEFAULT_EPOCHS, batch_size: int = DEFAULT_BATCH_SIZE,
                     learning_rate: float = DEFAULT_LEARNING_RATE,
                     feature_dim: int = 128) -> tuple[dict, float]:
  """Trains a DomainClassifier -> (variables, test accuracy).

  x: uint8 (N, H, W, C); y: int labels. Adam with a cosine decay from
  `learning_rate` to 0 over all steps; each epoch a fresh order from
  numpy's Generator(seed), dropping the last partial batch. Deterministic:
  the same inputs and seed give bitwise-identical variables.
  """
  train_x, test_x = np.asarray(train_x), np.asarray(test_x)
  train_y, test_y = np.asarray(train_y, np.int32), np.asarray(test_y, np.int32)
  _check_xy(train_x, train_y, num_classes, "train")
  _check_xy(test_x, test_y, num_classes, "test")
  if train_x.shape[1:] != test_x.shape[1:]:
    raise ValueError(f"train images {train_x.shape[1:]} and test images {test_x.shape[1:]} differ")
  module = DomainClassifier(num_classes=num_classes, feature_dim=feature_dim)
  variables = module.init(jax.random.key(seed), jnp.zeros((1, *train_x.shape[1:]), jnp.float32))
  batch_size = min(batch_size, len(train_x))
  steps_per_epoch = len(train_x) // batch_size
  tx = optax.adam(optax.cosine_decay_schedule(learning_rate, max(1, epochs * steps_per_epoch)))
  opt_state = tx.init(variables)

  @jax.jit
  def step(variables, opt_state, x, y):
    def loss_fn(v):
      _, logits = module.apply(v, x.astype(jnp.float32) / 255.0, train=True)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss, grads = jax.value_and_grad(loss_fn)(variables)
    updates, opt_state = tx.update(grads, opt_state, variables)
    return optax.apply_updates(variables, updates), opt_state, loss

  # Plain Python loop over one compiled step: on XLA:CPU a rolled scan over
  # the step is far slower, and the per-step dispatch is negligible here.
  rng = np.random.default_rng(seed)
  for epoch in range(epochs):
    order = rng.permutation(len(train_x))
    for i in range(steps_per_epoch):
      idx = order[i * batch_size:(i + 1) * batch_size]
      variables, opt_state, loss = step(variables, opt_state, train_x[idx], train_y[idx])
    logging.info("domain classifier: epoch %d/%d, last batch loss %.4f",
                 epoch + 1, epochs, float(loss))
  variables = _canonical(variables)
  return variables, _accuracy(module, variables, test_x, test_y)


# --- dataset + cache ------------------------------------------------------------

def _read_split(builder, split: str, data_config: Any) -> tuple[np.ndarray, np.ndarray]:
  """The whole labelled split as uint8 images and int64 labels, in source
  order, cropped/resized as the data config asks (as the GAN sees it)."""
  import tensorflow_datasets as tfds
  from gan_jax.data import image_folder
  ds = builder.as_dataset(split=split, shuffle_files=False)
  side, crop = getattr(data_config, "image_size", 0), getattr(data_config, "crop", 0)
  if side or crop:
    side = side or builder.info.features["image"].shape[0]
    ds = ds.map(lambda ex: {"image": image_folder.crop_and_resize(ex["image"], side, crop),
                            "label": ex["label"]})
  # Batches, not batch_size=-1: the latter fails under tfds.testing.mock_data.
  parts = list(tfds.as_numpy(ds.map(lambda ex: (ex["image"], ex["label"])).batch(10_000)))
  return (np.concatenate([x for x, _ in parts]),
          np.concatenate([y for _, y in parts]).astype(np.int64))


def load_labelled_data(data_config: Any) -> tuple[dict, int]:
  """{'train': (x, y), 'test': (x, y)} of the config's TFDS dataset, and its
  number of classes. ValueError where it has no labels or no test split."""
  from gan_jax.data import sources   # lazily: it imports TFDS
  name = data_config.name
  source = getattr(data_config, "source", "tfds")
  if source != "tfds":
    raise ValueError(f"the domain classifier needs a labelled TFDS dataset; data.source="
                     f"{source!r} ({getattr(data_config, 'folder', '')}) has no labels")
  builder = sources.prepared_builder(data_config)
  features = builder.info.features
  if "label" not in features or not hasattr(features["label"], "num_classes"):
    raise ValueError(f"dataset '{name}' has no 'label' class feature (features: "
                     f"{sorted(features)}); the domain classifier needs labelled images")
  splits = builder.info.splits
  missing = [s for s in ("train", "test") if splits and s not in splits]
  if missing:
    raise ValueError(f"dataset '{name}' has no '{missing[0]}' split (splits: {sorted(splits)}); "
                     f"the domain classifier trains on 'train' and reports accuracy on 'test'")
  out = {s: _read_split(builder, s, data_config) for s in ("train", "test")}
  return out, int(features["label"].num_classes)


def cache_root(cache_dir: str | None = None) -> str:
  return cache_dir or os.environ.get("GAN_JAX_CACHE") or os.path.expanduser("~/.cache/gan_jax")


def data_sha256(x: np.ndarray, y: np.ndarray) -> str:
  h = hashlib.sha256()
  h.update(f"{x.dtype}{x.shape}|{len(y)}|".encode())
  h.update(np.ascontiguousarray(x).tobytes())
  h.update(np.ascontiguousarray(y, np.int64).tobytes())
  return h.hexdigest()


def _cache_key(data_hash: str, architecture: dict, hyperparameters: dict) -> str:
  spec = {"data_sha256": data_hash, "architecture": architecture,
          "hyperparameters": hyperparameters}
  return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def _safe(name: str) -> str:
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _abstract(module: DomainClassifier, image_shape) -> dict:
  init = module.init(jax.random.key(0), jnp.zeros((1, *image_shape), jnp.float32))
  import orbax.checkpoint as ocp
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, init)


def _load(folder: str, module: DomainClassifier, image_shape, key: str) -> tuple[dict, dict]:
  """(variables, meta) of a cache folder; raises if anything is off."""
  import orbax.checkpoint as ocp
  with open(os.path.join(folder, "meta.json")) as f:
    meta = json.load(f)
  if meta.get("key") != key:
    raise ValueError(f"meta.json key {meta.get('key')} != expected {key}")
  with ocp.StandardCheckpointer() as ckptr:
    restored = ckptr.restore(os.path.join(folder, "params"), _abstract(module, image_shape))
  variables = _canonical(restored)
  sha = weights_sha256(variables)
  if sha != meta.get("weights_sha256"):
    raise ValueError(f"weights sha256 {sha[:16]}... != meta.json's "
                     f"{str(meta.get('weights_sha256'))[:16]}...")
  return variables, meta


def _save(folder: str, variables: dict, meta: dict) -> str:
  """Writes to a temp folder beside `folder`, then renames it into place, so
  a crash never leaves a half-written cache. Returns the folder in use."""
  import orbax.checkpoint as ocp
  parent = os.path.dirname(folder)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-", dir=parent)
  try:
    with ocp.StandardCheckpointer() as ckptr:  # exits once the save is finished
      ckptr.save(os.path.join(tmp, "params"), variables)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
      json.dump(meta, f, indent=2)
    try:
      os.rename(tmp, folder)
    except OSError:  # another process put an identical classifier there first
      if not os.path.isdir(folder):
        raise
      shutil.rmtree(tmp, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return folder


def load_or_train(data_config: Any, cache_dir: str | None = None, *, seed: int = 0,
                  epochs: int = DEFAULT_EPOCHS, batch_size: int = DEFAULT_BATCH_SIZE,
                  learning_rate: float = DEFAULT_LEARNING_RATE,
                  feature_dim: int = 128) -> TrainedClassifier:
  """The domain classifier of `data_config`'s dataset (the `data` section of
  a gan_jax config): loaded from the cache, or trained on its 'train' split
  (accuracy on 'test') and cached. A corrupt cache is retrained."""
  splits, num_classes = load_labelled_data(data_config)
  (train_x, train_y), (test_x, test_y) = splits["train"], splits["test"]
  image_shape = tuple(int(d) for d in train_x.shape[1:])
  module = DomainClassifier(num_classes=num_classes, feature_dim=feature_dim)
  architecture = {"name": "DomainClassifier", "version": ARCH_VERSION,
                  "num_classes": num_classes, "feature_dim": feature_dim,
                  "image_shape": list(image_shape)}
  hyper = {"seed": seed, "epochs": epochs, "batch_size": batch_size,
           "learning_rate": learning_rate, "optimizer": "adam, cosine decay to 0"}
  data_hash = data_sha256(train_x, train_y)
  key = _cache_key(data_hash, architecture, hyper)
  folder = os.path.join(os.path.abspath(cache_root(cache_dir)), "classifiers",
                        f"{_safe(data_config.name)}-{key[:16]}")

  def made(variables, accuracy, where):
    return TrainedClassifier(module, _on_device(variables), data_config.name, image_shape,
                             num_classes, feature_dim, float(accuracy),
                             weights_sha256(variables), where)

  if os.path.isdir(folder):
    try:
      variables, meta = _load(folder, module, image_shape, key)
      logging.info("domain classifier for %s loaded from %s (test accuracy %.4f)",
                   data_config.name, folder, meta["test_accuracy"])
      return made(variables, meta["test_accuracy"], folder)
    except Exception as e:  # noqa: BLE001  (any unreadable cache is retrained)
      logging.warning("domain classifier cache %s is corrupt (%s: %s); retraining",
                      folder, type(e).__name__, e)
      shutil.rmtree(folder, ignore_errors=True)

  logging.info("training the domain classifier for %s on %d images %s (%d classes, "
               "%d epochs, batch %d, lr %g, seed %d)", data_config.name, len(train_x),
               image_shape, num_classes, epochs, batch_size, learning_rate, seed)
  start = time.time()
  variables, accuracy = train_classifier(
      train_x, train_y, test_x, test_y, num_classes=num_classes, seed=seed, epochs=epochs,
      batch_size=batch_size, learning_rate=learning_rate, feature_dim=feature_dim)
  seconds = time.time() - start
  logging.info("domain classifier for %s: test accuracy %.4f on %d images, trained in %.1f s",
               data_config.name, accuracy, len(test_x), seconds)
  meta = {"dataset": data_config.name, "key": key, "test_accuracy": accuracy,
          "num_test": int(len(test_x)), "num_train": int(len(train_x)),
          "architecture": architecture, "hyperparameters": hyper,
          "train_data_sha256": data_hash, "weights_sha256": weights_sha256(variables),
          "train_seconds": round(seconds, 2),
          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
  folder = _save(folder, variables, meta)
  return made(variables, accuracy, folder)
