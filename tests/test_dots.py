import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gan_jax.layers import Conv, ConvTranspose, dots
from conftest import on_devices


@pytest.mark.parametrize("x_shape", [(300, 24), (2, 9, 17, 24)])
def test_f32_matmul_equals_matmul_to_second_order(x_shape):
  """Output, both gradients, and the gradients of an input-gradient norm (a
  gradient penalty through the layer) with respect to the kernel and input."""
  x = jax.random.normal(jax.random.PRNGKey(0), x_shape)
  w = 0.2 * jax.random.normal(jax.random.PRNGKey(1), (24, 7))
  np.testing.assert_allclose(dots.f32_matmul(x, w), x @ w, rtol=1e-6, atol=1e-6)
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  plain = lambda x, w: x @ w
  for a, b in zip(jax.grad(loss(dots.f32_matmul), (0, 1))(x, w), jax.grad(loss(plain), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
  penalty = lambda f: lambda x, w: jnp.sum(jax.grad(loss(f))(x, w) ** 2)
  for a, b in zip(jax.grad(penalty(dots.f32_matmul), (0, 1))(x, w),
                  jax.grad(penalty(plain), (0, 1))(x, w)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def _row_contracting_dots(hlo: str) -> list[str]:
  """Dots whose left operand contracts its rows (axis 0): XLA:CPU runs those
  in Eigen, not YNNPACK."""
  return [l for l in hlo.splitlines() if " dot(" in l and re.search(r"lhs_contracting_dims=\{0[,}]", l)]


def test_wide_layers_kernel_gradients_are_not_row_contractions():
  """The kernel gradient of an im2col / phase matmul is computed as (g^T x)^T,
  which XLA:CPU gives to YNNPACK; with fewer than 256 rows it stays autodiff's
  x^T g."""
  x = jnp.ones((8, 14, 14, 48))   # 392 im2col rows, 1800 on the phase grid
  for layer in (Conv(64, 4, 2), ConvTranspose(64, 4, 2)):
    params = layer.init(jax.random.PRNGKey(0), x)
    step = jax.jit(jax.grad(lambda p, x: jnp.sum(layer.apply(p, x) ** 2)))
    hlo = step.lower(params, x).compile().as_text()
    assert " dot(" in hlo or "ynn_fusion" in hlo, type(layer).__name__
    assert not _row_contracting_dots(hlo), (type(layer).__name__, _row_contracting_dots(hlo))
  small = jnp.ones((1, 8, 8, 48))   # 16 rows
  layer = Conv(64, 4, 2)
  params = layer.init(jax.random.PRNGKey(0), small)
  step = jax.jit(jax.grad(lambda p, x: jnp.sum(layer.apply(p, x) ** 2)))
  assert _row_contracting_dots(step.lower(params, small).compile().as_text())


@on_devices(4)
def test_f32_matmul_under_shard_map_sums_the_replicated_kernels_cotangent():
  """Rows split over the mesh, the kernel replicated: its gradient is summed
  over the mesh, as for `x @ w`, also when only the input gradient is taken."""
  n = len(jax.devices())
  mesh = jax.make_mesh((n,), ("data",))
  x = jax.random.normal(jax.random.PRNGKey(0), (300 * n, 24))
  w = 0.2 * jax.random.normal(jax.random.PRNGKey(1), (24, 7))

  def grads(matmul):
    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=(P("data"), P()), out_specs=(P("data"), P()))
    def f(x, w):
      loss = lambda x, w: jax.lax.psum(jnp.sum(jnp.sin(matmul(x, w))), "data")
      return jax.grad(loss)(x, w), jax.grad(loss, argnums=1)(x, w)
    return f(jax.device_put(x, jax.NamedSharding(mesh, P("data"))),
             jax.device_put(w, jax.NamedSharding(mesh, P())))
  for a, b in zip(grads(dots.f32_matmul), grads(lambda x, w: x @ w)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))


def test_f32_matmul_is_taken_by_float32_operands_only():
  """A bfloat16 operand keeps `x @ w`, whose gradients keep the operands'
  dtypes."""
  from gan_jax import layers
  x, w = jnp.ones((300, 8), jnp.bfloat16), jnp.ones((8, 4), jnp.float32)
  gx, gw = jax.grad(lambda x, w: jnp.sum(layers.matmul(x, w)), (0, 1))(x, w)
  assert (gx.dtype, gw.dtype) == (jnp.bfloat16, jnp.float32)
