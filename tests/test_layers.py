import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan_jax.layers import Conv, ConvTranspose, shift_conv
from conftest import on_devices

CASES = [  # (input H, W, kernel, stride, padding)
    (7, 7, 4, 2, "SAME"),     # the DCGAN layers
    (14, 14, 4, 2, "SAME"),
    (8, 9, 5, 2, "SAME"),     # LSGAN-style k5 s2
    (7, 7, 5, 1, "SAME"),
    (5, 6, 4, 2, "VALID"),
    (6, 6, 3, 3, "VALID"),
    (5, 5, 2, 2, "SAME"),
    (4, 5, 4, 2, ((1, 2), (2, 1))),
    (4, 5, 1, 2, ((3, 3), (3, 3))),  # kernel narrower than the stride: an empty phase whose outputs lie beyond the grid
]


@pytest.mark.parametrize("features", [6, 16])  # narrow: XLA conv path (5 inputs); wide: matmul path
@pytest.mark.parametrize("h,w,k,s,padding", CASES)
def test_equals_flax_conv_transpose(h, w, k, s, padding, features):
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (3, h, w, 5))
  ref = nn.ConvTranspose(features, (k, k), (s, s), padding)
  params = ref.init(jax.random.PRNGKey(1), x)
  # Non-zero bias so the bias path is compared too.
  params = jax.tree.map(lambda p: p + 0.1, params)
  fast = ConvTranspose(features, k, s, padding)
  assert jax.tree.map(jnp.shape, fast.init(key, x)) == jax.tree.map(jnp.shape, params)
  y_ref, y = ref.apply(params, x), fast.apply(params, x)
  assert y.shape == y_ref.shape
  np.testing.assert_allclose(y, y_ref, atol=1e-5, rtol=1e-5)

  # Same gradients w.r.t. input and parameters.
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  g_ref = jax.grad(loss(ref), argnums=(0, 1))(params, x)
  g = jax.grad(loss(fast), argnums=(0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_no_transposed_convolution_in_gradient():
  """The point of the layer: its forward and backward pass are matmuls; the
  dilated convolutions of a transposed conv's gradient (slow on XLA:CPU) never appear."""
  x = jnp.ones((2, 7, 7, 8))
  layer = ConvTranspose(16, 4, 2)  # wide enough for the matmul path
  params = layer.init(jax.random.PRNGKey(0), x)
  def value_and_grads(m):
    return jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(m.apply(p, x) ** 2), argnums=(0, 1)))
  hlo = value_and_grads(layer).lower(params, x).compile().as_text()
  assert "convolution(" not in hlo and "dot(" in hlo
  narrow = ConvTranspose(1, 4, 2)  # XLA conv path: plain stride-1 convolutions only
  narrow_params = narrow.init(jax.random.PRNGKey(0), x)
  assert "_dilate=" not in value_and_grads(narrow).lower(narrow_params, x).compile().as_text()
  ref = nn.ConvTranspose(16, (4, 4), (2, 2))
  hlo_ref = value_and_grads(ref).lower(params, x).compile().as_text()
  assert "_dilate=" in hlo_ref  # what the reference layer emits


def test_bad_input_rank():
  with pytest.raises(ValueError, match="NHWC"):
    ConvTranspose(4, 4, 2).init(jax.random.PRNGKey(0), jnp.ones((7, 7, 8)))


_SHAPES = [(28, 4, 2, "SAME"), (14, 4, 2, "SAME"), (9, 5, 2, "SAME"), (8, 3, 1, "SAME"),
           (9, 4, 2, "VALID"), (7, 4, 2, "SAME"),  # odd SAME padding (1, 2)
           (8, 5, 1, "SAME")]  # wide: XLA's convolution (5x5, stride 1)


# Narrow inputs take XLA's conv, wide ones im2col: every shape narrow, one
# wide in the default suite, the other wide ones in the slow suite.
@pytest.mark.parametrize("h,k,s,padding,cin,cout", [
    (*shape, 5, 7) for shape in _SHAPES] + [
    (*shape, 40, 40) if shape[:2] in ((14, 4), (8, 5)) else pytest.param(*shape, 40, 40, marks=pytest.mark.slow)
    for shape in _SHAPES])
def test_conv_equals_flax_conv_to_second_order(h, k, s, padding, cin, cout):
  """Same output, input gradient and gradient of the input-gradient norm
  (what a gradient penalty differentiates) as nn.Conv."""
  from gan_jax.layers import Conv
  x = jax.random.normal(jax.random.PRNGKey(0), (2, h, h, cin))
  ref = nn.Conv(cout, (k, k), (s, s), padding)
  params = ref.init(jax.random.PRNGKey(1), x)  # lecun init: O(1) outputs, tanh not saturated
  params["params"]["bias"] = params["params"]["bias"] + 0.1
  fast = Conv(cout, k, s, padding)

  def penalty(module, params, x):
    grad = jax.grad(lambda x: jnp.sum(jnp.tanh(module.apply(params, x))))(x)
    return jnp.sum(grad ** 2)
  np.testing.assert_allclose(fast.apply(params, x), ref.apply(params, x), atol=1e-5)
  np.testing.assert_allclose(penalty(fast, params, x), penalty(ref, params, x), rtol=1e-4)
  g_fast = jax.grad(penalty, argnums=1)(fast, params, x)
  g_ref = jax.grad(penalty, argnums=1)(ref, params, x)
  for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(np.abs(b).max()))


@pytest.mark.parametrize("h,w,k,padding,cin,cout", [
    (9, 9, (4, 4), "SAME", 40, 3),                 # an RGB output layer (k4 s1)
    (8, 10, (3, 3), "VALID", 33, 5),
    (8, 8, (2, 2), ((1, 1), (0, 1)), 32, 4),       # a DCGAN phase convolution
    (5, 5, (5, 5), "SAME", 64, 1),                 # kernel as large as the image
    (6, 7, (2, 3), ((0, 2), (1, 0)), 36, 2),       # non-square everything
    (5, 5, (2, 2), ((3, 0), (0, 2)), 32, 3),       # padding wider than the kernel
    (6, 5, (3, 2), "SAME", 32, 2),                 # SAME with a non-square kernel
    (5, 6, (2, 5), "SAME", 32, 2),
])
def test_shift_conv_equals_xla_conv_to_second_order(h, w, k, padding, cin, cout):
  """shift_conv (one matmul + shifted sums, custom VJP) against XLA's
  convolution: output, both gradients, and the gradient of an input-gradient
  norm with respect to the kernel (a gradient penalty through it)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (2, h, w, cin))
  kernel = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (*k, cin, cout))
  xla = lambda x, kern: jax.lax.conv_general_dilated(
      x, kern, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  fast = lambda x, kern: shift_conv(x, kern, padding)
  np.testing.assert_allclose(fast(x, kernel), xla(x, kernel), atol=1e-5)
  loss = lambda f: lambda x, kern: jnp.sum(jnp.sin(f(x, kern)))
  for a, b in zip(jax.grad(loss(fast), (0, 1))(x, kernel), jax.grad(loss(xla), (0, 1))(x, kernel)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))
  penalty = lambda f: lambda kern: jnp.sum(jax.grad(loss(f))(x, kern) ** 2)
  a, b = jax.grad(penalty(fast))(kernel), jax.grad(penalty(xla))(kernel)
  np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(np.abs(b).max()))


def test_narrow_output_layers_emit_no_convolution():
  """A wide input into a narrow output (an image layer, a last transposed
  conv's phases) runs as matmuls on CPU, forward and backward: XLA:CPU's
  convolution kernel gradient for these shapes is the slow part it replaces."""
  x = jnp.ones((2, 14, 14, 40))
  for layer in (Conv(3, 4, 1), ConvTranspose(1, 4, 2)):
    params = layer.init(jax.random.PRNGKey(0), x)
    step = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(layer.apply(p, x) ** 2), argnums=(0, 1)))
    hlo = step.lower(params, x).compile().as_text()
    assert "convolution(" not in hlo and "dot(" in hlo, type(layer).__name__
  strided = Conv(3, 4, 2)   # stride 2 keeps XLA's convolution
  params = strided.init(jax.random.PRNGKey(0), x)
  assert "convolution(" in jax.jit(strided.apply).lower(params, x).compile().as_text()
  low = Conv(3, 4, 1, param_dtype=jnp.bfloat16)   # and so do bfloat16 parameters
  params = low.init(jax.random.PRNGKey(0), x)
  assert "convolution(" in jax.jit(low.apply).lower(params, x).compile().as_text()


def _cpu_ops(layer, x):
  params = layer.init(jax.random.PRNGKey(0), x)
  step = jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(layer.apply(p, x) ** 2), argnums=(0, 1)))
  hlo = step.lower(params, x).compile().as_text()
  return "convolution(" in hlo, "dot(" in hlo


def test_wide_stride_1_layers_with_a_5x5_window_take_xla_convolution():
  """im2col's patches grow with the window: from 5x5 (stride 1, float32) the
  CPU path is XLA's convolution, below it (and in bfloat16) matmuls."""
  x = jnp.ones((2, 8, 8, 40))
  assert _cpu_ops(Conv(40, 5, 1), x) == (True, False)
  assert _cpu_ops(ConvTranspose(40, 5, 1), x) == (True, False)
  assert _cpu_ops(Conv(40, 3, 1), x) == (False, True)
  assert _cpu_ops(ConvTranspose(40, 4, 2), x) == (False, True)   # a 2x2 phase window
  assert _cpu_ops(Conv(40, 5, 2), x) == (False, True)
  assert _cpu_ops(Conv(40, 5, 1, dtype=jnp.bfloat16), x)[1]
  assert _cpu_ops(Conv(40, 5, 1, param_dtype=jnp.bfloat16), x)[1]   # bfloat16 operands
  # Same output and gradients as flax's transposed convolution.
  ref = nn.ConvTranspose(40, (5, 5), (1, 1), "SAME")
  x = jax.random.normal(jax.random.PRNGKey(2), (2, 8, 8, 40))
  params = ref.init(jax.random.PRNGKey(1), x)
  fast = ConvTranspose(40, 5, 1)
  np.testing.assert_allclose(fast.apply(params, x), ref.apply(params, x), atol=1e-5)
  loss = lambda m: lambda p, x: jnp.sum(jnp.sin(m.apply(p, x)))
  for a, b in zip(jax.tree.leaves(jax.grad(loss(fast), (0, 1))(params, x)),
                  jax.tree.leaves(jax.grad(loss(ref), (0, 1))(params, x))):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_shift_conv_rejects_an_empty_output():
  with pytest.raises(ValueError, match="no output"):
    shift_conv(jnp.ones((1, 3, 3, 40)), jnp.ones((5, 5, 40, 2)), "VALID")


@on_devices(4)
def test_shift_conv_under_shard_map_sums_the_replicated_kernels_cotangent():
  """In a data-parallel step the kernel is replicated and the images are
  split: the kernel's gradient is summed over the mesh (as for XLA's
  convolution), also when only the input gradient is asked for (G's update
  through D)."""
  from jax.sharding import PartitionSpec as P
  mesh = jax.make_mesh((len(jax.devices()),), ("data",))
  x = jax.random.normal(jax.random.PRNGKey(0), (2 * len(jax.devices()), 6, 6, 32))
  kernel = 0.1 * jax.random.normal(jax.random.PRNGKey(1), (3, 3, 32, 2))
  xla = lambda x, kern: jax.lax.conv_general_dilated(
      x, kern, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  def grads(conv):
    @jax.jit
    @jax.shard_map(mesh=mesh, in_specs=(P("data"), P()), out_specs=(P("data"), P()))
    def f(x, kern):
      loss = lambda x, kern: jax.lax.psum(jnp.sum(jnp.sin(conv(x, kern))), "data")
      gx = jax.grad(loss)(x, kern)                   # the input only
      return gx, jax.grad(loss, argnums=1)(x, kern)  # and the replicated kernel
    return f(jax.device_put(x, jax.NamedSharding(mesh, P("data"))),
             jax.device_put(kernel, jax.NamedSharding(mesh, P())))
  for a, b in zip(grads(lambda x, k: shift_conv(x, k, "SAME")), grads(xla)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * float(np.abs(b).max()))


@pytest.mark.parametrize("padding,takes_shift_conv", [
    ("SAME", True), (((1, 1), (0, 2)), True), (((1, -1), (0, 0)), False), ("CIRCULAR", False),
    (1, False)])
def test_which_padding_takes_shift_conv(padding, takes_shift_conv):
  from gan_jax import layers
  assert (layers._shift_conv_padding(padding) is not None) == takes_shift_conv
