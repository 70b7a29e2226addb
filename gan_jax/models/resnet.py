"""The SNGAN ResNet generator and discriminator, a registered model.

Miyato et al. 2018 ("Spectral Normalization for Generative Adversarial
Networks", appendix: the CIFAR-10 ResNet) and, class-conditional, Miyato &
Koyama 2018 ("cGANs with Projection Discriminator"): conditional BatchNorm in
G's blocks, the projection term in D. Layer for layer as the authors' Chainer
code (sngan_projection: gen_models/resnet_32.py, dis_models/snresnet_32.py):

  G: z -> Dense 4x4xCh -> n x ResBlock up (n = 3 at 32x32, 4 at 64x64)
     -> BN -> ReLU -> conv3x3 C -> tanh.
     ResBlock up: BN ReLU up2 conv3x3 BN ReLU conv3x3  +  up2 conv1x1.
  D: OptimizedBlock down (conv3x3 ReLU conv3x3 avgpool  +  avgpool conv1x1)
     -> ResBlock down (+1 more at 64x64) -> 2 x ResBlock (no downsampling,
     identity shortcut) -> ReLU -> sum over H, W -> h -> Dense 1 (no bias)
     (+ <embed(y), h> for the projection D; gan_jax.models.conditional).
     ResBlock: ReLU conv3x3 ReLU conv3x3 [avgpool]  +  [conv1x1 avgpool].
     At 32x32 the resolutions are 32 -> 16 -> 8 -> 8 -> 8.

Init: Glorot-uniform with gain sqrt(2) on the residual 3x3 convs, gain 1 on
the shortcuts, the dense layers and the output conv; biases zero (every conv
and G's dense have one, D's output dense none); BatchNorm gain 1. Every D
layer spectrally normalised (one power iteration per training application,
the vectors in `batch_stats`); G's optionally.

Upsampling is nearest-neighbour, downsampling 2x2 average pooling. A 1x1
conv commutes with both (per-pixel affine), so the shortcuts apply it at the
lower resolution: the same function as the reference's order, 4x cheaper.
"""
from __future__ import annotations

import math
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from gan_jax import layers
from gan_jax.errors import ConfigError
from gan_jax.models import ModelContext, conditional, register
from gan_jax.models.blocks import _apply_layer, _dot, to_pixel_range

SIZES = (28, 32, 64)
# 28x28 images (MNIST-style) are padded to 32x32: G draws 32x32 and keeps the
# centre, D pads its input with the background (the pixel range's low end).
PADDED = {28: 32}


def glorot(gain: float):
  """Glorot (Xavier) uniform scaled by `gain`: limit gain * sqrt(6 / (fan_in + fan_out))."""
  return nn.initializers.variance_scaling(gain ** 2, "fan_avg", "uniform")


RESIDUAL_INIT = glorot(math.sqrt(2.0))
SHORTCUT_INIT = glorot(1.0)   # also the dense layers and G's output conv


def upsample2(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 (NHWC)."""
  n, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None], (n, h, 2, w, 2, c)).reshape(n, 2 * h, 2 * w, c)


def avgpool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling, stride 2 (NHWC)."""
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _conv(m: nn.Module, x, features: int, kernel: int, init, train: bool, name: str):
  """A stride-1 SAME conv with bias in module `m`'s compute dtype and lowering,
  spectrally normalised when `m.spectral_norm`."""
  conv = layers.Conv(features, (kernel, kernel), 1, "SAME", kernel_init=init, dtype=m.dtype,
                     lowering=m.lowering, name=name)
  return _apply_layer(conv, x, train, m.spectral_norm)


def _dense(m: nn.Module, x, features: int, train: bool, name: str, use_bias: bool = True):
  dense = nn.Dense(features, use_bias=use_bias, kernel_init=SHORTCUT_INIT,
                   dot_general=_dot(m.dtype, m.lowering), name=name)
  return _apply_layer(dense, x, train, m.spectral_norm)


def _batch_norm(m: nn.Module, x, labels, train: bool, name: str):
  """BatchNorm (synchronised over `m.axis_name`), conditional on the labels
  when `m.num_classes`; PyTorch's momentum and eps, gain 1 and bias 0."""
  if m.num_classes:
    return conditional.ConditionalBatchNorm(m.num_classes, m.axis_name, embed_dim=m.embed_dim,
                                            name=name)(x, labels, train)
  return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      axis_name=m.axis_name, name=name)(x)


class GBlock(nn.Module):
  """ResBlock up: BN ReLU up2 conv3x3 BN ReLU conv3x3, plus up2 conv1x1."""
  features: int
  num_classes: int = 0            # > 0: conditional BatchNorm
  spectral_norm: bool = False
  axis_name: str | None = None
  dtype: Any = None
  lowering: str = "auto"
  embed_dim: int = 0              # ConditionalBatchNorm's shared class embedding (0: tables)

  @nn.compact
  def __call__(self, x, labels, train: bool):
    h = nn.relu(_batch_norm(self, x, labels, train, "b1"))
    h = _conv(self, upsample2(h), self.features, 3, RESIDUAL_INIT, train, "c1")
    h = nn.relu(_batch_norm(self, h, labels, train, "b2"))
    h = _conv(self, h, self.features, 3, RESIDUAL_INIT, train, "c2")
    return h + upsample2(_conv(self, x, self.features, 1, SHORTCUT_INIT, train, "c_sc"))


class DBlock(nn.Module):
  """ResBlock [down]: ReLU conv3x3 ReLU conv3x3 [avgpool], plus [conv1x1 avgpool]
  (identity when neither downsampling nor changing width); `optimized`: the
  first block, conv3x3 ReLU conv3x3 avgpool, plus avgpool conv1x1."""
  features: int
  down: bool = True
  optimized: bool = False
  spectral_norm: bool = True
  dtype: Any = None
  lowering: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool):
    h = x if self.optimized else nn.relu(x)
    h = _conv(self, h, self.features, 3, RESIDUAL_INIT, train, "c1")
    h = _conv(self, nn.relu(h), self.features, 3, RESIDUAL_INIT, train, "c2")
    down = self.down or self.optimized
    if down:
      h = avgpool2(h)
    if not (down or x.shape[-1] != self.features):
      return h + x
    return h + _conv(self, avgpool2(x) if down else x, self.features, 1, SHORTCUT_INIT, train,
                     "c_sc")


class SNGANGenerator(nn.Module):
  """z [, labels] -> image in `pixel_range` (see the module docstring)."""
  latent_dim: int
  out_shape: tuple[int, int, int]
  channels: int = 256
  num_classes: int = 0            # > 0: class-conditional, as `cond` says
  cond: str = "bn"                # conditional.G_CONDITIONINGS
  embed_dim: int = 128            # label embedding width ('concat', 'bn_shared')
  spectral_norm: bool = False
  pixel_range: tuple[float, float] = (-1.0, 1.0)
  axis_name: str | None = None
  dtype: Any = None               # compute dtype of convs and matmuls (None: float32)
  lowering: str = "auto"

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None,
               train: bool = True) -> jax.Array:
    chex.assert_shape(z, (None, self.latent_dim))
    n, (out_size, _, c), ch = z.shape[0], self.out_shape, self.channels
    size = PADDED.get(out_size, out_size)
    bn_classes = 0
    if self.num_classes:
      conditional.check_labels(labels, n, self.num_classes, "the generator")
      if self.cond == "concat":
        z = conditional.label_concat(z, labels, self.num_classes, self.embed_dim)
      else:
        bn_classes = self.num_classes
    h = _dense(self, z, 4 * 4 * ch, train, "l1").reshape(n, 4, 4, ch)
    for i in range(int(math.log2(size // 4))):
      h = GBlock(ch, bn_classes, self.spectral_norm, self.axis_name, self.dtype, self.lowering,
                 self.embed_dim if self.cond == "bn_shared" else 0,
                 name=f"block{i + 2}")(h, labels, train)
    # The last BatchNorm is plain in the conditional G too (as in the reference).
    h = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                             axis_name=self.axis_name, name="b_out")(h))
    x = jnp.tanh(_conv(self, h, c, 3, SHORTCUT_INIT, train, "c_out"))
    border = (size - out_size) // 2
    x = x[:, border:border + out_size, border:border + out_size]
    chex.assert_shape(x, (n, *self.out_shape))
    return to_pixel_range(x, self.pixel_range)


class SNGANDiscriminator(nn.Module):
  """x [, labels] -> logits (N,) float32, or (logits, class_logits) with an
  ACGAN head (see the module docstring)."""
  in_shape: tuple[int, int, int]
  channels: int = 128
  num_classes: int = 0            # > 0: class-conditional, with `head`
  head: str = "projection"        # conditional.D_HEADS
  spectral_norm: bool = True
  dtype: Any = None
  lowering: str = "auto"
  pad_value: float = -1.0         # the background a 28x28 input is padded to 32x32 with

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array | None = None, train: bool = True):
    chex.assert_shape(x, (None, *self.in_shape))
    ch, sn, dt, low = self.channels, self.spectral_norm, self.dtype, self.lowering
    size = PADDED.get(self.in_shape[0], self.in_shape[0])
    border = (size - self.in_shape[0]) // 2
    if border:
      x = jnp.pad(x, ((0, 0), (border, border), (border, border), (0, 0)),
                  constant_values=self.pad_value)
    downs = int(math.log2(size // 8))   # to 8x8: 2 at 32x32, 3 at 64x64
    h = DBlock(ch, True, True, sn, dt, low, name="block1")(x, train)
    for i in range(downs - 1):
      h = DBlock(ch, True, False, sn, dt, low, name=f"block{i + 2}")(h, train)
    for i in range(downs + 1, downs + 3):
      h = DBlock(ch, False, False, sn, dt, low, name=f"block{i}")(h, train)
    h = jnp.sum(nn.relu(h), axis=(1, 2))                  # global sum pooling
    logits = _dense(self, h, 1, train, "l_out", use_bias=False)[:, 0]
    return conditional.d_output(logits, h, labels, num_classes=self.num_classes, head=self.head,
                                spectral_norm=sn, train=train)


@register("sngan_resnet", conditional=True)
def sngan_resnet(ctx: ModelContext, *, g_channels: int = 256, d_channels: int = 128,
                 g_cond: str = "bn", d_head: str = "projection", g_embed_dim: int = 128,
                 d_spectral_norm: bool = True, g_spectral_norm: bool = False):
  """The SNGAN ResNet at 32x32 or 64x64, or at 28x28 padded to 32x32 (defaults: the paper's CIFAR-10
  sizes, Ch 256 in G and 128 in D). With model.num_classes > 0: G conditions
  by `g_cond` ('bn': conditional BatchNorm in every block, 'bn_shared': the
  same with BigGAN's shared-embedding gains; 'concat': a
  `g_embed_dim` label embedding concatenated to z), D has the `d_head`
  ('projection', 'acgan' or 'projection+acgan')."""
  size = ctx.image_shape[0]
  if size not in SIZES:
    raise ConfigError(f"model 'sngan_resnet' supports model.image_size "
                      f"{' or '.join(map(str, SIZES))}, got {size}")
  conditional.check_conditioning(ctx.num_classes, g_cond, d_head)
  for key, value in (("g_channels", g_channels), ("d_channels", d_channels),
                     ("g_embed_dim", g_embed_dim)):
    if not isinstance(value, int) or value < 1:
      raise ConfigError(f"model.kwargs.{key} must be a positive int, got {value!r}")
  g = SNGANGenerator(ctx.latent_dim, ctx.image_shape, g_channels, ctx.num_classes, g_cond,
                     g_embed_dim, g_spectral_norm, ctx.pixel_range, ctx.axis_name)
  d = SNGANDiscriminator(ctx.image_shape, d_channels, ctx.num_classes, d_head, d_spectral_norm,
                         pad_value=ctx.pixel_range[0])
  return g, d
