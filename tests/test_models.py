import jax
import jax.numpy as jnp
import pytest

from gan_jax import models
from conftest import small_config


def test_dcgan28_shapes_and_collections():
  cfg = small_config()
  g, d = models.build_models(cfg.model)
  z = jnp.zeros((5, cfg.model.latent_dim))
  g_vars = g.init(jax.random.PRNGKey(0), z, train=False)
  assert set(g_vars) == {"params", "batch_stats"}
  x, upd = g.apply(g_vars, z, train=True, mutable=["batch_stats"])
  assert x.shape == (5, 28, 28, 1)
  assert float(jnp.abs(x).max()) <= 1.0  # tanh output
  d_vars = d.init(jax.random.PRNGKey(1), x, train=False)
  logits, _ = d.apply(d_vars, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (5,)
  assert models.image_shape(cfg.model) == (28, 28, 1)


def test_dcgan_init_statistics():
  cfg = small_config()
  g, _ = models.build_models(cfg.model)
  params = g.init(jax.random.PRNGKey(0), jnp.zeros((2, cfg.model.latent_dim)), train=False)["params"]
  kernel = params["Dense_0"]["kernel"]
  assert abs(float(kernel.std()) - 0.02) < 0.002
  scale = params["BatchNorm_0"]["scale"]
  assert abs(float(scale.mean()) - 1.0) < 0.01 and 0.005 < float(scale.std()) < 0.04


def test_phase_and_transpose_generators_agree():
  """The fast upsampling is a drop-in: same params, same images."""
  cfg = small_config()
  g_fast, _ = models.build_models(cfg.model)
  with cfg.unlocked():
    cfg.model.upsample = "transpose"
  g_ref, _ = models.build_models(cfg.model)
  z = jax.random.normal(jax.random.PRNGKey(0), (4, cfg.model.latent_dim))
  variables = g_fast.init(jax.random.PRNGKey(1), z, train=False)
  a = g_fast.apply(variables, z, train=False)
  b = g_ref.apply(variables, z, train=False)
  assert float(jnp.abs(a - b).max()) < 1e-5


def test_wrong_input_shape_is_caught():
  cfg = small_config()
  _, d = models.build_models(cfg.model)
  with pytest.raises(AssertionError):
    d.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 1)), train=False)


def test_unknown_names():
  cfg = small_config()
  with cfg.unlocked():
    cfg.model.name = "nope"
  with pytest.raises(ValueError, match="dcgan28"):
    models.build_models(cfg.model)
  with pytest.raises(ValueError, match="phase"):
    models.upsample_layer("nope")


def _compiled_g_gradient_hlo(cfg):
  """Compiled HLO of d(mean G(z)^2)/d(params) in training mode."""
  g, _ = models.build_models(cfg.model)
  z = jnp.ones((4, cfg.model.latent_dim))
  variables = g.init(jax.random.PRNGKey(0), z, train=False)

  def loss(params):
    x, _ = g.apply({**variables, "params": params}, z, train=True, mutable=["batch_stats"])
    return (x ** 2).mean()
  return jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()


@pytest.mark.parametrize("experiment", ["dcgan_fashion_mnist", "dcgan_color64", "lsgan_cifar10",
                                        "dcgan_celeba"])
def test_upsampling_has_no_transposed_conv_gradient_in_hlo(experiment):
  """The 'phase' upsampling compiles to no input-dilated convolution (what a
  transposed convolution and its gradients lower to, slow on XLA:CPU); the
  'transpose' reference layer does."""
  from gan_jax.config import load_config
  cfg = load_config(f"experiments/{experiment}.py")
  cfg.model.g_features, cfg.model.latent_dim = 32, 8
  assert "lhs_dilate" not in _compiled_g_gradient_hlo(cfg)
  cfg.model.upsample = "transpose"
  assert "lhs_dilate" in _compiled_g_gradient_hlo(cfg)


def test_bfloat16_models_keep_float32_params_and_outputs():
  cfg = small_config(**{"model.dtype": "bfloat16"})
  g, d = models.build_models(cfg.model)
  z = jnp.ones((4, cfg.model.latent_dim))
  g_vars = g.init(jax.random.PRNGKey(0), z, train=False)
  x = g.apply(g_vars, z, train=False)
  d_vars = d.init(jax.random.PRNGKey(1), x, train=False)
  assert {p.dtype for p in jax.tree.leaves((g_vars, d_vars))} == {jnp.dtype("float32")}
  assert x.dtype == jnp.float32 and d.apply(d_vars, x, train=False).dtype == jnp.float32
  # Same weights in float32: the outputs differ by bfloat16 rounding only.
  g32, _ = models.build_models(small_config().model)
  x32 = g32.apply(g_vars, z, train=False)
  err = float(jnp.abs(x - x32).max())
  assert 0 < err < 0.05


def test_unknown_compute_dtype():
  cfg = small_config(**{"model.dtype": "float16"})
  with pytest.raises(models.ConfigError, match="model.dtype"):
    models.build_models(cfg.model)
