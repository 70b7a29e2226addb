"""The generic generator and discriminator families (Flax linen) that the
named models are built from.

Convolutional (`ConvGenerator`, `ConvDiscriminator`, a stack of `Conv` layer
specs) and fully connected (`MLPGenerator`, `MLPDiscriminator`), so each
registered architecture reads as a list of layers.

BatchNorm statistics (and spectral-norm power-iteration vectors) live in the
`batch_stats` collection. Inside the data-parallel step the modules get
`axis_name='data'`, so BatchNorm normalises with the statistics of the global
batch (synchronised BatchNorm). Generators end in tanh, scaled to the data's
pixel range, so real and generated images always share a range.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gan_jax import layers
from gan_jax.errors import ConfigError
from gan_jax.models import conditional

# DCGAN (Radford et al. 2016): conv and dense weights ~ N(0, 0.02),
# BatchNorm scale ~ N(1, 0.02), biases zero.
dcgan_init = nn.initializers.normal(0.02)


def _bn_scale_init(key, shape, dtype=jnp.float32):
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def batch_norm(train: bool, axis_name: str | None) -> nn.BatchNorm:
  # momentum 0.9 == PyTorch's BatchNorm momentum 0.1; eps as in PyTorch.
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      scale_init=_bn_scale_init, axis_name=axis_name)


NORMS = ("batch", "layer", "none")
UPSAMPLES = ("phase", "transpose")


def check_choice(key: str, value: Any, valid: tuple) -> None:
  """A model kwarg that names one of `valid`, checked when the model is built
  (its error names the config key, not a layer deep in the trace)."""
  if value not in valid:
    raise ConfigError(f"model.kwargs.{key} must be one of {valid}, got {value!r}")


def normalise(x: jax.Array, kind: str, train: bool, axis_name: str | None,
              labels: jax.Array | None = None, num_classes: int = 0,
              embed_dim: int = 0) -> jax.Array:
  """`kind` normalisation; BatchNorm is class-conditional where labels are
  given (conditional.ConditionalBatchNorm with `embed_dim`)."""
  if kind == "batch" and labels is not None:
    return conditional.ConditionalBatchNorm(num_classes, axis_name, embed_dim=embed_dim)(
        x, labels, train)
  if kind == "batch":
    return batch_norm(train, axis_name)(x)
  if kind == "layer":
    return nn.LayerNorm(epsilon=1e-5)(x)
  if kind == "none":
    return x
  raise ConfigError(f"unknown norm {kind!r}; valid: {', '.join(NORMS)}")


def activate(x: jax.Array, kind: str, slope: float = 0.2) -> jax.Array:
  if kind == "relu":
    return nn.relu(x)
  if kind == "lrelu":
    return nn.leaky_relu(x, slope)
  if kind == "tanh":
    return jnp.tanh(x)
  if kind == "none":
    return x
  raise ConfigError(f"unknown activation {kind!r}; valid: relu, lrelu, tanh, none")


def upsample_layer(kind: str) -> Callable[..., nn.Module]:
  """Transposed conv: 'phase' is the fast exact layer, 'transpose' is flax's
  nn.ConvTranspose (same parameters, same output)."""
  if kind == "phase":
    return layers.ConvTranspose
  if kind == "transpose":
    return nn.ConvTranspose
  raise ConfigError(f"unknown upsample kind {kind!r}; valid: 'phase', 'transpose'")


class Conv(NamedTuple):
  """One conv layer and what follows it: conv -> norm -> activation -> dropout.
  The conv has a bias only where no normalisation follows (BatchNorm would
  cancel it), unless `bias` says otherwise."""
  features: int
  kernel: int
  stride: int = 2
  norm: str = "batch"
  act: str = "lrelu"
  slope: float = 0.2
  dropout: float = 0.0
  transpose: bool = False
  bias: bool | None = None


def _apply_layer(layer: nn.Module, x: jax.Array, train: bool,
                 spectral_norm: bool = False) -> jax.Array:
  """`layer(x)` in float32, with its weights spectrally normalised when `spectral_norm`
  (the power iteration's vectors update in training only). Mixed precision:
  a layer may multiply in bfloat16 (its `dtype`); what follows it (norms,
  activations, losses) always sees float32."""
  y = nn.SpectralNorm(layer)(x, update_stats=train) if spectral_norm else layer(x)
  return y.astype(jnp.float32)


def _dot(dtype, lowering="auto"):
  """Dense's matmul in the compute dtype (float32: flax's own)."""
  return None if dtype is None else layers.dense_dot_general(dtype, lowering)


def _apply_conv(spec: Conv, x, *, train, axis_name, upsample="phase", spectral_norm=False,
                dtype=None, lowering="auto", labels=None, num_classes=0, embed_dim=0):
  use_bias = spec.norm == "none" if spec.bias is None else spec.bias
  cls = upsample_layer(upsample) if spec.transpose else layers.Conv
  kwargs = {"lowering": lowering} if cls in (layers.Conv, layers.ConvTranspose) else {}
  conv = cls(spec.features, (spec.kernel, spec.kernel), (spec.stride, spec.stride), "SAME",
             use_bias=use_bias, kernel_init=dcgan_init, dtype=dtype, **kwargs)
  x = _apply_layer(conv, x, train, spectral_norm)
  x = activate(normalise(x, spec.norm, train, axis_name, labels, num_classes, embed_dim),
               spec.act, spec.slope)
  if spec.dropout:
    x = nn.Dropout(spec.dropout, deterministic=not train)(x)
  return x


def to_pixel_range(x: jax.Array, pixel_range) -> jax.Array:
  """tanh output in [-1, 1] -> [lo, hi]."""
  lo, hi = pixel_range
  return x if (lo, hi) == (-1.0, 1.0) else lo + (x + 1.0) * (0.5 * (hi - lo))


class ConvGenerator(nn.Module):
  """z -> Dense to (h, w, f) [-> norm -> act] -> conv layers; the last one is
  the tanh output layer, scaled to `pixel_range`. Class-conditional when
  `num_classes` > 0: every BatchNorm per class (`cond` 'bn': a table per
  class; 'bn_shared': BigGAN's linear map of an `embed_dim` class
  embedding) or a label embedding concatenated to z ('concat')."""
  latent_dim: int
  start: tuple[int, int, int]
  layers: tuple[Conv, ...]
  out_shape: tuple[int, int, int]
  project_norm: str = "batch"
  project_act: str = "relu"
  project_slope: float = 0.2
  project_bias: bool = False
  pixel_range: tuple[float, float] = (-1.0, 1.0)
  upsample: str = "phase"
  axis_name: str | None = None
  dtype: Any = None   # compute dtype of convs and matmuls (None: float32)
  lowering: str = "auto"   # gan_jax.layers: per backend, or 'native' / 'cpu' forced
  num_classes: int = 0
  cond: str = "bn"         # conditional.G_CONDITIONINGS
  embed_dim: int = 50      # the label embedding's width ('concat', 'bn_shared')

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None,
               train: bool = True) -> jax.Array:
    chex.assert_shape(z, (None, self.latent_dim))
    bn_labels, bn_embed = None, self.embed_dim if self.cond == "bn_shared" else 0
    if self.num_classes:
      conditional.check_labels(labels, z.shape[0], self.num_classes, "the generator")
      if self.cond == "concat":
        z = conditional.label_concat(z, labels, self.num_classes, self.embed_dim)
      else:
        bn_labels = labels
    x = _apply_layer(nn.Dense(int(np.prod(self.start)), use_bias=self.project_bias,
                           kernel_init=dcgan_init, dot_general=_dot(self.dtype, self.lowering)),
                     z, train)
    x = x.reshape(z.shape[0], *self.start)
    x = activate(normalise(x, self.project_norm, train, self.axis_name, bn_labels,
                           self.num_classes, bn_embed), self.project_act, self.project_slope)
    for spec in self.layers:
      x = _apply_conv(spec, x, train=train, axis_name=self.axis_name, upsample=self.upsample,
                      dtype=self.dtype, lowering=self.lowering, labels=bn_labels,
                      num_classes=self.num_classes, embed_dim=bn_embed)
    chex.assert_shape(x, (z.shape[0], *self.out_shape))
    return to_pixel_range(x, self.pixel_range)


class ConvDiscriminator(nn.Module):
  """x -> conv layers -> flatten [-> dropout] -> dense 1 logit; class-
  conditional when `num_classes` > 0, with the `head` of
  conditional.D_HEADS on the flattened features."""
  in_shape: tuple[int, int, int]
  layers: tuple[Conv, ...]
  head_dropout: float = 0.0
  spectral_norm: bool = False
  axis_name: str | None = None
  dtype: Any = None
  lowering: str = "auto"
  num_classes: int = 0
  head: str = "projection"

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, train: bool = True):
    chex.assert_shape(x, (None, *self.in_shape))
    h = x
    for spec in self.layers:
      h = _apply_conv(spec, h, train=train, axis_name=self.axis_name,
                      spectral_norm=self.spectral_norm, dtype=self.dtype,
                      lowering=self.lowering)
    h = h.reshape(h.shape[0], -1)
    if self.head_dropout:
      h = nn.Dropout(self.head_dropout, deterministic=not train)(h)
    logits = _dense_logit(h, train, self.spectral_norm, x.shape[0])
    return conditional.d_output(logits, h, labels, num_classes=self.num_classes,
                                head=self.head, spectral_norm=self.spectral_norm, train=train)


def _dense_logit(h, train, spectral_norm, batch):
  logits = _apply_layer(nn.Dense(1, kernel_init=dcgan_init), h, train, spectral_norm)
  chex.assert_shape(logits, (batch, 1))
  return logits[:, 0]


class MLPGenerator(nn.Module):
  """z -> [Dense -> act] per hidden width -> Dense to the image -> tanh."""
  latent_dim: int
  hidden: tuple[int, ...]
  out_shape: tuple[int, int, int]
  act: str = "relu"
  pixel_range: tuple[float, float] = (-1.0, 1.0)
  dtype: Any = None
  lowering: str = "auto"

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
    chex.assert_shape(z, (None, self.latent_dim))
    h = z
    dot = _dot(self.dtype, self.lowering)
    for width in self.hidden:
      h = activate(_apply_layer(nn.Dense(width, dot_general=dot), h, train), self.act)
    x = _apply_layer(nn.Dense(int(np.prod(self.out_shape)), dot_general=dot), h, train)
    x = jnp.tanh(x).reshape(z.shape[0], *self.out_shape)
    return to_pixel_range(x, self.pixel_range)


class MLPDiscriminator(nn.Module):
  """x -> flatten -> [Dense -> LeakyReLU] per hidden width -> dense 1 logit."""
  in_shape: tuple[int, int, int]
  hidden: tuple[int, ...]
  slope: float = 0.2
  spectral_norm: bool = False
  dtype: Any = None
  lowering: str = "auto"

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    chex.assert_shape(x, (None, *self.in_shape))
    h = x.reshape(x.shape[0], -1)
    dot = _dot(self.dtype, self.lowering)
    for width in self.hidden:
      h = nn.leaky_relu(_apply_layer(nn.Dense(width, dot_general=dot), h, train,
                                  self.spectral_norm), self.slope)
    return _dense_logit(h, train, self.spectral_norm, x.shape[0])
