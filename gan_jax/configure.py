"""A command's config, from file to checked: load, import the user modules
it names, complete it from the registries, apply overrides, validate.

`load` is what every command runs (train, sample, eval, prepare, a resume
from config.json): the modules in `config.imports` are imported before
anything is built, so their registered losses, penalties, models, metrics
and data sources exist, and their penalty weights and model kwargs are
config keys that `--config.KEY=VALUE` can set. `validate` holds every check
of a config's values that would otherwise fail deep inside training.
"""
from __future__ import annotations

import os

import ml_collections
from absl import logging

from gan_jax import (augment, config as config_lib, hardware, losses, models, penalties,
                     registry)
from gan_jax.errors import ConfigError
from gan_jax.state import make_optimizers

# Keys applied before the rest of the overrides: they decide which modules
# are imported and which model's kwargs the config has.
_FIRST = ("imports", "model.name")


def load(path: str, overrides: dict[str, str] | None = None) -> ml_collections.ConfigDict:
  """The config of an experiment file or config.json, completed, with
  `overrides` ({'a.b': 'text'}) applied and the user modules imported."""
  overrides = dict(overrides or {})
  config = config_lib.with_defaults(config_lib.load_config(path))
  first = {k: overrides.pop(k) for k in _FIRST if k in overrides}
  config_lib.apply_overrides(config, first)
  base_dir = os.path.dirname(os.path.abspath(path)) if path.endswith(".py") else None
  with config.unlocked():
    config.imports = registry.resolve_imports(config.imports, base_dir)
  registry.import_modules(config.imports)
  config = complete(config, model_renamed="model.name" in first)
  return config_lib.apply_overrides(config, overrides)


def complete(config: ml_collections.ConfigDict,
             model_renamed: bool = False) -> ml_collections.ConfigDict:
  """`config` with a weight key (0 = off) for every registered penalty and
  the model's kwargs completed with its defaults. The model keys of a
  config.json from before model kwargs existed move into `model.kwargs`
  where the model takes them (it ignored the rest); after `model.name` was
  overridden (`model_renamed`), kwargs the new model does not take are
  dropped."""
  d = config.to_dict()
  d["penalty"] = {**{name: 0.0 for name in penalties.PENALTIES}, **d.get("penalty", {})}
  model = d["model"]
  # A config.json from before model.kwargs: its model's own keys sat beside
  # the common ones, every family's keys in every config; the model used its own.
  legacy = {k: model.pop(k) for k in list(model) if k not in config_lib.common_model_keys()}
  kwargs = dict(model["kwargs"])
  if model["name"] in models.MODELS:
    defaults = models.model_kwargs(ml_collections.ConfigDict({"name": model["name"],
                                                               "kwargs": {}}))
    if model_renamed:
      kwargs = {k: v for k, v in kwargs.items() if k in defaults}
    kwargs = {**defaults, **{k: v for k, v in legacy.items() if k in defaults}, **kwargs}
  else:
    kwargs = {**legacy, **kwargs}
  model["kwargs"] = kwargs
  out = ml_collections.ConfigDict(d)
  out.lock()
  return out


def resolve_auto_dtype(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with model.dtype='auto' replaced by the precision this
  machine's first device runs fastest (`gan_jax.hardware`), logged; after
  the devices are known (multi-process: after jax.distributed starts)."""
  if config.model.dtype != "auto":
    return config
  dtype, why = hardware.auto_dtype()
  logging.warning("model.dtype='auto': training in %s (%s)", dtype, why)
  config = config.copy_and_resolve_references()
  config.model.dtype = dtype
  return config


def record_class_names(config: ml_collections.ConfigDict, members: list) -> None:
  """Sets data.class_names (of `config` and each sweep member's config) to
  the classes the conditional model's data names (TFDS label names, an image
  folder's class subfolders), so config.json records them; a number of
  classes other than model.num_classes is a ConfigError."""
  from gan_jax.data import sources   # lazily: reads the dataset's metadata
  names = sources.class_names(config.data)
  if names is None:
    return
  if len(names) != config.model.num_classes:
    raise ConfigError(f"the data has {len(names)} classes ({', '.join(names[:12])}"
                      f"{', ...' if len(names) > 12 else ''}); set model.num_classes="
                      f"{len(names)} (it is {config.model.num_classes})")
  for cfg in [config] + [m.config for m in members]:
    cfg.data.class_names = tuple(names)


def _positive(config, *keys: str) -> None:
  for key in keys:
    if config[key] <= 0:
      raise ConfigError(f"config key '{key}' must be positive, got {config[key]}")


def check_components(config: ml_collections.ConfigDict) -> None:
  """The values that choose and parametrise the models, loss and penalties."""
  models.build_models(config.model, config.data.pixel_range)   # names, kwargs, dtype
  make_optimizers(config.optim)
  loss = losses.get_loss(config.loss)
  penalties.active(config.penalty)
  if (config.real_label != 1.0 or config.real_label_noise != 0.0) and not (
      losses.takes_real_target(loss)):
    raise ConfigError(f"loss {config.loss!r} has no real-label target, so real_label / "
                      f"real_label_noise (label smoothing) cannot apply; losses that take one: "
                      f"{sorted(n for n, f in losses.LOSSES.items() if losses.takes_real_target(f))}")
  if config.model.latent_dist not in config_lib.LATENT_DISTS:
    raise ConfigError(f"model.latent_dist must be one of {config_lib.LATENT_DISTS}, got "
                      f"{config.model.latent_dist!r}")
  if config.d_steps < 1:
    raise ConfigError(f"d_steps must be >= 1, got {config.d_steps}")
  if not 0.0 <= config.ema_decay < 1.0:
    raise ConfigError(f"ema_decay must be in [0, 1), got {config.ema_decay}")
  augment.parse_policy(config.augment.policy)
  for key in ("p", "ada_target"):
    if not 0.0 <= config.augment[key] <= 1.0:
      raise ConfigError(f"augment.{key} must be in [0, 1], got {config.augment[key]}")
  if config.augment.ada_images <= 0:
    raise ConfigError(f"augment.ada_images must be positive, got {config.augment.ada_images}")
  if config.class_loss_weight < 0:
    raise ConfigError(f"class_loss_weight must be >= 0, got {config.class_loss_weight}")


def validate(config: ml_collections.ConfigDict, num_devices: int,
             member_configs: list[ml_collections.ConfigDict] | None = None) -> None:
  """Every training setting, checked before any data is read or file
  written (`member_configs`: a sweep's members, each checked too)."""
  _positive(config, "batch_size", "log_every", "checkpoint_every", "keep_checkpoints",
            "num_grid_samples", "steps_per_call")
  for key in ("sample_every", "sample_every_epochs", "export_generator_every_epochs"):
    if config[key] < 0:
      raise ConfigError(f"config key '{key}' must be >= 0 (0 = off), got {config[key]}")
  if config.num_steps < -1 or config.num_epochs < 0:
    raise ConfigError(f"num_steps must be > 0 or -1 (unset: num_epochs decides) and num_epochs "
                      f">= 0, got num_steps={config.num_steps}, num_epochs={config.num_epochs}")
  if config.num_steps <= 0 and config.num_epochs <= 0:
    raise ConfigError("set num_epochs > 0 or num_steps > 0")
  if config.divergence.max_abs_loss < 0:
    raise ConfigError(f"divergence.max_abs_loss must be >= 0 (0 = no bound), got "
                      f"{config.divergence.max_abs_loss}")
  if config.batch_size % num_devices:
    raise ConfigError(f"batch_size {config.batch_size} is not divisible by the "
                      f"{num_devices} devices")
  lo, hi = config.data.pixel_range
  if not lo < hi:
    raise ConfigError(f"data.pixel_range must be (low, high) with low < high, got {(lo, hi)}")
  if config.eval.every:
    from gan_jax import evaluation
    evaluation.validate_eval_config(config, num_devices)
  for cfg in member_configs or [config]:
    check_components(cfg)
