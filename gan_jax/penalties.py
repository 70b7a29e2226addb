"""Regularisers (penalties), registered by name; `config.penalty.NAME` is
each one's weight (0 = off, several may be on).

A penalty is a function

  penalty(critic, real, fake, key[, logits=..., state=..., global_mean=...]) -> value

with `critic` mapping a batch of images to per-example logits (D's
parameters closed over, train mode). It declares in `register`:

- `on`: "d" adds weight x value to D's loss in every critic update; "g" adds
  it to G's loss, where `fake` is differentiated through G (so a G penalty is
  a function of the fakes).
- `every`: lazy regularisation (StyleGAN2): applied on steps that are
  multiples of N, with its weight scaled by N; 0 elsewhere.
- `state`: a function returning the penalty's initial state (a pytree). The
  state lives in `GANState.aux[NAME]`, is checkpointed and resumed with the
  rest, and the penalty then returns `(value, new_state)`.

Keyword arguments a penalty names in its signature are filled in by the step:
`logits` = (D's logits on `real`, on `fake`) of the update in progress
(differentiable; for a G penalty, D's logits on the reals of its last
update, without gradient, and D's logits on the fakes after that update),
`state` = its state, `global_mean(x)` = the mean of a per-device value over
all devices (the identity on one device): state computed from it stays the
same on every device, as it must (the step averages the state over the
devices after each update either way).
"""
from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Callable

import jax
import jax.numpy as jnp

from gan_jax.errors import ConfigError
from gan_jax.registry import Registry

Critic = Callable[[jax.Array], jax.Array]
PENALTIES: Registry = Registry("penalty")
OPTIONAL_ARGS = ("logits", "state", "global_mean")


@dataclasses.dataclass(frozen=True)
class Penalty:
  fn: Callable[..., Any]
  on: str = "d"
  every: int = 1
  init_state: Callable[[], Any] | None = None

  @property
  def stateful(self) -> bool:
    return self.init_state is not None

  def __call__(self, critic: Critic, real, fake, key, **available):
    """`fn` with the optional arguments it names, taken from `available`."""
    wanted = inspect.signature(self.fn).parameters
    return self.fn(critic, real, fake, key, **{k: v for k, v in available.items() if k in wanted})

  def apply(self, critic: Critic, real, fake, key, *, step, state, vary=lambda x: x,
            **available):
    """(value x the lazy factor, new state) at `step`; (0, state) on the
    steps a lazy penalty skips. `vary` marks a value as per-device inside
    shard_map, as the penalty's own value is (both branches must agree)."""
    def run(state):
      out = self(critic, real, fake, key, state=state, **available)
      value, state = out if self.stateful else (out, state)
      return jnp.asarray(value, jnp.float32) * self.every, state
    if self.every == 1:
      return run(state)
    return jax.lax.cond(step % self.every == 0, run,
                        lambda state: (vary(jnp.zeros((), jnp.float32)), state), state)


def active(penalty_config) -> tuple[tuple[str, Penalty, float], ...]:
  """(name, penalty, weight) of every penalty with a non-zero weight in
  `config.penalty`, in its order; a negative weight or an unknown name is
  a ConfigError."""
  out = []
  for name, weight in penalty_config.items():
    if weight < 0:
      raise ConfigError(f"penalty.{name} must be >= 0, got {weight}")
    if weight:
      out.append((name, PENALTIES.lookup(name, f"penalty.{name}"), float(weight)))
  return tuple(out)


def register(name: str, *, on: str = "d", every: int = 1,
             state: Callable[[], Any] | None = None) -> Callable:
  """`@penalties.register("name", on="d", every=1, state=None)`."""
  if on not in ("d", "g"):
    raise ConfigError(f"penalty {name!r}: on must be 'd' or 'g', got {on!r}")
  if not isinstance(every, int) or every < 1:
    raise ConfigError(f"penalty {name!r}: every must be an int >= 1, got {every!r}")
  def decorate(fn):
    unknown = [p.name for p in list(inspect.signature(fn).parameters.values())[4:]
               if p.name not in OPTIONAL_ARGS and p.default is inspect.Parameter.empty]
    if unknown:
      raise ConfigError(f"penalty {name!r}: the step cannot fill argument(s) {unknown}; "
                        f"after (critic, real, fake, key) it passes {OPTIONAL_ARGS}")
    PENALTIES.add(name, Penalty(fn, on, every, state))
    return fn
  return decorate


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


@register("gp")
def gradient_penalty(critic: Critic, real, fake, key):
  """WGAN-GP (Gulrajani et al. 2017): E[(||grad D(x_hat)|| - 1)^2] at random
  interpolates x_hat = e*real + (1-e)*fake, e ~ U(0, 1) per example."""
  eps = _per_example_uniform(key, real)
  return _unit_gradient_norm(critic, eps * real + (1.0 - eps) * fake)


@register("dragan")
def dragan_penalty(critic: Critic, real, fake, key):
  """DRAGAN (Kodali et al. 2017): the same penalty around the data, at
  interpolates between reals and reals perturbed by 0.5*std(real)*U(0, 1)."""
  noise_key, eps_key = jax.random.split(key)
  perturbed = real + 0.5 * jnp.std(real) * jax.random.uniform(noise_key, real.shape, real.dtype)
  eps = _per_example_uniform(eps_key, real)
  return _unit_gradient_norm(critic, eps * real + (1.0 - eps) * perturbed)


@register("r1")
def r1_penalty(critic: Critic, real, fake, key):
  """R1 (Mescheder et al. 2018): 0.5 * E[||grad D(x)||^2] on real data; the
  configured weight is gamma."""
  return 0.5 * jnp.mean(jnp.sum(_input_grads(critic, real) ** 2, axis=1))


@register("r2")
def r2_penalty(critic: Critic, real, fake, key):
  """R2: R1's penalty on generated data."""
  return r1_penalty(critic, fake, real, key)


@register("r1_lazy", every=16)
def lazy_r1_penalty(critic: Critic, real, fake, key):
  """R1 every 16 steps with its weight x 16 (StyleGAN2's lazy regularisation):
  about the same regularisation at a sixteenth of the cost."""
  return r1_penalty(critic, real, fake, key)


LECAM_DECAY = 0.99


def _lecam_state():
  return {"ema_real": jnp.zeros((), jnp.float32), "ema_fake": jnp.zeros((), jnp.float32),
          "count": jnp.zeros((), jnp.float32)}


@register("lecam", state=_lecam_state)
def lecam_penalty(critic: Critic, real, fake, key, *, logits, state, global_mean):
  """LeCam (Tseng et al. 2021): E[relu(D(x) - a_F)^2] + E[relu(a_R - D(G(z)))^2],
  with a_R, a_F zero-debiased EMAs (decay 0.99) of D's mean output on real
  and on generated data, updated with this batch first (as the reference
  code does). Keeps D's outputs on the two sides from drifting apart, which
  helps with limited data; the configured weight is lambda (0.3 in the paper)."""
  real_logits, fake_logits = logits
  count = state["count"] + 1.0
  new = {"count": count}
  for side, x in (("ema_real", real_logits), ("ema_fake", fake_logits)):
    new[side] = (LECAM_DECAY * state[side]
                 + (1.0 - LECAM_DECAY) * global_mean(jnp.mean(jax.lax.stop_gradient(x))))
  debias = 1.0 - LECAM_DECAY ** count
  anchor_real, anchor_fake = new["ema_real"] / debias, new["ema_fake"] / debias
  value = (jnp.mean(jax.nn.relu(real_logits - anchor_fake) ** 2)
           + jnp.mean(jax.nn.relu(anchor_real - fake_logits) ** 2))
  return value, new
