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
