import re

import chex
import pytest
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from gan_jax import components, data, mesh as mesh_lib, schedule, step as step_lib
from conftest import small_config, step_setup as _setup


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


def _random_batches(cfg, c, n, seed=0):
  return np.random.default_rng(seed).uniform(
      -1, 1, (n, cfg.batch_size * cfg.d_steps, *c.image_shape)).astype(np.float32)


@pytest.mark.parametrize("overrides", [{}, pytest.param(
    {"loss": "wasserstein", "d_steps": 2, "model.kwargs.d_norm": "none", "penalty.gp": 10.0,
     "ema_decay": 0.9}, marks=pytest.mark.slow)])
def test_fused_steps_equal_single_steps(overrides):
  """k steps fused in one lax.scan call == k calls of the single step."""
  cfg = small_config(**overrides)
  c, mesh, state, step = _setup(cfg)
  k = 2
  batches = _random_batches(cfg, c, k)
  single, singles = state, []
  for b in batches:
    single, m = step(single, data.shard_batch(b, mesh))
    singles.append(m)
  fused = step_lib.make_train_steps(c, mesh)
  fused_state, stacked = fused(components.init_state(cfg, c, mesh),
                               data.shard_batch(batches, mesh, P(None, mesh_lib.AXIS)))
  chex.assert_trees_all_close(jax.device_get(fused_state), jax.device_get(single),
                              atol=1e-6, rtol=1e-6)
  assert all(v.shape == (k,) for v in stacked.values())
  chex.assert_trees_all_close(jax.device_get(stacked),
                              jax.tree.map(lambda *v: np.stack(v), *jax.device_get(singles)),
                              atol=1e-6, rtol=1e-6)


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
def test_fused_on_device_steps_equal_fed_steps():
  """Gathering the batch on device from indices == feeding the same images."""
  cfg = small_config()
  c, mesh, state, _ = _setup(cfg)
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (40, *c.image_shape), dtype=np.uint8)
  idx = rng.permutation(40)[:2 * cfg.batch_size].reshape(2, cfg.batch_size).astype(np.int32)
  fed = jax.device_get(data.gather_batch(images, idx, cfg.data.pixel_range))
  spec = P(None, mesh_lib.AXIS)
  a, ma = step_lib.make_train_steps(c, mesh)(state, data.shard_batch(fed, mesh, spec))
  b, mb = step_lib.make_train_steps(c, mesh, cfg.data.pixel_range, on_device=True)(
      components.init_state(cfg, c, mesh), data.shard_batch(idx, mesh, spec),
      mesh_lib.replicate(images, mesh))
  chex.assert_trees_all_close(jax.device_get(a), jax.device_get(b), atol=1e-6, rtol=1e-6)


def test_chunk_schedule_ends_chunks_at_events():
  events = {5, 10, 12}
  sizes = list(schedule.chunk_sizes(1, 14, 4, lambda n: n in events))
  assert sum(sizes) == 13 and set(sizes) <= {1, 4}
  ends = np.cumsum([1] + sizes)
  # No event falls strictly inside a chunk: each is some chunk's last step.
  for e in events:
    assert e in ends


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
def test_bfloat16_step_is_finite_and_multiplies_in_bfloat16():
  """Mixed precision: the step runs finite, its matmuls take bfloat16
  operands (forward and backward), and the float32 step has none."""
  cfg16 = small_config(**{"model.dtype": "bfloat16", "model.kwargs.g_features": 64,
                          "model.kwargs.d_features": 32})
  c, mesh, state, step = _setup(cfg16)
  batch = data.shard_batch(_random_batches(cfg16, c, 1)[0], mesh)
  hlo16 = step.lower(state, batch).compile().as_text()
  for _ in range(2):
    state, metrics = step(state, batch)
  chex.assert_tree_all_finite((jax.device_get(state), metrics))
  assert {p.dtype for p in jax.tree.leaves(state.g_params)} == {np.dtype("float32")}
  # XLA:CPU wraps each matmul in a fusion: (bf16, bf16) -> f32 computations.
  bf16_dots = re.findall(r"\(param_0[.\d]*: bf16\[[\d,]*\], param_1[.\d]*: bf16\[[\d,]*\]\) -> f32",
                         hlo16)
  assert len(bf16_dots) >= 9  # G's and D's wide layers: forward, input and weight gradients
  cfg32 = small_config(**{"model.kwargs.g_features": 64, "model.kwargs.d_features": 32})
  c32, mesh, state32, step32 = _setup(cfg32)
  assert "bf16" not in step32.lower(state32, batch).compile().as_text()
