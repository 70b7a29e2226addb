"""Adam as optax computes it, with the update's buffers written in place.

The step donates the state, so XLA writes the new parameters and moments
into the old ones' buffers, but only where it can see that every reader of
an old value runs before the write; elsewhere it copies the old value first.
With `optax.adam` two readers are unordered: the gradient of a layer's
input still reads the old weights, yet the weights' update does not depend
on it, and the update reads the old first moment (XLA fuses the moment's
computation into it) beside the fusion that stores the new moment. XLA:CPU
then copies large weights and every first moment once per step, a large
share of a small model's step (README: "Where the FC GAN's step goes").
Here each update of a matrix (`is_ordered`) is scaled by a one built from an
element of every gradient, and the stored first moment is computed with a b1
built from an element of the new parameters: data dependencies that order
the writes after their readers (`optimization_barrier` cannot: XLA:CPU drops
it before it assigns buffers). While gradients and parameters are finite
the values are optax's bits (x + 0 * y is x); a gradient whose first
element is not finite makes every matrix's update NaN, where optax's would
spoil its own leaf only; the step's grad-norm metrics report it either way. The state's structure
is optax.adam's, so checkpoints load either way, and
`state.make_optimizers` takes this one on CPU only.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def is_ordered(leaf) -> bool:
  """Whether the update of this parameter waits for every gradient: the
  matrices (dense kernels, embedding tables), where XLA's copies cost the FC
  GAN most. Conv kernels and vectors keep optax's order (XLA may copy them,
  at little cost): ordering DCGAN-64's conv kernels made its step hold 15%
  more memory at once (README: "Where the FC GAN's step goes")."""
  return leaf.ndim == 2


def _zero_after(x) -> jax.Array:
  """0, computed from one element of `x` (which must be finite)."""
  return 0 * jnp.ravel(x)[0]


def adam(learning_rate, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """`optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)`, numbers and state
  alike (finite ones, above), for a float or traced learning rate (not a
  schedule). `update` needs the parameters, and the caller applies its
  updates with `optax.apply_updates(params, updates)`: the expression
  `update` orders the moments after, which XLA then computes once."""
  if callable(learning_rate):
    raise TypeError("gan_jax.optim.adam takes a learning rate, not a schedule")
  ref = optax.adam(learning_rate, b1=b1, b2=b2, eps=eps)

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("gan_jax.optim.adam.update needs the parameters")
    updates, (moments, *rest) = ref.update(grads, state, params)
    one = 1 + sum(_zero_after(g) for g in jax.tree.leaves(grads) if jnp.size(g))
    updates = jax.tree.map(lambda u: u * jnp.asarray(one, u.dtype) if is_ordered(u) else u, updates)
    new_params = optax.apply_updates(params, updates)   # the caller's; CSE merges the two

    def first_moment(g, m, p, new_m):
      if not jnp.size(p):
        return new_m
      return (1 - b1) * g + (b1 + _zero_after(p).astype(m.dtype)) * m   # optax's expression
    mu = jax.tree.map(first_moment, grads, state[0].mu, new_params, moments.mu)
    return updates, (moments._replace(mu=mu), *rest)

  return optax.GradientTransformation(ref.init, update)
