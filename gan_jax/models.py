"""Generators and discriminators (Flax linen), looked up by name.

A model family registers a (generator, discriminator) pair under one name;
`build_models(config.model)` returns both, configured. BatchNorm statistics
live in the `batch_stats` collection; inside the data-parallel step the
modules get `axis_name='data'`, so BatchNorm normalises with statistics of
the global batch (synchronised BatchNorm), and N devices compute what one
device computes on the same global batch.
"""
from __future__ import annotations

from typing import Any, Callable

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from gan_jax import layers
from gan_jax.config import ConfigError

# DCGAN (Radford et al. 2016): conv and dense weights ~ N(0, 0.02),
# BatchNorm scale ~ N(1, 0.02), biases zero.
dcgan_init = nn.initializers.normal(0.02)


def _bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def batch_norm(train: bool, axis_name: str | None) -> nn.BatchNorm:
  # momentum 0.9 == PyTorch's BatchNorm momentum 0.1; eps as in PyTorch.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      scale_init=_bn_scale_init, axis_name=axis_name)


def upsample_layer(kind: str) -> Callable[..., nn.Module]:
  """Stride-2 transposed conv: 'phase' is the fast exact layer, 'transpose'
  is flax's nn.ConvTranspose (same parameters, same output)."""
  if kind == "phase":
    return layers.ConvTranspose
  if kind == "transpose":
    return nn.ConvTranspose
  raise ConfigError(f"unknown upsample kind {kind!r}; valid: 'phase', 'transpose'")


class DCGAN28Generator(nn.Module):
  """z -> Dense 7x7xF -> [BN ReLU] up 14x14xF/2 -> [BN ReLU] up 28x28xC -> tanh."""
  latent_dim: int = 100
  features: int = 256
  out_channels: int = 1
  upsample: str = "phase"
  axis_name: str | None = None

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
    chex.assert_shape(z, (None, self.latent_dim))
    up = upsample_layer(self.upsample)
    f = self.features
    x = nn.Dense(7 * 7 * f, use_bias=False, kernel_init=dcgan_init)(z)
    x = x.reshape(z.shape[0], 7, 7, f)
    x = nn.relu(batch_norm(train, self.axis_name)(x))
    x = up(f // 2, (4, 4), (2, 2), "SAME", use_bias=False, kernel_init=dcgan_init)(x)
    x = nn.relu(batch_norm(train, self.axis_name)(x))
    x = up(self.out_channels, (4, 4), (2, 2), "SAME", kernel_init=dcgan_init)(x)
    x = jnp.tanh(x)
    chex.assert_shape(x, (z.shape[0], 28, 28, self.out_channels))
    return x


class DCGAN28Discriminator(nn.Module):
  """x -> conv F (k4 s2) LReLU(0.2) -> conv 2F (k4 s2) BN LReLU(0.2) -> dense 1 logit."""
  features: int = 64
  in_channels: int = 1
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    chex.assert_shape(x, (None, 28, 28, self.in_channels))
    f = self.features
    h = nn.Conv(f, (4, 4), (2, 2), "SAME", kernel_init=dcgan_init)(x)
    h = nn.leaky_relu(h, 0.2)
    h = nn.Conv(2 * f, (4, 4), (2, 2), "SAME", use_bias=False, kernel_init=dcgan_init)(h)
    h = nn.leaky_relu(batch_norm(train, self.axis_name)(h), 0.2)
    logits = nn.Dense(1, kernel_init=dcgan_init)(h.reshape(h.shape[0], -1))
    chex.assert_shape(logits, (x.shape[0], 1))
    return logits[:, 0]


# name -> (generator class, discriminator class, image height = width)
MODELS: dict[str, tuple[type[nn.Module], type[nn.Module], int]] = {
    "dcgan28": (DCGAN28Generator, DCGAN28Discriminator, 28),
}


def _family(name: str):
  if name not in MODELS:
    raise ConfigError(f"unknown model {name!r}; registered: {sorted(MODELS)}")
  return MODELS[name]


def image_shape(model_config: Any) -> tuple[int, int, int]:
  size = _family(model_config.name)[2]
  return (size, size, model_config.channels)


def build_models(model_config: Any, axis_name: str | None = None) -> tuple[nn.Module, nn.Module]:
  """Returns (generator, discriminator) for `model_config.name`."""
  g_cls, d_cls, _ = _family(model_config.name)
  g = g_cls(latent_dim=model_config.latent_dim, features=model_config.g_features,
            out_channels=model_config.channels, upsample=model_config.upsample,
            axis_name=axis_name)
  d = d_cls(features=model_config.d_features, in_channels=model_config.channels,
            axis_name=axis_name)
  return g, d
