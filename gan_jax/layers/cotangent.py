"""Cotangents of custom VJPs under `jax.shard_map`."""
from __future__ import annotations

import jax


def like(ct: jax.Array, primal: jax.Array) -> jax.Array:
  """Inside shard_map, the cotangent of a value replicated over mesh axes
  (e.g. weights) is summed over those axes, as JAX's own transpose rules do."""
  varying = lambda v: set(jax.typeof(v).manual_axis_type.varying)
  extra = tuple(sorted(varying(ct) - varying(primal)))
  return jax.lax.psum(ct, extra) if extra else ct
