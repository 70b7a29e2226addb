"""Feature extractors (`eval.extractor`), a registry of name -> factory.

A factory takes the whole config and returns an `Extractor`; a user module
adds its own with `@EXTRACTORS.register("name")`.

  domain     a small CNN gan_jax trains on the dataset's labelled train split
             (gan_jax.evaluation.classifier), cached; works offline, no download
  inception  the FID Inception v3 (gan_jax.evaluation.inception), weights
             converted from pytorch-fid's file by
             experiments/tools/convert_fid_inception.py
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Callable

import jax
import ml_collections

from gan_jax.errors import ConfigError
from gan_jax.registry import Registry

EXTRACTORS = Registry("extractor")


@dataclasses.dataclass(frozen=True)
class Extractor:
  """images (N, H, W, C) float in [0, 1] -> (features (N, d), logits (N, classes))."""
  name: str
  weights_sha256: str
  resize: str
  feature_dim: int
  apply: Callable[[jax.Array], tuple[jax.Array, jax.Array]]
  info: dict = dataclasses.field(default_factory=dict)   # goes into the protocol


@EXTRACTORS.register("domain")
def domain_extractor(config: ml_collections.ConfigDict) -> Extractor:
  # Lazily: the classifier trains through TFDS only when it is asked for.
  from gan_jax.evaluation import classifier
  if config.data.source != "tfds":
    raise ConfigError(f"eval.extractor='domain' trains on a labelled TFDS dataset; "
                      f"data.source={config.data.source!r} has no labels (use "
                      f"eval.extractor='inception')")
  trained = classifier.load_or_train(config.data, classifier.cache_root(config.eval.cache_dir),
                                     seed=config.eval.classifier_seed)
  return Extractor(trained.name, trained.weights_sha256, "none", trained.feature_dim,
                   trained.apply, {"extractor_test_accuracy": trained.test_accuracy})


@EXTRACTORS.register("inception")
def inception_extractor(config: ml_collections.ConfigDict) -> Extractor:
  from gan_jax.evaluation import inception
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
