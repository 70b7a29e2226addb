"""Generators and discriminators (Flax linen), looked up by name.

Two generic families cover the seed systems: convolutional (`ConvGenerator`,
`ConvDiscriminator`, a stack of `Conv` layer specs) and fully connected
(`MLPGenerator`, `MLPDiscriminator`). A named architecture in `MODELS` is a
function of the model config that returns the configured pair, so each
experiment's architecture reads as a list of layers.

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


NORMS = ("batch", "layer", "none")


def normalise(x: jax.Array, kind: str, train: bool, axis_name: str | None) -> jax.Array:
  if kind == "batch":
    return batch_norm(train, axis_name)(x)
  if kind == "layer":
    return nn.LayerNorm(epsilon=1e-5)(x)
  return x


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


def _dot(dtype):
  """Dense's matmul in the compute dtype (float32: flax's own)."""
  return None if dtype is None else layers.dense_dot_general(dtype)


def _apply_conv(spec: Conv, x, *, train, axis_name, upsample="phase", spectral_norm=False,
                dtype=None):
  use_bias = spec.norm == "none" if spec.bias is None else spec.bias
  cls = upsample_layer(upsample) if spec.transpose else layers.Conv
  conv = cls(spec.features, (spec.kernel, spec.kernel), (spec.stride, spec.stride), "SAME",
             use_bias=use_bias, kernel_init=dcgan_init, dtype=dtype)
  x = _apply_layer(conv, x, train, spectral_norm)
  x = activate(normalise(x, spec.norm, train, axis_name), spec.act, spec.slope)
  if spec.dropout:
    x = nn.Dropout(spec.dropout, deterministic=not train)(x)
  return x


def to_pixel_range(x: jax.Array, pixel_range) -> jax.Array:
  """tanh output in [-1, 1] -> [lo, hi]."""
  lo, hi = pixel_range
  return x if (lo, hi) == (-1.0, 1.0) else lo + (x + 1.0) * (0.5 * (hi - lo))


class ConvGenerator(nn.Module):
  """z -> Dense to (h, w, f) [-> norm -> act] -> conv layers; the last one is
  the tanh output layer, scaled to `pixel_range`."""
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

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
    chex.assert_shape(z, (None, self.latent_dim))
    x = _apply_layer(nn.Dense(int(np.prod(self.start)), use_bias=self.project_bias,
                           kernel_init=dcgan_init, dot_general=_dot(self.dtype)), z, train)
    x = x.reshape(z.shape[0], *self.start)
    x = activate(normalise(x, self.project_norm, train, self.axis_name),
                 self.project_act, self.project_slope)
    for spec in self.layers:
      x = _apply_conv(spec, x, train=train, axis_name=self.axis_name, upsample=self.upsample,
                      dtype=self.dtype)
    chex.assert_shape(x, (z.shape[0], *self.out_shape))
    return to_pixel_range(x, self.pixel_range)


class ConvDiscriminator(nn.Module):
  """x -> conv layers -> flatten [-> dropout] -> dense 1 logit."""
  in_shape: tuple[int, int, int]
  layers: tuple[Conv, ...]
  head_dropout: float = 0.0
  spectral_norm: bool = False
  axis_name: str | None = None
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    chex.assert_shape(x, (None, *self.in_shape))
    h = x
    for spec in self.layers:
      h = _apply_conv(spec, h, train=train, axis_name=self.axis_name,
                      spectral_norm=self.spectral_norm, dtype=self.dtype)
    h = h.reshape(h.shape[0], -1)
    if self.head_dropout:
      h = nn.Dropout(self.head_dropout, deterministic=not train)(h)
    return _dense_logit(h, train, self.spectral_norm, x.shape[0])


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

  @nn.compact
  def __call__(self, z: jax.Array, train: bool = True) -> jax.Array:
    chex.assert_shape(z, (None, self.latent_dim))
    h = z
    for width in self.hidden:
      h = activate(_apply_layer(nn.Dense(width, dot_general=_dot(self.dtype)), h, train),
                   self.act)
    x = _apply_layer(nn.Dense(int(np.prod(self.out_shape)), dot_general=_dot(self.dtype)), h,
                     train)
    x = jnp.tanh(x).reshape(z.shape[0], *self.out_shape)
    return to_pixel_range(x, self.pixel_range)


class MLPDiscriminator(nn.Module):
  """x -> flatten -> [Dense -> LeakyReLU] per hidden width -> dense 1 logit."""
  in_shape: tuple[int, int, int]
  hidden: tuple[int, ...]
  slope: float = 0.2
  spectral_norm: bool = False
  dtype: Any = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = True) -> jax.Array:
    chex.assert_shape(x, (None, *self.in_shape))
    h = x.reshape(x.shape[0], -1)
    for width in self.hidden:
      h = nn.leaky_relu(_apply_layer(nn.Dense(width, dot_general=_dot(self.dtype)), h, train,
                                  self.spectral_norm), self.slope)
    return _dense_logit(h, train, self.spectral_norm, x.shape[0])


# --- Named architectures: model config -> (generator, discriminator) --------

def _check_size(mc, sizes):
  if mc.image_size not in sizes:
    raise ConfigError(f"model '{mc.name}' supports model.image_size "
                      f"{' or '.join(map(str, sizes))}, got {mc.image_size}")


def dcgan28(mc, pixel_range, axis_name):
  """The default DCGAN-28: z -> 7x7xF -> [BN ReLU] up 14x14xF/2 -> [BN ReLU]
  up 28x28xC -> tanh; D conv F (k4 s2) LReLU -> conv 2F (k4 s2) [d_norm]
  LReLU -> dense 1."""
  _check_size(mc, (28,))
  f, c = mc.g_features, mc.channels
  g = ConvGenerator(
      mc.latent_dim, (7, 7, f),
      (Conv(f // 2, 4, 2, mc.g_norm, "relu", transpose=True),
       Conv(c, 4, 2, "none", "tanh", transpose=True)),
      (28, 28, c), project_norm=mc.g_norm, project_act="relu",
      pixel_range=pixel_range, upsample=mc.upsample, axis_name=axis_name)
  d = ConvDiscriminator(
      (28, 28, c),
      (Conv(mc.d_features, 4, 2, "none"), Conv(2 * mc.d_features, 4, 2, mc.d_norm)),
      spectral_norm=mc.d_spectral_norm, axis_name=axis_name)
  return g, d


def dcgan_faces(mc, pixel_range, axis_name):
  """The CelebA face DCGAN (28x28, or 64x64): z -> s/2^n x s/2^n x F [BN
  LReLU] -> n transposed convs (k5 s2, halving features) [BN LReLU] ->
  transposed conv C (k5 s1) tanh, n = 2 at 28 and 4 at 64; D three convs
  F, 2F, 4F (k5 s2) with LReLU(0.2) and BN after the first -> dense 1."""
  _check_size(mc, (28, 64))
  f, c, s = mc.g_features, mc.channels, mc.image_size
  n = 2 if s == 28 else 4
  ups = tuple(Conv(f // 2 ** (i + 1), 5, 2, mc.g_norm, "lrelu", transpose=True) for i in range(n))
  g = ConvGenerator(
      mc.latent_dim, (s >> n, s >> n, f), ups + (Conv(c, 5, 1, "none", "tanh", transpose=True),),
      (s, s, c), project_norm=mc.g_norm, project_act="lrelu",
      pixel_range=pixel_range, upsample=mc.upsample, axis_name=axis_name)
  fd = mc.d_features
  d = ConvDiscriminator(
      (s, s, c),
      (Conv(fd, 5, 2, "none"), Conv(2 * fd, 5, 2, mc.d_norm), Conv(4 * fd, 5, 2, mc.d_norm)),
      spectral_norm=mc.d_spectral_norm, axis_name=axis_name)
  return g, d


def dcgan64(mc, pixel_range, axis_name):
  """The colour-photo DCGAN at 64x64: z -> Dense 8x8xF -> transposed convs
  F/2, F/4, F/8 (k4 s2) [g_norm] ReLU -> conv C (k4 s1) tanh; D conv Fd (k5 s2)
  BN LReLU(0.2) -> conv 2Fd (k5 s2) BN LReLU(0.2) -> flatten -> dropout 0.3 ->
  dense 1."""
  _check_size(mc, (64,))
  f, c = mc.g_features, mc.channels
  ups = tuple(Conv(f // 2 ** (i + 1), 4, 2, mc.g_norm, "relu", transpose=True) for i in range(3))
  g = ConvGenerator(
      mc.latent_dim, (8, 8, f), ups + (Conv(c, 4, 1, "none", "tanh"),), (64, 64, c),
      project_norm="none", project_act="none", project_bias=True,
      pixel_range=pixel_range, upsample=mc.upsample, axis_name=axis_name)
  fd = mc.d_features
  d = ConvDiscriminator(
      (64, 64, c), (Conv(fd, 5, 2, mc.d_norm), Conv(2 * fd, 5, 2, mc.d_norm)),
      head_dropout=mc.d_dropout, spectral_norm=mc.d_spectral_norm, axis_name=axis_name)
  return g, d


def lsgan32(mc, pixel_range, axis_name):
  """The least-squares GAN at 32x32 (TensorFlow's DCGAN tutorial layers):
  z -> Dense 8x8xF (no bias) BN LReLU -> transposed conv F/2 (k5 s1) -> F/4
  (k5 s2) -> C (k5 s2, tanh), BN + LReLU between, no biases; D conv Fd (k5 s2)
  LReLU dropout -> conv 2Fd (k5 s2) LReLU dropout -> dense 1 (linear)."""
  _check_size(mc, (32,))
  f, c, fd, p = mc.g_features, mc.channels, mc.d_features, mc.d_dropout
  g = ConvGenerator(
      mc.latent_dim, (8, 8, f),
      (Conv(f // 2, 5, 1, mc.g_norm, "lrelu", 0.3, transpose=True, bias=False),
       Conv(f // 4, 5, 2, mc.g_norm, "lrelu", 0.3, transpose=True, bias=False),
       Conv(c, 5, 2, "none", "tanh", transpose=True, bias=False)),
      (32, 32, c), project_norm=mc.g_norm, project_act="lrelu", project_slope=0.3,
      pixel_range=pixel_range, upsample=mc.upsample, axis_name=axis_name)
  d = ConvDiscriminator(
      (32, 32, c),
      (Conv(fd, 5, 2, mc.d_norm, "lrelu", 0.3, p, bias=True),
       Conv(2 * fd, 5, 2, mc.d_norm, "lrelu", 0.3, p, bias=True)),
      spectral_norm=mc.d_spectral_norm, axis_name=axis_name)
  return g, d


def mlp(mc, pixel_range, axis_name):
  """Fully connected GAN: G z -> g_hidden (ReLU) -> image (tanh); D image ->
  d_hidden (LReLU d_slope) -> 1."""
  shape = (mc.image_size, mc.image_size, mc.channels)
  g = MLPGenerator(mc.latent_dim, tuple(mc.g_hidden), shape, pixel_range=pixel_range)
  d = MLPDiscriminator(shape, tuple(mc.d_hidden), slope=mc.d_slope,
                       spectral_norm=mc.d_spectral_norm)
  return g, d


MODELS: dict[str, Callable[[Any, tuple[float, float], str | None], tuple[nn.Module, nn.Module]]] = {
    "dcgan28": dcgan28,
    "dcgan_faces": dcgan_faces,
    "dcgan64": dcgan64,
    "lsgan32": lsgan32,
    "mlp": mlp,
}


def image_shape(model_config: Any) -> tuple[int, int, int]:
  return (model_config.image_size, model_config.image_size, model_config.channels)


COMPUTE_DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}


def build_models(model_config: Any, pixel_range=(-1.0, 1.0),
                 axis_name: str | None = None) -> tuple[nn.Module, nn.Module]:
  """Returns (generator, discriminator) for `model_config.name`."""
  if model_config.name not in MODELS:
    raise ConfigError(f"unknown model {model_config.name!r}; registered: {sorted(MODELS)}")
  for key in ("g_norm", "d_norm"):
    if model_config.get(key, "batch") not in NORMS:
      raise ConfigError(f"model.{key} must be one of {NORMS}, got {model_config[key]!r}")
  dtype = model_config.get("dtype", "float32")
  if dtype not in COMPUTE_DTYPES:
    raise ConfigError(f"model.dtype must be one of {sorted(COMPUTE_DTYPES)}, got {dtype!r}")
  pixel_range = tuple(float(v) for v in pixel_range)
  g, d = MODELS[model_config.name](model_config, pixel_range, axis_name)
  # Mixed precision: params stay float32; convs and matmuls run in `dtype`.
  return g.clone(dtype=COMPUTE_DTYPES[dtype]), d.clone(dtype=COMPUTE_DTYPES[dtype])
