"""The convolutional seed architectures: DCGAN-28, the CelebA face DCGAN, the
64x64 colour-photo DCGAN and the 32x32 least-squares GAN.

Each is a registered model: `fn(ctx, *, kwargs...) -> (generator,
discriminator)`, its keyword-only parameters the `model.kwargs` it takes
(defaults: the values every config had before `model.kwargs`, so a config
that sets none of them builds the same networks as before).
"""
from __future__ import annotations

from gan_jax.errors import ConfigError
from gan_jax.models import ModelContext, conditional, register
from gan_jax.models.blocks import (NORMS, UPSAMPLES, Conv, ConvDiscriminator, ConvGenerator,
                                   check_choice)


def _check(name: str, ctx: ModelContext, sizes: tuple[int, ...], g_norm: str, d_norm: str,
           upsample: str) -> None:
  if ctx.image_shape[0] not in sizes:
    raise ConfigError(f"model '{name}' supports model.image_size "
                      f"{' or '.join(map(str, sizes))}, got {ctx.image_shape[0]}")
  check_choice("g_norm", g_norm, NORMS)
  check_choice("d_norm", d_norm, NORMS)
  check_choice("upsample", upsample, UPSAMPLES)


@register("dcgan28", conditional=True)
def dcgan28(ctx: ModelContext, *, g_features: int = 256, d_features: int = 64,
            g_norm: str = "batch", d_norm: str = "batch", d_spectral_norm: bool = False,
            upsample: str = "phase", g_cond: str = "bn", d_head: str = "projection",
            g_embed_dim: int = 50):
  """The default DCGAN-28: z -> 7x7xF -> [BN ReLU] up 14x14xF/2 -> [BN ReLU]
  up 28x28xC -> tanh; D conv Fd (k4 s2) LReLU -> conv 2Fd (k4 s2) [d_norm]
  LReLU -> dense 1. `upsample`: 'phase' (fast exact) or 'transpose'
  (nn.ConvTranspose, same parameters and output). With model.num_classes > 0:
  G conditioned by `g_cond` ('bn': class-conditional BatchNorm; 'concat': a
  `g_embed_dim` label embedding beside z), D with `d_head` ('projection',
  'acgan' or both) on its flattened features."""
  _check("dcgan28", ctx, (28,), g_norm, d_norm, upsample)
  conditional.check_conditioning(ctx.num_classes, g_cond, d_head)
  f, c = g_features, ctx.image_shape[2]
  g = ConvGenerator(
      ctx.latent_dim, (7, 7, f),
      (Conv(f // 2, 4, 2, g_norm, "relu", transpose=True),
       Conv(c, 4, 2, "none", "tanh", transpose=True)),
      (28, 28, c), project_norm=g_norm, project_act="relu",
      pixel_range=ctx.pixel_range, upsample=upsample, axis_name=ctx.axis_name,
      num_classes=ctx.num_classes, cond=g_cond, embed_dim=g_embed_dim)
  d = ConvDiscriminator(
      (28, 28, c),
      (Conv(d_features, 4, 2, "none"), Conv(2 * d_features, 4, 2, d_norm)),
      spectral_norm=d_spectral_norm, axis_name=ctx.axis_name,
      num_classes=ctx.num_classes, head=d_head)
  return g, d


@register("dcgan_faces")
def dcgan_faces(ctx: ModelContext, *, g_features: int = 256, d_features: int = 64,
                g_norm: str = "batch", d_norm: str = "batch", d_spectral_norm: bool = False,
                upsample: str = "phase"):
  """The CelebA face DCGAN (28x28, or 64x64): z -> s/2^n x s/2^n x F [BN
  LReLU] -> n transposed convs (k5 s2, halving features) [BN LReLU] ->
  transposed conv C (k5 s1) tanh, n = 2 at 28 and 4 at 64; D three convs
  Fd, 2Fd, 4Fd (k5 s2) with LReLU(0.2) and BN after the first -> dense 1."""
  _check("dcgan_faces", ctx, (28, 64), g_norm, d_norm, upsample)
  f, (s, _, c) = g_features, ctx.image_shape
  n = 2 if s == 28 else 4
  ups = tuple(Conv(f // 2 ** (i + 1), 5, 2, g_norm, "lrelu", transpose=True) for i in range(n))
  g = ConvGenerator(
      ctx.latent_dim, (s >> n, s >> n, f), ups + (Conv(c, 5, 1, "none", "tanh", transpose=True),),
      (s, s, c), project_norm=g_norm, project_act="lrelu",
      pixel_range=ctx.pixel_range, upsample=upsample, axis_name=ctx.axis_name)
  fd = d_features
  d = ConvDiscriminator(
      (s, s, c),
      (Conv(fd, 5, 2, "none"), Conv(2 * fd, 5, 2, d_norm), Conv(4 * fd, 5, 2, d_norm)),
      spectral_norm=d_spectral_norm, axis_name=ctx.axis_name)
  return g, d


@register("dcgan64")
def dcgan64(ctx: ModelContext, *, g_features: int = 256, d_features: int = 64,
            g_norm: str = "batch", d_norm: str = "batch", d_spectral_norm: bool = False,
            d_dropout: float = 0.0, upsample: str = "phase"):
  """The colour-photo DCGAN at 64x64: z -> Dense 8x8xF -> transposed convs
  F/2, F/4, F/8 (k4 s2) [g_norm] ReLU -> conv C (k4 s1) tanh; D conv Fd (k5 s2)
  [d_norm] LReLU(0.2) -> conv 2Fd (k5 s2) [d_norm] LReLU(0.2) -> flatten ->
  dropout `d_dropout` -> dense 1 (the tutorial: g_norm 'none', dropout 0.3)."""
  _check("dcgan64", ctx, (64,), g_norm, d_norm, upsample)
  f, c = g_features, ctx.image_shape[2]
  ups = tuple(Conv(f // 2 ** (i + 1), 4, 2, g_norm, "relu", transpose=True) for i in range(3))
  g = ConvGenerator(
      ctx.latent_dim, (8, 8, f), ups + (Conv(c, 4, 1, "none", "tanh"),), (64, 64, c),
      project_norm="none", project_act="none", project_bias=True,
      pixel_range=ctx.pixel_range, upsample=upsample, axis_name=ctx.axis_name)
  fd = d_features
  d = ConvDiscriminator(
      (64, 64, c), (Conv(fd, 5, 2, d_norm), Conv(2 * fd, 5, 2, d_norm)),
      head_dropout=d_dropout, spectral_norm=d_spectral_norm, axis_name=ctx.axis_name)
  return g, d


@register("lsgan32")
def lsgan32(ctx: ModelContext, *, g_features: int = 256, d_features: int = 64,
            g_norm: str = "batch", d_norm: str = "batch", d_spectral_norm: bool = False,
            d_dropout: float = 0.0, upsample: str = "phase"):
  """The least-squares GAN at 32x32 (TensorFlow's DCGAN tutorial layers):
  z -> Dense 8x8xF (no bias) BN LReLU -> transposed conv F/2 (k5 s1) -> F/4
  (k5 s2) -> C (k5 s2, tanh), BN + LReLU between, no biases; D conv Fd (k5 s2)
  LReLU dropout -> conv 2Fd (k5 s2) LReLU dropout -> dense 1 (linear)."""
  _check("lsgan32", ctx, (32,), g_norm, d_norm, upsample)
  f, c, fd, p = g_features, ctx.image_shape[2], d_features, d_dropout
  g = ConvGenerator(
      ctx.latent_dim, (8, 8, f),
      (Conv(f // 2, 5, 1, g_norm, "lrelu", 0.3, transpose=True, bias=False),
       Conv(f // 4, 5, 2, g_norm, "lrelu", 0.3, transpose=True, bias=False),
       Conv(c, 5, 2, "none", "tanh", transpose=True, bias=False)),
      (32, 32, c), project_norm=g_norm, project_act="lrelu", project_slope=0.3,
      pixel_range=ctx.pixel_range, upsample=upsample, axis_name=ctx.axis_name)
  d = ConvDiscriminator(
      (32, 32, c),
      (Conv(fd, 5, 2, d_norm, "lrelu", 0.3, p, bias=True),
       Conv(2 * fd, 5, 2, d_norm, "lrelu", 0.3, p, bias=True)),
      spectral_norm=d_spectral_norm, axis_name=ctx.axis_name)
  return g, d
