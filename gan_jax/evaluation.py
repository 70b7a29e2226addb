"""Evaluating a generator: features of real and generated images from a named
extractor, then the configured scores, each stored with its protocol.

Extractors (`eval.extractor`):
  domain     a small CNN gan_jax trains on the dataset's labelled train split
             (gan_jax.classifier), cached; works offline, no download
  inception  the FID Inception v3 (gan_jax.inception), weights converted from
             pytorch-fid's file by experiments/tools/convert_fid_inception.py

Scores (`eval.metrics`, comma-separated): fd (Fréchet distance; FID with the
inception extractor), kid, is (split and single), pr (precision/recall).
Feature batches are split over the devices of the mesh; moments stream in
float64 on device. The real side's statistics are cached under a content
hash of the images, the split, the extractor and its weights.
"""
from __future__ import annotations

import dataclasses
import functools
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

from gan_jax import data, metrics
from gan_jax.classifier import cache_root
from gan_jax.config import ConfigError

METRICS = ("fd", "kid", "is", "pr")
# Score -> True when higher is better (for eval.best_metric).
HIGHER_IS_BETTER = {"fd": False, "kid": False, "is": True, "is_single": True,
                    "precision": True, "recall": True}


@dataclasses.dataclass(frozen=True)
class Extractor:
  """images (N, H, W, C) float in [0, 1] -> (features (N, d), logits (N, classes))."""
  name: str
  weights_sha256: str
  resize: str
  feature_dim: int
  apply: Callable[[jax.Array], tuple[jax.Array, jax.Array]]
  info: dict = dataclasses.field(default_factory=dict)   # goes into the protocol


def domain_extractor(config: ml_collections.ConfigDict) -> Extractor:
  from gan_jax import classifier
  if config.data.source != "tfds":
    raise ConfigError(f"eval.extractor='domain' trains on a labelled TFDS dataset; "
                      f"data.source={config.data.source!r} has no labels (use "
                      f"eval.extractor='inception')")
  trained = classifier.load_or_train(config.data, cache_root(config.eval.cache_dir),
                                     seed=config.eval.classifier_seed)
  return Extractor(trained.name, trained.weights_sha256, "none", trained.feature_dim,
                   trained.apply, {"extractor_test_accuracy": trained.test_accuracy})


def inception_extractor(config: ml_collections.ConfigDict) -> Extractor:
  from gan_jax import inception
  path = config.eval.inception_weights
  if not path or not os.path.isfile(path):
    raise ConfigError(
        f"eval.extractor='inception' needs eval.inception_weights=PATH to the converted FID "
        f"Inception weights (got {path!r}); convert {inception.WEIGHTS_FILE} "
        f"({inception.WEIGHTS_URL}) with experiments/tools/convert_fid_inception.py")
  variables = inception.load_variables(path)
  return Extractor("inception:fid", inception.file_sha256(path),
                   f"bilinear {inception.INPUT_SIZE}x{inception.INPUT_SIZE}",
                   inception.FEATURE_DIM, functools.partial(inception.features, variables))


EXTRACTORS = {"domain": domain_extractor, "inception": inception_extractor}


def parse_metrics(text: str) -> tuple[str, ...]:
  names = tuple(m.strip() for m in text.split(",") if m.strip())
  bad = [m for m in names if m not in METRICS]
  if not names or bad:
    raise ConfigError(f"eval.metrics={text!r}: unknown {bad or 'empty'}; "
                      f"valid: a comma-separated subset of {','.join(METRICS)}")
  return names


def score_names(names: tuple[str, ...]) -> list[str]:
  out = []
  for m in names:
    out += {"fd": ["fd"], "kid": ["kid", "kid_std"], "is": ["is", "is_std", "is_single"],
            "pr": ["precision", "recall"]}[m]
  return out


def validate_eval_config(config: ml_collections.ConfigDict, num_devices: int) -> None:
  """The eval section's values, checked before any training or loading."""
  e = config.eval
  if e.extractor not in EXTRACTORS:
    raise ConfigError(f"unknown eval.extractor {e.extractor!r}; valid: {sorted(EXTRACTORS)}")
  names = parse_metrics(e.metrics)
  if e.best_metric and e.best_metric not in score_names(names):
    raise ConfigError(f"eval.best_metric={e.best_metric!r} is not among the scores of "
                      f"eval.metrics={e.metrics!r}: {score_names(names)}")
  for key in ("num_samples", "batch_size", "kid_subsets", "kid_subset_size", "is_splits",
              "pr_k"):
    if e[key] <= 0:
      raise ConfigError(f"config key 'eval.{key}' must be positive, got {e[key]}")
  if e.every < 0 or e.num_real < 0:
    raise ConfigError("eval.every and eval.num_real must be >= 0 (0 = off / whole split)")
  if e.batch_size % num_devices:
    raise ConfigError(f"eval.batch_size {e.batch_size} is not divisible by the "
                      f"{num_devices} devices")


# --- features -------------------------------------------------------------------

@dataclasses.dataclass
class FeatureSet:
  moments: metrics.Moments
  features: np.ndarray | None   # (N, d) float32, kept for KID and precision/recall
  logits: np.ndarray | None     # (N, classes), kept for IS

  @property
  def n(self) -> int:
    return int(self.moments.n)


def extract(extractor: Extractor, batches, mesh, *, keep_features: bool,
            keep_logits: bool) -> FeatureSet:
  """Features of an iterable of image batches ([0, 1], any batch size),
  each batch split over the mesh's devices (padded to a multiple of them)."""
  sharding = NamedSharding(mesh, P("data"))
  ndev = mesh.devices.size
  moments = metrics.init_moments(extractor.feature_dim)
  feats, logits = [], []
  for batch in batches:
    n = batch.shape[0]
    pad = -n % ndev
    x = jnp.asarray(batch, jnp.float32)
    if pad:
      x = jnp.concatenate([x, jnp.zeros((pad, *x.shape[1:]), x.dtype)])
    f, lg = extractor.apply(jax.device_put(x, sharding))
    f, lg = f[:n], lg[:n]
    moments = metrics.update_moments(moments, f)
    if keep_features:
      feats.append(np.asarray(f, np.float32))
    if keep_logits:
      logits.append(np.asarray(lg, np.float32))
  return FeatureSet(moments, np.concatenate(feats) if keep_features else None,
                    np.concatenate(logits) if keep_logits else None)


def real_images(data_config, split: str, image_shape, limit: int) -> tuple[np.ndarray, str]:
  """The first `limit` (0 = all) uint8 images of a split, in source order,
  and the SHA-256 of their bytes."""
  cfg = ml_collections.ConfigDict(data_config.to_dict())
  cfg.split = split
  ds, _ = data.SOURCES[cfg.source](cfg, tuple(image_shape))
  if limit:
    ds = ds.take(limit)
  images = np.concatenate(list(ds.batch(4096).as_numpy_iterator()))
  if limit and len(images) < limit:
    raise data.DataError(f"eval: split '{split}' of '{data_config.name}' has "
                         f"{len(images)} images, fewer than eval.num_real={limit}")
  return images, hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest()


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
            m = metrics.Moments(jnp.asarray(z["n"]), jnp.asarray(z["mean"]), jnp.asarray(z["m2"]))
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


def scores(real: FeatureSet, fake: FeatureSet, names: tuple[str, ...],
           e: ml_collections.ConfigDict) -> dict[str, float]:
  out = {}
  if "fd" in names:
    out["fd"] = metrics.frechet_from_moments(real.moments, fake.moments,
                                             allow_few=e.allow_few_samples)
  if "kid" in names:
    out["kid"], out["kid_std"] = metrics.kernel_inception_distance(
        real.features, fake.features, num_subsets=e.kid_subsets,
        subset_size=e.kid_subset_size, seed=e.seed)
  if "is" in names:
    out["is"], out["is_std"] = metrics.inception_score(fake.logits, splits=e.is_splits)
    out["is_single"], _ = metrics.inception_score(fake.logits, splits=1)
  if "pr" in names:
    out["precision"], out["recall"] = metrics.precision_recall(real.features, fake.features,
                                                               k=e.pr_k)
  return out


class Evaluator:
  """Scores image sets against one real split. Built once (extractor and
  real statistics loaded or computed then), called at every evaluation."""

  def __init__(self, config: ml_collections.ConfigDict, image_shape, mesh):
    validate_eval_config(config, mesh.devices.size)
    self.e = config.eval
    self.names = parse_metrics(self.e.metrics)
    self.mesh = mesh
    self.data_config = config.data
    self.pixel_range = tuple(config.data.pixel_range)
    self.image_shape = tuple(image_shape)
    self.extractor = EXTRACTORS[self.e.extractor](config)
    if "fd" in self.names:  # the guard rail, before any sampling
      metrics.check_sample_count(self.e.num_samples, self.extractor.feature_dim,
                                 "eval.num_samples", self.e.allow_few_samples)
    images, content = real_images(config.data, self.e.split, image_shape, self.e.num_real)
    if "fd" in self.names:
      metrics.check_sample_count(len(images), self.extractor.feature_dim,
                                 f"real images of split '{self.e.split}'",
                                 self.e.allow_few_samples)
    self.protocol = {
        "extractor": self.extractor.name, "weights_sha256": self.extractor.weights_sha256,
        "resize": self.extractor.resize, "dataset": config.data.name
        if config.data.source == "tfds" else config.data.folder,
        "split": self.e.split, "n_real": int(len(images)),
        "real_content_sha256": content, **self.extractor.info}
    self.real = real_statistics(self.extractor, images, content, {
        k: self.protocol[k] for k in ("extractor", "weights_sha256", "resize", "dataset",
                                      "split", "n_real")}, mesh, self.e.batch_size,
        self.e.cache_dir)

  def score_batches(self, batches, n_fake: int, source: str) -> dict[str, Any]:
    """Scores of `batches` of images in [0, 1] (n_fake in all)."""
    t0 = time.perf_counter()
    fake = extract(self.extractor, batches, self.mesh,
                   keep_features=bool({"kid", "pr"} & set(self.names)),
                   keep_logits="is" in self.names)
    if fake.n != n_fake:
      raise ValueError(f"eval: expected {n_fake} images, got {fake.n}")
    result = scores(self.real, fake, self.names, self.e)
    protocol = {**self.protocol, "n_fake": n_fake, "fake_source": source,
                "metrics": list(self.names), "kid_subsets": self.e.kid_subsets,
                "kid_subset_size": min(self.e.kid_subset_size, n_fake, self.protocol["n_real"]),
                "is_splits": self.e.is_splits, "pr_k": self.e.pr_k, "seed": self.e.seed}
    return {"scores": result, "protocol": protocol,
            "seconds": round(time.perf_counter() - t0, 3)}

  def score_generator(self, generate: Callable[[jax.Array], jax.Array],
                      latents: jax.Array) -> dict[str, Any]:
    """Scores G's images for `latents` (G in inference mode via `generate`)."""
    lo, hi = self.pixel_range
    b = self.e.batch_size

    def batches():
      for i in range(0, latents.shape[0], b):
        x = generate(latents[i:i + b])
        yield jnp.clip((x - lo) / (hi - lo), 0.0, 1.0)
    return self.score_batches(batches(), int(latents.shape[0]), "generator")

  def score_split(self, split: str, num: int) -> dict[str, Any]:
    """Scores real images of another split against the reference split (the
    data's own baseline: near 0 for FD)."""
    images, _ = real_images(self.data_config, split, self.image_shape, num)
    return self.score_batches(_uint8_batches(images, self.e.batch_size), len(images),
                              f"split:{split}")


def evaluate_command(config: ml_collections.ConfigDict, workdir: str | None, *,
                     step: int | None = None, split: str | None = None,
                     out: str | None = None) -> tuple[dict[str, Any], str]:
  """`gan-jax eval`: scores a work directory's checkpoint (latest or `step`),
  or the real `split`, against eval.split; writes the JSON report."""
  from gan_jax import checkpointing, models, outputs, train
  mesh = train.make_mesh()
  validate_eval_config(config, mesh.devices.size)
  if split is None:
    # The checkpoint before the (slow) statistics: a missing one fails at once.
    c = train.build_components(config)
    ckpt = checkpointing.Checkpointer(workdir, keep=1, read_only=True)
    state = ckpt.restore(train.init_state(config, c, mesh), step=step)
    evaluator = Evaluator(config, c.image_shape, mesh)
    latents = train.sample_latents(jax.random.PRNGKey(config.eval.seed),
                                   config.eval.num_samples, c)
    report = train.evaluate_state(evaluator, train.make_generate(c), state, latents)
    name = f"step_{report['step']:07d}.json"
  else:
    evaluator = Evaluator(config, models.image_shape(config.model), mesh)
    report = {"step": None, **evaluator.score_split(split, config.eval.num_samples)}
    name = f"split_{split}.json"
  path = out or os.path.join(workdir or ".", "eval", name)
  outputs.write_report(path, report)
  return report, path
