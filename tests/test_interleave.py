"""The phase interleave of `phase_conv_transpose` and its written-out backward."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from gan_jax.layers import ConvTranspose
from gan_jax.layers import interleave
from gan_jax.layers.interleave import depth_to_space
from conftest import on_devices

PADS = [((0, 0), (0, 0)), ((-1, -2), (-1, 0)),  # a crop (the DCGAN layer's)
        ((-2, 1), (1, -1))]                      # zeros beyond the grid (an empty phase)


def _reference(y, strides, pads):
  """The same forward without the custom VJP: autodiff's form (one
  reshape-transpose and a pad), whose gradients the written-out backward must give."""
  return interleave._forward(y, strides, pads)[0]


@pytest.mark.parametrize("strides", [(2, 2), (3, 2), (1, 1)])
@pytest.mark.parametrize("pads", PADS)
def test_depth_to_space_equals_reference_to_second_order(strides, pads):
  y = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 5, strides[0] * strides[1] * 3))
  np.testing.assert_array_equal(depth_to_space(y, strides, pads), _reference(y, strides, pads))
  g = jax.random.normal(jax.random.PRNGKey(1), _reference(y, strides, pads).shape)
  loss = lambda f: lambda y: jnp.sum(jnp.sin(f(y, strides, pads)) * g)
  np.testing.assert_allclose(jax.grad(loss(depth_to_space))(y), jax.grad(loss(_reference))(y),
                             rtol=1e-6, atol=1e-6)
  penalty = lambda f: lambda y: jnp.sum(jax.grad(loss(f))(y) ** 2)
  np.testing.assert_allclose(jax.grad(penalty(depth_to_space))(y), jax.grad(penalty(_reference))(y),
                             rtol=1e-5, atol=1e-5)


def test_backward_is_slices_and_a_concatenate():
  """The point of the custom VJP: no transpose in the backward pass, which
  XLA:CPU would fuse with the kernel gradient's g^T into one slow copy."""
  y = jnp.ones((2, 4, 4, 4 * 8))
  _, vjp = jax.vjp(lambda y: depth_to_space(y, (2, 2), PADS[1]), y)
  jaxpr = str(jax.make_jaxpr(vjp)(jnp.ones((2, 5, 7, 8))))
  assert "concatenate" in jaxpr and "transpose" not in jaxpr


def test_conv_transpose_second_order_equals_flax():
  """A gradient of an input-gradient norm through the layer (the CPU path:
  phase matmul, custom-VJP interleave) as through nn.ConvTranspose."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 40))
  ref = nn.ConvTranspose(36, (4, 4), (2, 2), "SAME")
  params = ref.init(jax.random.PRNGKey(1), x)
  fast = ConvTranspose(36, 4, 2, "SAME", lowering="cpu")

  def penalty(module, params):
    grad = jax.grad(lambda x: jnp.sum(jnp.tanh(module.apply(params, x))))(x)
    return jnp.sum(grad ** 2)
  g_fast, g_ref = jax.grad(penalty, 1)(fast, params), jax.grad(penalty, 1)(ref, params)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(np.abs(b).max()))


@on_devices(4)
def test_replicated_input_under_shard_map_gets_its_cotangent_summed():
  """Under shard_map, with the input replicated over 4 devices and the loss
  differing per device, the custom VJP gives the gradient of autodiff's form
  (the per-device cotangents summed; JAX sums them before the interleave's
  backward, whose input and output vary alike)."""
  n = len(jax.devices())
  mesh = jax.make_mesh((n,), ("data",))
  y = jax.random.normal(jax.random.PRNGKey(0), (1, 3, 3, 8))
  w = jax.random.normal(jax.random.PRNGKey(1), (n, 6, 6, 2))

  def grads(f):
    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=(P(), P("data")), out_specs=P())
    def g(y, w):
      return jax.grad(lambda y: jax.lax.psum(jnp.sum(f(y, (2, 2), PADS[0]) * w), "data"))(y)
    return g(y, jax.device_put(w, jax.NamedSharding(mesh, P("data"))))
  np.testing.assert_allclose(grads(depth_to_space), grads(_reference), rtol=1e-6, atol=1e-6)
