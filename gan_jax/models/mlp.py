"""The fully connected GAN, a registered model (see gan_jax.models)."""
from __future__ import annotations

from gan_jax.models import ModelContext, register
from gan_jax.models.blocks import MLPDiscriminator, MLPGenerator


@register("mlp")
def mlp(ctx: ModelContext, *, g_hidden: tuple[int, ...] = (1024, 2048),
        d_hidden: tuple[int, ...] = (512,), d_slope: float = 0.2,
        d_spectral_norm: bool = False):
  """Fully connected GAN: G z -> g_hidden (ReLU) -> image (tanh); D image ->
  d_hidden (LReLU d_slope) -> 1. Any image size."""
  # tuple(): a config.json gives lists, and module fields must be hashable.
  g = MLPGenerator(ctx.latent_dim, tuple(g_hidden), ctx.image_shape,
                   pixel_range=ctx.pixel_range)
  d = MLPDiscriminator(ctx.image_shape, tuple(d_hidden), slope=d_slope,
                       spectral_norm=d_spectral_norm)
  return g, d
