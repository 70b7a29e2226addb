"""Scoring a generator: features of real and generated images from the
configured extractor, then the configured metrics, each report stored with
its protocol.

Feature batches are split over the devices of the mesh; moments stream in
float64 on device. The real side's statistics are cached under a content
hash of the images, the split, the extractor and its weights.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from gan_jax.errors import ConfigError
from gan_jax.evaluation import metrics, stats
from gan_jax.evaluation.classifier import cache_root
from gan_jax.evaluation.extractors import EXTRACTORS, Extractor
from gan_jax.mesh import AXIS


def validate_eval_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """The eval section's values, checked before any training or loading."""
  e = config.eval
  if e.extractor not in EXTRACTORS:
    raise ConfigError(f"unknown eval.extractor {e.extractor!r}; registered: "
                      f"{', '.join(sorted(EXTRACTORS))}")
  names = metrics.parse_metrics(e.metrics)
  scores = metrics.score_names(names)
  if e.best_metric and e.best_metric not in scores:
    raise ConfigError(f"eval.best_metric={e.best_metric!r} is not among the scores of "
                      f"eval.metrics={e.metrics!r}: {scores}")
  for key in ("num_samples", "batch_size", "kid_subsets", "kid_subset_size", "is_splits",
              "pr_k"):
    if e[key] <= 0:
      raise ConfigError(f"config key 'eval.{key}' must be positive, got {e[key]}")
  if e.every < 0 or e.num_real < 0:
    raise ConfigError("eval.every and eval.num_real must be >= 0 (0 = off / whole split)")
  if e.batch_size % num_devices:
    raise ConfigError(f"eval.batch_size {e.batch_size} is not divisible by the "
                      f"{num_devices} devices")
  by_class = [n for n in names if "labels" in metrics.METRICS[n].needs]
  if by_class and not config.model.num_classes:
    raise ConfigError(f"eval.metrics {by_class} score a class-conditional generator; this "
                      f"model is unconditional (model.num_classes=0)")
  if "class_acc" in names and e.extractor == "inception":
    raise ConfigError("eval.metrics 'class_acc' needs a classifier of the data's classes "
                      "(eval.extractor='domain'), not Inception's ImageNet classes")


# --- features -------------------------------------------------------------------

@dataclasses.dataclass
class FeatureSet:
  moments: stats.Moments
  features: np.ndarray | None   # (N, d) float32, kept when a metric needs "features"
  logits: np.ndarray | None     # (N, classes), kept when a metric needs "logits"
  labels: np.ndarray | None = None   # (N,) int32 classes, when a metric needs "labels":
                                     # the real images', the ones generated images were drawn for

  @property
  def n(self) -> int:
    return int(self.moments.n)


def extract(extractor: Extractor, batches, mesh, *, keep_features: bool,
            keep_logits: bool) -> FeatureSet:
  """Features of an iterable of image batches ([0, 1], any batch size),
  each batch split over the mesh's devices (padded to a multiple of them)."""
  sharding = NamedSharding(mesh, P(AXIS))
  ndev = mesh.devices.size
  moments = stats.init_moments(extractor.feature_dim)
  feats, logits = [], []
  for batch in batches:
    n = batch.shape[0]
    pad = -n % ndev
    x = jnp.asarray(batch, jnp.float32)
    if pad:
      x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    f, lg = extractor.apply(jax.device_put(x, sharding))
    f, lg = f[:n], lg[:n]
    moments = stats.update_moments(moments, f)
    if keep_features:
      feats.append(np.asarray(f, np.float32))
    if keep_logits:
      logits.append(np.asarray(lg, np.float32))
  return FeatureSet(moments, np.concatenate(feats) if keep_features else None,
                    np.concatenate(logits) if keep_logits else None)


def real_images(data_config, split: str, image_shape, limit: int, key: str = "",
                labels: bool = False) -> tuple[np.ndarray, np.ndarray | None, str]:
  """The first `limit` (0 = all) uint8 images of a split, in source order,
  their labels (with `labels`; else None), and the SHA-256 of the images' bytes."""
  from gan_jax import data   # lazily: importing the evaluation needs no data pipeline
  cfg = ml_collections.ConfigDict(data_config.to_dict())
  cfg.split = split
  out = data.load_images(cfg, tuple(image_shape), limit=limit, key=key,
                         **({"labels": True} if labels else {}))
  images, classes = out if labels else (out, None)
  return images, classes, hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


def _uint8_batches(images: np.ndarray, batch: int):
  for i in range(0, len(images), batch):
    yield images[i:i + batch].astype(np.float32) / 255.0


def stats_key(protocol: dict) -> str:
  return hashlib.sha256(json.dumps(protocol, sort_keys=True).encode()).hexdigest()


def real_statistics(extractor: Extractor, images: np.ndarray, content_sha256: str,
                    protocol: dict, mesh, batch: int, cache_dir: str) -> FeatureSet:
  """Features of the real images, from the cache when the same images,
  split, extractor and weights were seen before."""
  key = {**protocol, "content_sha256": content_sha256}
  path = os.path.join(cache_root(cache_dir), "stats", stats_key(key)[:32] + ".npz")
  if os.path.exists(path):
    try:
      with np.load(path) as z:
        if json.loads(str(z["protocol"])) == key:
          with jax.enable_x64(True):
            m = stats.Moments(jnp.asarray(z["n"]), jnp.asarray(z["mean"]), jnp.asarray(z["m2"]))
          logging.info("real statistics from %s", path)
          return FeatureSet(m, z["features"], None)
    except (OSError, ValueError, KeyError) as e:  # a half-written or foreign file
      logging.warning("ignoring unreadable statistics cache %s (%s)", path, e)
  fs = extract(extractor, _uint8_batches(images, batch), mesh, keep_features=True,
               keep_logits=False)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = path + f".tmp{os.getpid()}.npz"
  np.savez(tmp, n=np.asarray(fs.moments.n), mean=np.asarray(fs.moments.mean),
           m2=np.asarray(fs.moments.m2), features=fs.features, protocol=json.dumps(key))
  os.replace(tmp, path)
  return fs


class Evaluator:
  """Scores image sets against one real split. Built once (extractor and
  real statistics loaded or computed then), called at every evaluation."""

  def __init__(self, config: ml_collections.ConfigDict, image_shape, mesh):
    validate_eval_config(config, mesh.devices.size)
    self.e = config.eval
    self.names = metrics.parse_metrics(self.e.metrics)
    needs = metrics.needs_of(self.names)
    self.keep_features, self.keep_logits = "features" in needs, "logits" in needs
    self.mesh = mesh
    self.data_config = config.data
    self.pixel_range = tuple(config.data.pixel_range)
    self.image_shape = tuple(image_shape)
    self.extractor = EXTRACTORS.lookup(self.e.extractor, "eval.extractor")(config)
    if "fd" in self.names:  # the guard rail, before any sampling
      stats.check_sample_count(self.e.num_samples, self.extractor.feature_dim,
                               "eval.num_samples", self.e.allow_few_samples)
    self.with_labels = "labels" in needs
    images, labels, content = real_images(config.data, self.e.split, image_shape,
                                          self.e.num_real, "eval.num_real", self.with_labels)
    if "fd" in self.names:
      stats.check_sample_count(len(images), self.extractor.feature_dim,
                               f"real images of split '{self.e.split}'",
                               self.e.allow_few_samples)
    self.protocol = {
        "extractor": self.extractor.name, "weights_sha256": self.extractor.weights_sha256,
        "resize": self.extractor.resize, "dataset": config.data.name
        if config.data.source == "tfds" else config.data.folder,
        "split": self.e.split, "n_real": int(len(images)),
        "real_content_sha256": content, **self.extractor.info}
    if "intra_fd" in self.names:   # every class needs its own covariance
      counts = np.bincount(labels, minlength=config.model.num_classes)
      for k, n in enumerate(counts):
        stats.check_sample_count(int(n), self.extractor.feature_dim,
                                 f"real images of class {k} in split '{self.e.split}' "
                                 f"(intra_fd)", self.e.allow_few_samples)
    self.real = real_statistics(self.extractor, images, content, {
        k: self.protocol[k] for k in ("extractor", "weights_sha256", "resize", "dataset",
                                      "split", "n_real")}, mesh, self.e.batch_size,
        self.e.cache_dir)
    self.real.labels = labels

  def score_batches(self, batches, n_fake: int, source: str,
                    labels: np.ndarray | None = None) -> dict[str, Any]:
    """Scores of `batches` of images in [0, 1] (n_fake in all; `labels`:
    their classes, for the metrics that need them)."""
    t0 = time.perf_counter()
    fake = extract(self.extractor, batches, self.mesh, keep_features=self.keep_features,
                   keep_logits=self.keep_logits)
    if fake.n != n_fake:
      raise ValueError(f"eval: expected {n_fake} images, got {fake.n}")
    if self.with_labels:
      if labels is None:
        raise ConfigError(f"eval.metrics={self.e.metrics!r} needs the classes of the "
                          f"generated images: a class-conditional generator")
      fake.labels = np.asarray(labels, np.int32)
    result = metrics.compute_scores(self.real, fake, self.names, self.e)
    protocol = {**self.protocol, "n_fake": n_fake, "fake_source": source,
                "metrics": list(self.names), "kid_subsets": self.e.kid_subsets,
                "kid_subset_size": min(self.e.kid_subset_size, n_fake, self.protocol["n_real"]),
                "is_splits": self.e.is_splits, "pr_k": self.e.pr_k, "seed": self.e.seed}
    return {"scores": result, "protocol": protocol,
            "seconds": round(time.perf_counter() - t0, 3)}

  def score_generator(self, generate: Callable[..., jax.Array], latents: jax.Array,
                      labels: np.ndarray | None = None) -> dict[str, Any]:
    """Scores G's images for `latents` (G in inference mode via `generate`;
    a conditional G's `generate(z, labels)` with `labels`, one per latent)."""
    lo, hi = self.pixel_range
    b = self.e.batch_size

    def batches():
      for i in range(0, latents.shape[0], b):
        x = (generate(latents[i:i + b]) if labels is None
             else generate(latents[i:i + b], jnp.asarray(labels[i:i + b])))
        yield jnp.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return self.score_batches(batches(), int(latents.shape[0]), "generator", labels)

  def score_split(self, split: str, num: int) -> dict[str, Any]:
    """Scores real images of another split against the reference split (the
    data's own baseline: near 0 for FD)."""
    images, labels, _ = real_images(self.data_config, split, self.image_shape, num,
                                    "eval.num_samples", self.with_labels)
    return self.score_batches(_uint8_batches(images, self.e.batch_size), len(images),
                              f"split:{split}", labels)
