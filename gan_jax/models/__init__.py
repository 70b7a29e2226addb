"""Generators and discriminators (Flax linen), registered by name.

A model is a function registered under a name, returning the pair:

  from gan_jax import models

  @models.register("my_gan")
  def my_gan(ctx: models.ModelContext, *, width: int = 64, depth: int = 3):
    ...
    return generator, discriminator

`ctx` holds what every model is built for (image shape, latent size, pixel
range, the data-parallel axis name), from the config's common model keys.
The keyword-only parameters ARE the model's kwargs: `model.name` names the
model and `model.kwargs` sets any of them (the rest take their defaults), so
`build_models(config.model)` is `my_gan(ctx, **config.model.kwargs)`.

The generic families to build from are in `gan_jax.models.blocks`; the
built-in architectures (`dcgan`, `mlp`) register when this package is imported.
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable, NamedTuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

from gan_jax import config as config_lib, hardware, layers
from gan_jax.errors import ConfigError
from gan_jax.models.blocks import (NORMS, UPSAMPLES, Conv, ConvDiscriminator,  # noqa: F401
                                   ConvGenerator, MLPDiscriminator, MLPGenerator, activate,
                                   check_choice, dcgan_init, normalise, to_pixel_range,
                                   upsample_layer)
from gan_jax.registry import Registry

MODELS = Registry("model")


def register(name: str, conditional: bool = False) -> Callable:
  """`@models.register("name")` over `fn(ctx, *, kwargs...) -> (generator,
  discriminator)`; `conditional=True` where the pair is class-conditional
  when ctx.num_classes > 0 (see gan_jax.models.conditional)."""
  def decorate(fn):
    fn.conditional = conditional
    return MODELS.register(name)(fn)
  return decorate

COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


class ModelContext(NamedTuple):
  """What every model is built for (the config's common model keys)."""
  image_shape: tuple[int, int, int]          # (H, W, C)
  latent_dim: int
  pixel_range: tuple[float, float] = (-1.0, 1.0)
  axis_name: str | None = None               # 'data' inside the data-parallel step
  num_classes: int = 0                       # > 0: class-conditional (gan_jax.models.conditional)


def image_shape(model_config: Any) -> tuple[int, int, int]:
  return (model_config["image_size"], model_config["image_size"], model_config["channels"])


def _kwarg_params(fn: Callable) -> tuple[dict[str, inspect.Parameter], bool]:
  """The model's keyword-only parameters, and whether it also takes **kwargs."""
  params = inspect.signature(fn).parameters.values()
  return ({p.name: p for p in params if p.kind is p.KEYWORD_ONLY},
          any(p.kind is p.VAR_KEYWORD for p in params))


def _describe(params: dict[str, inspect.Parameter]) -> str:
  return ", ".join(k if p.default is p.empty else f"{k}={p.default!r}"
                   for k, p in params.items()) or "none"


def model_kwargs(model_config: Any) -> dict[str, Any]:
  """The full kwargs of `model_config.name`: its declared defaults overlaid
  with `model_config.kwargs`."""
  name = model_config["name"]
  params, takes_any = _kwarg_params(MODELS.lookup(name, "model.name"))
  # config.json gives lists where the experiment had tuples.
  given = {k: v.to_dict() if isinstance(v, ml_collections.ConfigDict) else
           tuple(v) if isinstance(v, list) else v
           for k, v in (model_config.get("kwargs") or {}).items()}
  unknown = [k for k in given if k not in params]
  if unknown and not takes_any:
    raise ConfigError(f"model {name!r} takes no "
                      f"{', '.join('model.kwargs.' + k for k in unknown)}; its kwargs "
                      f"(with defaults): {_describe(params)}")
  kwargs = {k: p.default for k, p in params.items() if p.default is not p.empty}
  kwargs.update(given)
  missing = [k for k in params if k not in kwargs]
  if missing:
    raise ConfigError(f"model {name!r} needs {', '.join('model.kwargs.' + k for k in missing)}")
  return kwargs


def _check_common_keys(model_config: Any) -> None:
  # A model's own arguments set beside the common keys (the flat config of
  # before model.kwargs) would otherwise be silently ignored.
  common = config_lib.common_model_keys()
  for key in model_config.keys():
    if key not in common:
      raise ConfigError(f"model.{key} is not a common model key ({', '.join(sorted(common))}); "
                        f"a model's own arguments go in model.kwargs: model.kwargs.{key}")


def _with_precision(module: nn.Module, dtype: str, lowering: str, name: str,
                    auto_dtype: bool = False) -> nn.Module:
  # Mixed precision: params stay float32; convs and matmuls run in `dtype`
  # (asked for as 'auto': float32 for a module that cannot compute in another).
  # The lowering picks the layers' implementation (gan_jax.layers).
  fields = {f.name for f in dataclasses.fields(module)}
  if "dtype" in fields:
    module = module.clone(dtype=COMPUTE_DTYPES[dtype])
  elif dtype != "float32" and not auto_dtype:
    raise ConfigError(f"model.dtype={dtype!r}: model {name!r}'s {type(module).__name__} has "
                      f"no `dtype` field to compute in; use model.dtype='float32'")
  if "lowering" in fields:
    module = module.clone(lowering=lowering)
  elif lowering != "auto":
    raise ConfigError(f"model.lowering={lowering!r}: model {name!r}'s {type(module).__name__} "
                      f"has no `lowering` field; use model.lowering='auto'")
  return module


def build_models(model_config: Any, pixel_range=(-1.0, 1.0),
                 axis_name: str | None = None) -> tuple[nn.Module, nn.Module]:
  """Returns (generator, discriminator) for `model_config.name`, built with
  its kwargs (`model_kwargs`)."""
  name = model_config["name"]
  fn = MODELS.lookup(name, "model.name")
  _check_common_keys(model_config)
  kwargs = model_kwargs(model_config)
  dtype = model_config.get("dtype", "float32")
  auto = dtype == "auto"
  if auto:
    dtype = hardware.auto_dtype()[0]
  if dtype not in COMPUTE_DTYPES:
    raise ConfigError(f"model.dtype must be one of {sorted(COMPUTE_DTYPES)} or 'auto', got "
                      f"{dtype!r}")
  lowering = model_config.get("lowering", "auto")
  if lowering not in layers.LOWERINGS:
    raise ConfigError(f"model.lowering must be one of {layers.LOWERINGS}, got {lowering!r}")
  num_classes = model_config.get("num_classes", 0)
  if num_classes < 0:
    raise ConfigError(f"model.num_classes must be >= 0 (0 = unconditional), got {num_classes}")
  ctx = ModelContext(image_shape(model_config), model_config["latent_dim"],
                     tuple(float(v) for v in pixel_range), axis_name, num_classes)
  g, d = fn(ctx, **kwargs)
  if num_classes:
    for m in (g, d):
      if "labels" not in inspect.signature(type(m).__call__).parameters:
        raise ConfigError(f"model.num_classes={num_classes}: model {name!r}'s "
                          f"{type(m).__name__} is not class-conditional (its __call__ takes "
                          f"no labels); conditional models: {', '.join(conditional_models())}")
  return tuple(_with_precision(m, dtype, lowering, name, auto) for m in (g, d))


def conditional_models() -> list[str]:
  """The registered models that are class-conditional when model.num_classes > 0."""
  return sorted(n for n, fn in MODELS.items() if getattr(fn, "conditional", False))


# The built-in architectures register with `register` above.
from gan_jax.models import dcgan, mlp, resnet  # noqa: E402,F401
