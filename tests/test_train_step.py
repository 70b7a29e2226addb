import chex
import jax
import jax.numpy as jnp
import numpy as np

from gan_jax import data, train
from conftest import small_config


def _setup(cfg):
  c = train.build_components(cfg)
  mesh = train.make_mesh()
  return c, mesh, train.init_state(cfg, c, mesh), train.make_train_step(c, mesh)


def test_one_step_updates_everything_and_stays_finite():
  cfg = small_config()
  c, mesh, state, step = _setup(cfg)
  before = jax.device_get(state)
  batch = data.shard_batch(np.random.default_rng(0).uniform(
      -1, 1, (cfg.batch_size, 28, 28, 1)).astype(np.float32), mesh)
  state, metrics = step(state, batch)
  after = jax.device_get(state)
  chex.assert_tree_all_finite(after)
  chex.assert_tree_all_finite(metrics)
  assert int(after.step) == 1
  for name in ("g_params", "d_params", "g_batch_stats", "d_batch_stats"):
    changed = jax.tree.map(lambda a, b: not np.array_equal(a, b),
                           getattr(before, name), getattr(after, name))
    assert all(jax.tree.leaves(changed)), f"{name}: some leaves did not change"
  chex.assert_trees_all_equal_shapes(before, after)
  assert set(metrics) >= {"d_loss", "g_loss", "d_grad_norm", "g_grad_norm"}
  # BCE of a fresh D on balanced data is near log(2) per term.
  assert 0.5 < float(metrics["d_loss"]) < 3.0


def test_step_matches_plain_single_device_math():
  """The shard_map step on one device equals the loss/gradient written
  without any collective: checks the pmean/pcast bookkeeping."""
  cfg = small_config()
  c, mesh, state, step = _setup(cfg)
  batch = np.random.default_rng(1).uniform(-1, 1, (cfg.batch_size, 28, 28, 1)).astype(np.float32)
  s0 = jax.device_get(state)
  _, metrics = step(state, data.shard_batch(batch, mesh))

  # Reference D loss and gradient: no axis name, plain jax.grad.
  from gan_jax import models
  g, d = models.build_models(cfg.model)
  z_key = jax.random.split(jax.random.fold_in(s0.rng, 0), 4)[0]
  z = jax.random.normal(jax.random.fold_in(z_key, 0), (cfg.batch_size, cfg.model.latent_dim))
  fake, _ = g.apply({"params": s0.g_params, "batch_stats": s0.g_batch_stats}, z,
                    train=True, mutable=["batch_stats"])
  def d_loss(p):
    r, upd = d.apply({"params": p, "batch_stats": s0.d_batch_stats}, batch, train=True,
                     mutable=["batch_stats"])
    f, _ = d.apply({"params": p, **upd}, fake, train=True, mutable=["batch_stats"])
    return c.loss(r, f)[0]
  loss, grads = jax.value_and_grad(d_loss)(s0.d_params)
  np.testing.assert_allclose(metrics["d_loss"], loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["d_grad_norm"], float(jnp.sqrt(sum(
      jnp.sum(x ** 2) for x in jax.tree.leaves(grads)))), rtol=1e-4)


def test_state_is_donated():
  cfg = small_config()
  c, mesh, state, step = _setup(cfg)
  batch = data.shard_batch(np.zeros((cfg.batch_size, 28, 28, 1), np.float32), mesh)
  leaf = jax.tree.leaves(state.g_params)[0]
  step(state, batch)
  assert leaf.is_deleted()
