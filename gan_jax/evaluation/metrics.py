"""The metric registry (`eval.metrics`): name -> `Metric`.

A metric maps the real and the generated `FeatureSet` to one or more named
scores. Register one (in gan_jax or in a module named in `config.imports`):

  from gan_jax.evaluation import metrics

  @metrics.register("mean_norm", scores={"mean_norm": False}, needs=("features",))
  def mean_norm(real, fake, eval_config):
    return {"mean_norm": float(np.linalg.norm(fake.features, axis=1).mean())}

`scores` maps each score name the function returns to True when higher is
better (what `eval.best_metric` keeps); `needs` says what the evaluator
keeps beyond the streamed moments: "features" (per-image features of both
sides), "logits" (the generated side's class logits) and "labels" (the
classes of both sides: the real images', and those a class-conditional G
was asked for; such a metric needs model.num_classes > 0).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from gan_jax.errors import ConfigError
from gan_jax.evaluation import stats
from gan_jax.registry import Registry

if TYPE_CHECKING:
  from gan_jax.evaluation.evaluator import FeatureSet

NEEDS = ("moments", "features", "logits", "labels")
METRICS = Registry("metric")


@dataclasses.dataclass(frozen=True)
class Metric:
  """fn(real, fake, eval_config) -> {score name: value} for exactly `scores`."""
  fn: Callable[[FeatureSet, FeatureSet, Any], dict[str, float]]
  scores: dict[str, bool]       # score name -> True when higher is better
  needs: tuple[str, ...]        # a subset of NEEDS


def _check_scores(name: str, scores: Any) -> dict[str, bool]:
  if not isinstance(scores, dict) or not scores:
    raise ConfigError(f"metric {name!r}: scores must be a non-empty dict of score name -> "
                      f"higher is better (bool), got {scores!r}")
  for score, higher in scores.items():
    if not isinstance(score, str) or not score or not isinstance(higher, bool):
      raise ConfigError(f"metric {name!r}: scores maps a non-empty name to a bool, got "
                        f"{score!r}: {higher!r}")
  # One score name, one metric: eval.best_metric and higher_is_better look it up.
  for other, metric in METRICS.items():
    clash = sorted(set(scores) & set(metric.scores))
    if other != name and clash:
      raise ConfigError(f"metric {name!r}: score(s) {clash} are already produced by "
                        f"metric {other!r}; name yours differently")
  return dict(scores)


def register(name: str, *, scores: dict[str, bool],
             needs: Iterable[str] = ("moments",)) -> Callable:
  """Decorator: registers `fn(real, fake, eval_config)` as metric `name`."""
  needs = (needs,) if isinstance(needs, str) else tuple(needs)
  unknown = [n for n in needs if n not in NEEDS]
  if unknown:
    raise ConfigError(f"metric {name!r}: unknown needs {unknown}; valid: {', '.join(NEEDS)}")

  def decorate(fn: Callable) -> Callable:
    METRICS.add(name, Metric(fn, _check_scores(name, scores), needs))
    return fn
  return decorate


def parse_metrics(text: str) -> tuple[str, ...]:
  """`eval.metrics` ("fd,kid") -> registered metric names, in order, once each."""
  names = tuple(dict.fromkeys(m.strip() for m in text.split(",") if m.strip()))
  bad = [m for m in names if m not in METRICS]
  if not names or bad:
    raise ConfigError(f"eval.metrics={text!r}: unknown {bad or 'empty'}; valid: a comma-"
                      f"separated list of the registered metrics: {', '.join(sorted(METRICS))}")
  return names


def score_names(names: Iterable[str]) -> list[str]:
  """The score names the metrics `names` report, in order."""
  return [s for n in names for s in METRICS.lookup(n, "eval.metrics").scores]


def higher_is_better(score_name: str) -> bool:
  """Whether a larger value of a score is better (for eval.best_metric)."""
  for metric in METRICS.values():
    if score_name in metric.scores:
      return metric.scores[score_name]
  raise ConfigError(f"unknown score {score_name!r}; the registered metrics report: "
                    f"{', '.join(sorted(s for m in METRICS.values() for s in m.scores))}")


def needs_of(names: Iterable[str]) -> set[str]:
  """The union of the metrics' needs."""
  return {n for name in names for n in METRICS.lookup(name, "eval.metrics").needs}


def compute_scores(real: FeatureSet, fake: FeatureSet, names: Iterable[str],
                   eval_config: Any) -> dict[str, float]:
  """Every score of the metrics `names`, in their order."""
  out = {}
  for name in names:
    metric = METRICS.lookup(name, "eval.metrics")
    got = metric.fn(real, fake, eval_config)
    if not isinstance(got, dict) or set(got) != set(metric.scores):
      raise ConfigError(f"metric {name!r} ({metric.fn.__module__}.{metric.fn.__qualname__}) "
                        f"returned {sorted(got) if isinstance(got, dict) else type(got)}, "
                        f"not its registered scores {sorted(metric.scores)}")
    out.update((k, float(got[k])) for k in metric.scores)
  return out


# --- the built-in metrics ---------------------------------------------------------

@register("fd", scores={"fd": False})
def frechet(real: FeatureSet, fake: FeatureSet, e: Any) -> dict[str, float]:
  """Fréchet distance of the feature Gaussians (FID with the inception extractor)."""
  return {"fd": stats.frechet_from_moments(real.moments, fake.moments,
                                           allow_few=e.allow_few_samples)}


@register("kid", scores={"kid": False, "kid_std": False}, needs=("features",))
def kid(real: FeatureSet, fake: FeatureSet, e: Any) -> dict[str, float]:
  mean, std = stats.kernel_inception_distance(
      real.features, fake.features, num_subsets=e.kid_subsets,
      subset_size=e.kid_subset_size, seed=e.seed)
  return {"kid": mean, "kid_std": std}


@register("is", scores={"is": True, "is_std": True, "is_single": True}, needs=("logits",))
def inception_score(real: FeatureSet, fake: FeatureSet, e: Any) -> dict[str, float]:
  del real  # IS looks at the generated side only
  mean, std = stats.inception_score(fake.logits, splits=e.is_splits)
  single, _ = stats.inception_score(fake.logits, splits=1)
  return {"is": mean, "is_std": std, "is_single": single}


@register("pr", scores={"precision": True, "recall": True}, needs=("features",))
def precision_recall(real: FeatureSet, fake: FeatureSet, e: Any) -> dict[str, float]:
  precision, recall = stats.precision_recall(real.features, fake.features, k=e.pr_k)
  return {"precision": precision, "recall": recall}


# --- class-conditional generation -------------------------------------------------

@register("class_acc", scores={"class_accuracy": True}, needs=("logits", "labels"))
def class_accuracy(real: FeatureSet, fake: FeatureSet, e: Any) -> dict[str, float]:
  """The extractor's classifier (the domain classifier: trained on the same
  classes) on conditional samples: the fraction it assigns to the class
  each was drawn for."""
  del real, e
  classes = fake.logits.shape[1]
  if fake.labels.max(initial=0) >= classes:
    raise ConfigError(f"class_acc: labels up to {int(fake.labels.max())}, but the extractor "
                      f"classifies {classes} classes (use eval.extractor='domain')")
  return {"class_accuracy": float(np.mean(np.argmax(fake.logits, axis=1) == fake.labels))}


@register("intra_fd", scores={"intra_fd": False}, needs=("features", "labels"))
def intra_class_fd(real: FeatureSet, fake: FeatureSet, e: Any) -> dict[str, float]:
  """The Fréchet distance between the real and the generated images of each
  class, averaged over the classes of the generated images (intra-FID,
  Miyato & Koyama 2018, with the inception extractor)."""
  fds = []
  for k in np.unique(fake.labels):
    r, f = real.features[real.labels == k], fake.features[fake.labels == k]
    for n, side in ((len(r), f"real images of class {k}"), (len(f), f"samples of class {k}")):
      stats.check_sample_count(n, f.shape[1], side, e.allow_few_samples)
    fds.append(stats.frechet_from_moments(stats.moments_of(r), stats.moments_of(f),
                                          allow_few=e.allow_few_samples))
  return {"intra_fd": float(np.mean(fds))}
