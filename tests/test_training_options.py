"""The training options of the zoo, each checked on one real compiled step:
n critic steps, weight clipping, EMA of G, label smoothing, spectral norm,
optimisers, and the errors for combinations that cannot work."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan_jax import components, configure, data
from gan_jax.config import ConfigError
from conftest import one_step, small_config, step_setup


@functools.lru_cache(maxsize=None)
def _cached_step(overrides: tuple):
  return one_step(small_config(**dict(overrides)))


def _step_with(**overrides):
  """One step of the small config with `overrides`, computed once per session."""
  return _cached_step(tuple(sorted(overrides.items())))


def _adam_count(opt_state):
  return int(opt_state[0].count)


def test_critic_steps_run_insideone_step():
  """d_steps=3: D's Adam has taken 3 updates, G's 1, in one compiled call."""
  _, after, metrics = _step_with(d_steps=3)
  assert _adam_count(after.d_opt_state) == 3
  assert _adam_count(after.g_opt_state) == 1
  assert int(after.step) == 1 and np.isfinite(metrics["d_loss"])


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
def test_each_critic_step_sees_its_own_batch():
  """Every one of the three critic batches is consumed: changing any one of
  them alone changes the outcome."""
  cfg = small_config(d_steps=3)
  c, mesh, _, step = step_setup(cfg)
  rng = np.random.default_rng(0)
  base = rng.uniform(-1, 1, (3 * cfg.batch_size, 28, 28, 1)).astype(np.float32)
  def d_params_after(batch):
    state, _ = step(components.init_state(cfg, c, mesh), data.shard_batch(batch, mesh))
    return jax.device_get(state.d_params)
  ref = d_params_after(base)
  for part in (0, 1, 2):
    changed = base.copy()
    changed[part * cfg.batch_size:(part + 1) * cfg.batch_size] *= -1
    diff = jax.tree.map(lambda a, b: float(np.abs(a - b).max()), ref, d_params_after(changed))
    assert max(jax.tree.leaves(diff)) > 0, part


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
def test_weight_clipping_bounds_every_d_param():
  _, after, _ = _step_with(**{"loss": "wasserstein", "d_weight_clip": 0.01,
                             "optim.name": "rmsprop", "optim.d_lr": 0.5})
  leaves = jax.tree.leaves(after.d_params)
  assert max(float(np.abs(p).max()) for p in leaves) <= 0.01 + 1e-7
  assert any(float(np.abs(p).max()) == pytest.approx(0.01) for p in leaves)  # it did clip


@pytest.mark.parametrize("decay,start,expect_blend", [(0.9, 0, True),
                                                      pytest.param(0.9, 5, False, marks=pytest.mark.slow)])
def test_ema_of_generator(decay, start, expect_blend):
  before, after, _ = _step_with(ema_decay=decay, ema_start=start)
  for e0, p1, e1 in zip(jax.tree.leaves(before.g_ema_params), jax.tree.leaves(after.g_params),
                        jax.tree.leaves(after.g_ema_params)):
    expected = decay * e0 + (1 - decay) * p1 if expect_blend else p1
    np.testing.assert_allclose(e1, expected, rtol=1e-6, atol=1e-7)


def test_samples_come_from_the_ema_params():
  cfg = small_config(ema_decay=0.9)
  c, mesh, state, _ = step_setup(cfg)
  z = components.fixed_latents(cfg, c, 4)
  noisy = state.replace(g_ema_params=jax.tree.map(lambda p: p + 0.5, state.g_ema_params))
  generate = components.make_generate(c)
  assert float(jnp.abs(generate(state, z) - generate(noisy, z)).max()) > 1e-3


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
def test_label_smoothing_changes_only_the_real_term():
  """real_label 0.9 raises D's BCE on real data versus target 1 by a known
  amount: BCE(l, 0.9) - BCE(l, 1) = 0.1 * mean(l)."""
  _, _, m1 = _step_with()
  _, _, m9 = _step_with(real_label=0.9)
  assert m9["d_real_logit"] == pytest.approx(m1["d_real_logit"], rel=1e-5)
  assert m9["d_loss"] - m1["d_loss"] == pytest.approx(0.1 * m1["d_real_logit"], abs=1e-5)


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
def test_noisy_labels_move_the_real_term():
  """Targets 1 + 0.05 U(0, 1): BCE(l, t) - BCE(l, 1) = -mean((t - 1) * l), a
  small non-zero change of the same logits."""
  _, _, a = _step_with(real_label_noise=0.05)
  _, _, b = _step_with()
  assert a["d_real_logit"] == pytest.approx(b["d_real_logit"], rel=1e-5)
  assert 0 < abs(a["d_loss"] - b["d_loss"]) < 0.05


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
def test_spectral_norm_discriminator_trains():
  _, after, metrics = _step_with(**{"model.kwargs.d_spectral_norm": True})
  stats = jax.tree_util.tree_flatten_with_path(after.d_batch_stats)[0]
  sigmas = [v for path, v in stats if "sigma" in jax.tree_util.keystr(path)]
  assert sigmas, "no spectral-norm statistics in d_batch_stats"
  assert np.isfinite(metrics["d_loss"])


def test_every_penalty_is_added_to_the_d_loss():
  weights = {"gp": 10.0, "dragan": 1.0, "r1": 2.0, "r2": 3.0}
  _, _, m = _step_with(loss="wasserstein", **{"model.kwargs.d_norm": "none"},
                       **{f"penalty.{k}": w for k, w in weights.items()})
  assert all(m[f"penalty_{k}"] > 0 for k in weights)
  expected = m["d_adv_loss"] + sum(w * m[f"penalty_{k}"] for k, w in weights.items())
  assert m["d_loss"] == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("overrides,message", [
    ({"loss": "hinge", "real_label": 0.9}, "label smoothing"),
    ({"loss": "wasserstein", "real_label_noise": 0.05}, "label smoothing"),
    ({"optim.name": "sgd"}, "unknown optimiser"),
    ({"d_steps": 0}, "d_steps"),
    ({"ema_decay": 1.0}, "ema_decay"),
    ({"model.latent_dist": "cauchy"}, "latent_dist"),
    ({"model.kwargs.d_norm": "group"}, "d_norm"),
    ({"model.image_size": 32}, "supports model.image_size 28"),
    ({"penalty.gp": -1.0}, "penalty.gp"),
])
def test_impossible_combinations_are_config_errors(overrides, message):
  with pytest.raises(ConfigError, match=message):
    configure.check_components(small_config(**overrides))


def test_readme_loss_example_registers_and_trains(monkeypatch):
  """The README's worked example, executed as written, adds a loss that the
  config can name and the step trains with."""
  import os
  import re
  from gan_jax import losses
  from conftest import ROOT
  readme = open(os.path.join(ROOT, "README.md")).read()
  block = re.search(r"<!-- example:loss -->\n```python\n(.*?)```", readme, re.S).group(1)
  monkeypatch.setattr(losses, "LOSSES", losses.LOSSES.copy())  # registration stays in this test
  exec(compile(block, "README.md", "exec"), {})
  assert "relativistic_average" in losses.LOSSES
  _, after, m = one_step(small_config(loss="relativistic_average", real_label=0.9))
  assert int(after.step) == 1 and np.isfinite(m["d_loss"]) and np.isfinite(m["g_loss"])
