"""The device mesh: one `data` axis over every device (of every process)."""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (AXIS,))


def replicate(tree, mesh: jax.sharding.Mesh):
  """`tree` put whole on every device of `mesh`."""
  return jax.device_put(tree, NamedSharding(mesh, P()))


def check_vma(mesh: jax.sharding.Mesh) -> bool:
  # One device: the step skips its pmeans, so nothing is marked replicated.
  return mesh.devices.size > 1
