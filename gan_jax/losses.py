"""The loss and penalty zoo: pure functions, looked up by name.

Adversarial loss: one function per variant,

  loss(real_logits, fake_logits[, real_target]) -> (d_loss, g_loss)

minimised by D and by G respectively. The step calls it twice: with the
logits of the D update (it uses `d_loss`) and with D's logits on the fakes
after that update (it uses `g_loss`). A loss that accepts `real_target`
supports one-sided label smoothing (constant or noisy real labels); one that
does not (Wasserstein, hinge) is rejected when smoothing is configured.
Adding a variant is one function plus one line in `LOSSES`.

Penalty on D: one function per variant,

  penalty(critic, real, fake, key) -> scalar

with `critic` mapping a batch of images to per-example logits (D's parameters
closed over). Weighted penalties are added to the D loss.
"""
from __future__ import annotations

import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from gan_jax.config import ConfigError

Loss = Callable[..., tuple[jax.Array, jax.Array]]
Critic = Callable[[jax.Array], jax.Array]
Penalty = Callable[[Critic, jax.Array, jax.Array, jax.Array], jax.Array]


def bce(logits: jax.Array, target: float | jax.Array) -> jax.Array:
  """Mean binary cross-entropy of sigmoid(logits) against `target`."""
  return optax.sigmoid_binary_cross_entropy(logits, jnp.broadcast_to(target, logits.shape)).mean()


def minimax(real_logits, fake_logits, real_target=1.0):
  """The original GAN (Goodfellow et al. 2014) with the saturating G loss
  log(1 - D(G(z)))."""
  d = bce(real_logits, real_target) + bce(fake_logits, 0.0)
  return d, -bce(fake_logits, 0.0)


def non_saturating(real_logits, fake_logits, real_target=1.0):
  """Goodfellow et al.'s "modified minimax": G maximises log D(G(z))."""
  d = bce(real_logits, real_target) + bce(fake_logits, 0.0)
  return d, bce(fake_logits, 1.0)


def non_saturating_joint(real_logits, fake_logits, real_target=1.0):
  """non_saturating with D's BCE averaged over the concatenated real+fake
  batch (half the sum of the two means), as the Keras-style
  `D.train_on_batch(concat([real, fake]))` does."""
  d, g = non_saturating(real_logits, fake_logits, real_target)
  return d / 2, g


def least_squares(real_logits, fake_logits, real_target=1.0):
  """LSGAN (Mao et al. 2017), a=0, b=c=1: D pulls real outputs to 1 (or the
  smoothed target) and fakes to 0; G pulls fakes to 1."""
  d = 0.5 * jnp.mean((real_logits - real_target) ** 2) + 0.5 * jnp.mean(fake_logits ** 2)
  return d, 0.5 * jnp.mean((fake_logits - 1.0) ** 2)


def wasserstein(real_logits, fake_logits):
  """WGAN (Arjovsky et al. 2017): the critic maximises E[D(x)] - E[D(G(z))]."""
  return jnp.mean(fake_logits) - jnp.mean(real_logits), -jnp.mean(fake_logits)


def hinge(real_logits, fake_logits):
  """Hinge loss (Lim & Ye 2017; SNGAN, BigGAN)."""
  d = jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))
  return d, -jnp.mean(fake_logits)


LOSSES: dict[str, Loss] = {
    "minimax": minimax,
    "non_saturating": non_saturating,
    "non_saturating_joint": non_saturating_joint,
    "least_squares": least_squares,
    "wasserstein": wasserstein,
    "hinge": hinge,
}


def get_loss(name: str) -> Loss:
  if name not in LOSSES:
    raise ConfigError(f"unknown loss {name!r}; registered: {sorted(LOSSES)}")
  return LOSSES[name]


def takes_real_target(loss: Loss) -> bool:
  return "real_target" in inspect.signature(loss).parameters


def _input_grads(critic: Critic, x: jax.Array) -> jax.Array:
  """Per-example d critic(x_i) / d x_i, flattened to (batch, features).
  Exact for a critic without cross-example coupling (no BatchNorm)."""
  grads = jax.grad(lambda x: jnp.sum(critic(x)))(x)
  return grads.reshape(x.shape[0], -1)


def _unit_gradient_norm(critic: Critic, x: jax.Array) -> jax.Array:
  norms = jnp.sqrt(jnp.sum(_input_grads(critic, x) ** 2, axis=1) + 1e-12)
  return jnp.mean((norms - 1.0) ** 2)


def _per_example_uniform(key, x):
  return jax.random.uniform(key, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype)


def gradient_penalty(critic: Critic, real, fake, key):
  """WGAN-GP (Gulrajani et al. 2017): E[(||grad D(x_hat)|| - 1)^2] at random
  interpolates x_hat = e*real + (1-e)*fake, e ~ U(0, 1) per example."""
  eps = _per_example_uniform(key, real)
  return _unit_gradient_norm(critic, eps * real + (1.0 - eps) * fake)


def dragan_penalty(critic: Critic, real, fake, key):
  """DRAGAN (Kodali et al. 2017): the same penalty around the data, at
  interpolates between reals and reals perturbed by 0.5*std(real)*U(0, 1)."""
  noise_key, eps_key = jax.random.split(key)
  perturbed = real + 0.5 * jnp.std(real) * jax.random.uniform(noise_key, real.shape, real.dtype)
  eps = _per_example_uniform(eps_key, real)
  return _unit_gradient_norm(critic, eps * real + (1.0 - eps) * perturbed)


def r1_penalty(critic: Critic, real, fake, key):
  """R1 (Mescheder et al. 2018): 0.5 * E[||grad D(x)||^2] on real data; the
  configured weight is gamma."""
  return 0.5 * jnp.mean(jnp.sum(_input_grads(critic, real) ** 2, axis=1))


def r2_penalty(critic: Critic, real, fake, key):
  """R2: R1's penalty on generated data."""
  return r1_penalty(critic, fake, real, key)


PENALTIES: dict[str, Penalty] = {
    "gp": gradient_penalty,
    "dragan": dragan_penalty,
    "r1": r1_penalty,
    "r2": r2_penalty,
}


def clip_weights(params, bound: float):
  """WGAN weight clipping: every D parameter into [-bound, bound]."""
  return jax.tree.map(lambda p: jnp.clip(p, -bound, bound), params)
