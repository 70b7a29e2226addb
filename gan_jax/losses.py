"""The adversarial losses: pure functions, registered by name.

One function per variant,

  loss(real_logits, fake_logits[, real_target]) -> (d_loss, g_loss)

minimised by D and by G respectively. The step calls it twice: with the
logits of the D update (it uses `d_loss`) and with D's logits on the fakes
after that update (it uses `g_loss`). A loss that accepts `real_target`
supports one-sided label smoothing (constant or noisy real labels); one that
does not (Wasserstein, hinge) is rejected when smoothing is configured.
Adding a variant is one function under `@losses.register("name")`, in
this module or in a user module named in `config.imports`. Penalties
(regularisers) are in `gan_jax.penalties`.
"""
from __future__ import annotations

import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from gan_jax.registry import Registry

Loss = Callable[..., tuple[jax.Array, jax.Array]]
LOSSES: Registry = Registry("loss")


def register(name: str) -> Callable[[Loss], Loss]:
  """`@losses.register("name")`: adds a loss under `name` (`config.loss`)."""
  return LOSSES.register(name)


def bce(logits: jax.Array, target: float | jax.Array) -> jax.Array:
  """Mean binary cross-entropy of sigmoid(logits) against `target`."""
  return optax.sigmoid_binary_cross_entropy(logits, jnp.broadcast_to(target, logits.shape)).mean()


@register("minimax")
def minimax(real_logits, fake_logits, real_target=1.0):
  """The original GAN (Goodfellow et al. 2014) with the saturating G loss
  log(1 - D(G(z)))."""
  d = bce(real_logits, real_target) + bce(fake_logits, 0.0)
  return d, -bce(fake_logits, 0.0)


@register("non_saturating")
def non_saturating(real_logits, fake_logits, real_target=1.0):
  """Goodfellow et al.'s "modified minimax": G maximises log D(G(z))."""
  d = bce(real_logits, real_target) + bce(fake_logits, 0.0)
  return d, bce(fake_logits, 1.0)


@register("non_saturating_joint")
def non_saturating_joint(real_logits, fake_logits, real_target=1.0):
  """non_saturating with D's BCE averaged over the concatenated real+fake
  batch (half the sum of the two means), as the Keras-style
  `D.train_on_batch(concat([real, fake]))` does."""
  d, g = non_saturating(real_logits, fake_logits, real_target)
  return d / 2, g


@register("least_squares")
def least_squares(real_logits, fake_logits, real_target=1.0):
  """LSGAN (Mao et al. 2017), a=0, b=c=1: D pulls real outputs to 1 (or the
  smoothed target) and fakes to 0; G pulls fakes to 1."""
  d = 0.5 * jnp.mean((real_logits - real_target) ** 2) + 0.5 * jnp.mean(fake_logits ** 2)
  return d, 0.5 * jnp.mean((fake_logits - 1.0) ** 2)


@register("wasserstein")
def wasserstein(real_logits, fake_logits):
  """WGAN (Arjovsky et al. 2017): the critic maximises E[D(x)] - E[D(G(z))]."""
  return jnp.mean(fake_logits) - jnp.mean(real_logits), -jnp.mean(fake_logits)


@register("hinge")
def hinge(real_logits, fake_logits):
  """Hinge loss (Lim & Ye 2017; SNGAN, BigGAN)."""
  d = jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
  return d, -jnp.mean(fake_logits)


def get_loss(name: str) -> Loss:
  return LOSSES.lookup(name, "loss")


def takes_real_target(loss: Loss) -> bool:
  return "real_target" in inspect.signature(loss).parameters


def clip_weights(params, bound: float):
  """WGAN weight clipping: every D parameter into [-bound, bound]."""
  return jax.tree.map(lambda p: jnp.clip(p, -bound, bound), params)
