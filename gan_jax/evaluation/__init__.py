"""Evaluating a generator: features of real and generated images from a
registered extractor (`eval.extractor`: extractors.EXTRACTORS), then the
registered metrics (`eval.metrics`: metrics.METRICS), each report stored
with its protocol.

Built in: extractors 'domain' (a classifier trained here, offline) and
'inception' (the FID Inception v3); metrics fd (Fréchet distance; FID with
the inception extractor), kid, is (split and single), pr (precision/recall).
A user module adds its own with `@extractors.EXTRACTORS.register(name)` and
`@metrics.register(name, scores=..., needs=...)`.

Importing this package loads neither TensorFlow nor TFDS: the data and the
domain classifier's training import them when they are used.
"""
from __future__ import annotations

from gan_jax.evaluation.evaluator import (Evaluator, FeatureSet, extract, real_images,
                                          validate_eval_config)
from gan_jax.evaluation.extractors import EXTRACTORS, Extractor
from gan_jax.evaluation.metrics import (METRICS, higher_is_better, parse_metrics,
                                        score_names)
from gan_jax.evaluation.stats import FewSamplesError

__all__ = ["EXTRACTORS", "METRICS", "Evaluator", "Extractor", "FeatureSet",
           "FewSamplesError", "extract", "higher_is_better", "parse_metrics", "real_images",
           "score_names", "validate_eval_config"]
