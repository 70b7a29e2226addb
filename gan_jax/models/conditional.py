"""Class conditioning: what a generator and a discriminator use to see labels.

- `ConditionalBatchNorm` (Miyato & Koyama 2018; BigGAN): BatchNorm without
  its own affine part, then a per-class gain and bias looked up by label
  (gain initialised to 1, bias to 0, so it starts as plain BatchNorm).
- `label_concat`: a label embedding concatenated to z (the other G option).
- `projection` (Miyato & Koyama 2018): the projection discriminator's class
  term <embed(y), phi(x)>, added to the unconditional logit.
- `ACGANHead` (Odena et al. 2017): an auxiliary classifier's class logits
  from phi(x), D's second head.

The conventions every conditional model follows: G is called
`g(z, labels, train=...)`, D `d(x, labels, train=...)`, labels int32 (N,);
D returns its logits (N,), or `(logits, class_logits (N, classes))` when it
has an ACGAN head. Unconditional models are called without labels.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from gan_jax.errors import ConfigError

# conditional BatchNorm (per-class tables, or BigGAN's shared-embedding
# form), or a label embedding concatenated to z
G_CONDITIONINGS = ("bn", "bn_shared", "concat")
D_HEADS = ("projection", "acgan", "projection+acgan")


def check_labels(labels: jax.Array | None, batch: int, num_classes: int, who: str) -> None:
  """A conditional model's labels: given, one per example (checked at trace time)."""
  if labels is None:
    raise ConfigError(f"{who} is class-conditional (model.num_classes={num_classes}) and "
                      f"needs labels")
  if labels.shape != (batch,):
    raise ConfigError(f"{who}: labels of shape {labels.shape} for a batch of {batch}")


def check_conditioning(num_classes: int, g_cond: str, d_head: str) -> None:
  if num_classes < 0:
    raise ConfigError(f"model.num_classes must be >= 0 (0 = unconditional), got {num_classes}")
  if g_cond not in G_CONDITIONINGS:
    raise ConfigError(f"model.kwargs.g_cond must be one of {G_CONDITIONINGS}, got {g_cond!r}")
  if d_head not in D_HEADS:
    raise ConfigError(f"model.kwargs.d_head must be one of {D_HEADS}, got {d_head!r}")


class ConditionalBatchNorm(nn.Module):
  """BatchNorm (synchronised over `axis_name`, PyTorch's momentum and eps)
  whose scale and bias are per class: x_hat * gain[y] + bias[y].

  `embed_dim` 0: a gain and a bias table per class (Miyato & Koyama 2018).
  `embed_dim` E > 0: BigGAN's form, gain[y] = 1 + W_g e(y), bias[y] = W_b
  e(y), with a learnt E-wide class embedding e: every class's gains move
  with the shared W, so conditioning is learnt in far fewer steps than with
  tables that Adam moves by its step size per step."""
  num_classes: int
  axis_name: str | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  embed_dim: int = 0

  @nn.compact
  def __call__(self, x: jax.Array, labels: jax.Array, train: bool) -> jax.Array:
    x = nn.BatchNorm(use_running_average=not train, momentum=self.momentum,
                     epsilon=self.epsilon, use_scale=False, use_bias=False,
                     axis_name=self.axis_name)(x)
    features = x.shape[-1]
    if self.embed_dim:
      e = nn.Embed(self.num_classes, self.embed_dim,
                   embedding_init=nn.initializers.normal(1.0), name="embed")(labels)
      gain = 1.0 + nn.Dense(features, use_bias=False, kernel_init=nn.initializers.zeros,
                            name="gain")(e)
      bias = nn.Dense(features, use_bias=False, kernel_init=nn.initializers.zeros,
                      name="bias")(e)
    else:
      gain = nn.Embed(self.num_classes, features, embedding_init=nn.initializers.ones,
                      name="gain")(labels)
      bias = nn.Embed(self.num_classes, features, embedding_init=nn.initializers.zeros,
                      name="bias")(labels)
    shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (features,)
    return x * gain.reshape(shape) + bias.reshape(shape)


def label_concat(z: jax.Array, labels: jax.Array, num_classes: int,
                 dim: int) -> jax.Array:
  """[z, embed(y)] with a learnt `dim`-wide label embedding."""
  e = nn.Embed(num_classes, dim, embedding_init=nn.initializers.normal(1.0),
               name="label_embed")(labels)
  return jnp.concatenate([z, e.astype(z.dtype)], axis=-1)


def projection(h: jax.Array, labels: jax.Array, num_classes: int, spectral_norm: bool,
               train: bool) -> jax.Array:
  """<embed(y), h> per example, h (N, F) D's features before the logit; the
  embedding is spectrally normalised with D's other layers when they are."""
  table = _Table(num_classes, h.shape[-1], name="projection")
  if spectral_norm:
    # The (classes, F) table is the matrix whose top singular value is normalised.
    table = nn.SpectralNorm(table)
    e = jnp.take(table(None, update_stats=train), labels, axis=0)
  else:
    e = jnp.take(table(None), labels, axis=0)
  return jnp.sum(e.astype(jnp.float32) * h.astype(jnp.float32), axis=-1)


class _Table(nn.Module):
  """A (classes, features) embedding table as a module's output, so that
  nn.SpectralNorm can normalise it like a kernel."""
  num_classes: int
  features: int

  @nn.compact
  def __call__(self, _):
    return self.param("embedding", nn.initializers.xavier_uniform(),
                      (self.num_classes, self.features))


class ACGANHead(nn.Module):
  """Class logits from D's features: one dense layer (Odena et al. 2017)."""
  num_classes: int
  spectral_norm: bool = False

  @nn.compact
  def __call__(self, h: jax.Array, train: bool) -> jax.Array:
    dense = nn.Dense(self.num_classes, name="classifier")
    out = nn.SpectralNorm(dense)(h, update_stats=train) if self.spectral_norm else dense(h)
    return out.astype(jnp.float32)


def d_output(logits: jax.Array, h: jax.Array, labels: jax.Array | None, *,
             num_classes: int, head: str, spectral_norm: bool, train: bool):
  """D's output from its unconditional `logits` (N,) and features `h` (N, F):
  the logits, plus the projection term and/or the ACGAN class logits as
  `head` says; unconditional (num_classes 0): the logits alone."""
  if not num_classes:
    return logits
  check_labels(labels, h.shape[0], num_classes, "the discriminator")
  if "projection" in head:
    logits = logits + projection(h, labels, num_classes, spectral_norm, train)
  if "acgan" in head:
    return logits, ACGANHead(num_classes, spectral_norm)(h, train)
  return logits
