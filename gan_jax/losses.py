"""Adversarial losses, one pure function pair per variant, looked up by name.

A loss takes discriminator logits and returns a scalar:
  d(real_logits, fake_logits) -> D loss (minimised by D)
  g(fake_logits)              -> G loss (minimised by G)
Adding a variant is one `AdversarialLoss` plus one line in `LOSSES`.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from gan_jax.config import ConfigError


class AdversarialLoss(NamedTuple):
  d: Callable[[jax.Array, jax.Array], jax.Array]
  g: Callable[[jax.Array], jax.Array]


def bce(logits: jax.Array, target: float | jax.Array) -> jax.Array:
  """Mean binary cross-entropy of sigmoid(logits) against `target`."""
  return optax.sigmoid_binary_cross_entropy(logits, jnp.broadcast_to(target, logits.shape)).mean()


def minimax_d(real_logits, fake_logits):
  return bce(real_logits, 1.0) + bce(fake_logits, 0.0)


def minimax_g(fake_logits):
  """Saturating G loss of the original GAN: minimise log(1 - D(G(z)))."""
  return -bce(fake_logits, 0.0)


def non_saturating_g(fake_logits):
  """Goodfellow et al.'s "modified minimax": maximise log D(G(z))."""
  return bce(fake_logits, 1.0)


LOSSES: dict[str, AdversarialLoss] = {
    "minimax": AdversarialLoss(d=minimax_d, g=minimax_g),
    "non_saturating": AdversarialLoss(d=minimax_d, g=non_saturating_g),
}


def get_loss(name: str) -> AdversarialLoss:
  if name not in LOSSES:
    raise ConfigError(f"unknown loss {name!r}; registered: {sorted(LOSSES)}")
  return LOSSES[name]
