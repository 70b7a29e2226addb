"""The GAN training state: one pytree of arrays.

Models and optimisers are not part of the state (they are static structure,
rebuilt from the config), so the state checkpoints, shards and vmaps as plain
arrays.
"""
from __future__ import annotations

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from gan_jax import layers, optim
from gan_jax.errors import ConfigError


@flax.struct.dataclass
class GANState:
  step: jax.Array          # int32 scalar: completed training steps
  rng: jax.Array           # raw uint32 PRNG key; step keys are fold_in(rng, step)
  g_params: Any
  d_params: Any
  g_ema_params: Any        # exponential moving average of g_params (samples use it)
  g_batch_stats: Any
  d_batch_stats: Any
  g_opt_state: optax.OptState
  d_opt_state: optax.OptState
  aux: Any = flax.struct.field(default_factory=dict)   # penalty name -> its state


def make_optimizers(optim_config: Any, g_lr=None, d_lr=None
                    ) -> tuple[optax.GradientTransformation, optax.GradientTransformation]:
  """The configured optimiser for G and for D, with separate learning rates
  (TTUR when they differ); `g_lr`/`d_lr` replace the config's (a sweep
  passes traced values: the optimiser state does not depend on them)."""
  o = optim_config
  makers = {
      # The same numbers and state; on CPU written in place (gan_jax.optim).
      "adam": lambda lr: (optim.adam(lr, o.b1, o.b2, o.eps) if layers.cpu_only_host()
                          else optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)),
      # PyTorch's RMSprop (the WGAN reference): eps added outside the sqrt.
      "rmsprop": lambda lr: optax.rmsprop(lr, decay=o.decay, eps=o.eps, eps_in_sqrt=False),
  }
  if o.name not in makers:
    raise ConfigError(f"unknown optimiser optim.name={o.name!r}; valid: {sorted(makers)}")
  return (makers[o.name](o.g_lr if g_lr is None else g_lr),
          makers[o.name](o.d_lr if d_lr is None else d_lr))


def create_state(seed: int, g: nn.Module, d: nn.Module, g_tx: optax.GradientTransformation,
                 d_tx: optax.GradientTransformation, latent_dim: int,
                 image_shape: tuple[int, int, int], aux: dict | None = None,
                 num_classes: int = 0) -> GANState:
  """Initialises parameters, BatchNorm statistics and both optimiser states;
  `aux` holds the stateful penalties' initial states. A conditional pair
  (num_classes > 0) is initialised with labels."""
  rng = jax.random.PRNGKey(seed)
  g_key, d_key, rng = jax.random.split(rng, 3)
  labels = (jnp.zeros((2,), jnp.int32),) if num_classes else ()
  g_vars = g.init(g_key, jnp.zeros((2, latent_dim), jnp.float32), *labels, train=False)
  d_vars = d.init(d_key, jnp.zeros((2, *image_shape), jnp.float32), *labels, train=False)
  return GANState(
      step=jnp.zeros((), jnp.int32), rng=rng,
      g_params=g_vars["params"], d_params=d_vars["params"], g_ema_params=g_vars["params"],
      g_batch_stats=g_vars.get("batch_stats", {}), d_batch_stats=d_vars.get("batch_stats", {}),
      g_opt_state=g_tx.init(g_vars["params"]), d_opt_state=d_tx.init(d_vars["params"]),
      aux={} if aux is None else aux)
