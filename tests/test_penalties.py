"""Regularisers beyond the zoo's closed forms: LeCam's math and state, lazy
R1's schedule, a penalty on G, registration errors, and exact resume of a
run whose penalties carry state."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import one_step, small_config
from gan_jax import penalties, train
from gan_jax.errors import ConfigError
from test_reproducibility import assert_bitwise_equal

IDENTITY = lambda x: x


def test_lecam_matches_the_reference_formula():
  """Two updates by hand: zero-debiased EMAs (decay 0.99) of the mean real
  and fake logits, updated first, then relu-squared distances to them."""
  rng = np.random.default_rng(0)
  lecam = penalties.PENALTIES["lecam"]
  state = lecam.init_state()
  ema_r = ema_f = 0.0
  for t in (1, 2):
    real, fake = rng.normal(1.0, 1.0, 16), rng.normal(-1.0, 1.0, 16)
    value, state = lecam(None, None, None, None, logits=(jnp.asarray(real), jnp.asarray(fake)),
                         state=state, global_mean=IDENTITY)
    ema_r = 0.99 * ema_r + 0.01 * real.mean()
    ema_f = 0.99 * ema_f + 0.01 * fake.mean()
    a_r, a_f = ema_r / (1 - 0.99 ** t), ema_f / (1 - 0.99 ** t)
    want = np.mean(np.maximum(real - a_f, 0) ** 2) + np.mean(np.maximum(a_r - fake, 0) ** 2)
    np.testing.assert_allclose(float(value), want, rtol=1e-5)
    np.testing.assert_allclose(float(state["ema_real"]), ema_r, rtol=1e-5)
    np.testing.assert_allclose(float(state["ema_fake"]), ema_f, rtol=1e-5)
    assert float(state["count"]) == t
  # After the first update the anchors are the batch means themselves.
  assert want > 0


def test_lecam_gradient_pulls_logits_towards_the_anchors():
  lecam = penalties.PENALTIES["lecam"]
  real, fake = jnp.asarray([2.0, -0.5]), jnp.asarray([1.0, -3.0])
  grad_real, grad_fake = jax.grad(lambda r, f: lecam(
      None, None, None, None, logits=(r, f), state=lecam.init_state(), global_mean=IDENTITY)[0],
      argnums=(0, 1))(real, fake)
  # First update: the anchors are the batch means, a_R = 0.75, a_F = -1.
  np.testing.assert_allclose(grad_real, [2 * 3.0 / 2, 2 * 0.5 / 2], rtol=1e-5)
  np.testing.assert_allclose(grad_fake, [0.0, -2 * 3.75 / 2], rtol=1e-5, atol=1e-6)


def test_lazy_r1_runs_every_16_steps_with_weight_times_16():
  lazy = penalties.PENALTIES["r1_lazy"]
  assert lazy.every == 16 and lazy.on == "d"
  critic = lambda x: jnp.sum(3.0 * x, axis=(1, 2, 3))   # ||grad||^2 = 9 * 784
  real = jnp.ones((4, 28, 28, 1))
  for step, want in ((0, 16 * 0.5 * 9 * 784), (1, 0.0), (15, 0.0), (16, 16 * 0.5 * 9 * 784)):
    value, _ = lazy.apply(critic, real, real, None, step=jnp.asarray(step), state=None)
    np.testing.assert_allclose(float(value), want, rtol=1e-6)


@pytest.mark.slow
def test_lazy_r1_in_the_step_adds_its_scaled_weight_on_due_steps_only():
  cfg = small_config(**{"penalty.r1_lazy": 2.0})
  _, after0, m0 = one_step(cfg)
  assert m0["penalty_r1_lazy"] > 0
  np.testing.assert_allclose(m0["d_loss"] - m0["d_adv_loss"], 2.0 * m0["penalty_r1_lazy"],
                             rtol=1e-5)
  # Step 1: not due, so D's update is the unregularised one.
  _, lazy1, m1 = one_step(cfg, start_step=1)
  _, plain1, _ = one_step(small_config(), start_step=1)
  assert m1["penalty_r1_lazy"] == 0.0
  assert_bitwise_equal(lazy1.d_params, plain1.d_params)


@pytest.mark.slow
def test_a_penalty_on_g_enters_g_loss_and_changes_g(monkeypatch):
  monkeypatch.setattr(penalties, "PENALTIES", penalties.Registry("penalty"))

  @penalties.register("fake_energy", on="g")
  def fake_energy(critic, real, fake, key):
    return jnp.mean(fake ** 2)

  _, with_pen, m = one_step(small_config(**{"penalty.fake_energy": 5.0}))
  _, without, m0 = one_step(small_config())
  np.testing.assert_allclose(m["g_loss"] - m["g_adv_loss"], 5.0 * m["penalty_fake_energy"],
                             rtol=1e-5)
  np.testing.assert_allclose(m["g_adv_loss"], m0["g_loss"], rtol=1e-6)
  assert_bitwise_equal(with_pen.d_params, without.d_params)   # D does not see it
  assert not np.array_equal(jax.tree.leaves(with_pen.g_params)[0],
                            jax.tree.leaves(without.g_params)[0])


def test_registration_errors_are_clear(monkeypatch):
  monkeypatch.setattr(penalties, "PENALTIES", penalties.Registry("penalty"))
  with pytest.raises(ConfigError, match=r"cannot fill argument\(s\) \['scale'\]"):
    penalties.register("bad")(lambda critic, real, fake, key, scale: 0.0)
  with pytest.raises(ConfigError, match="on must be 'd' or 'g'"):
    penalties.register("bad", on="both")
  with pytest.raises(ConfigError, match="every must be an int >= 1"):
    penalties.register("bad", every=0)


def test_unknown_penalty_lists_the_registered_ones():
  from gan_jax import configure
  with pytest.raises(ConfigError, match=r"unknown penalty 'nope' \(penalty.nope\); "
                                        r"registered: dragan, gp, lecam, r1, r1_lazy, r2"):
    configure.check_components(small_config(**{"penalty.nope": 1.0}))


@pytest.mark.slow
@pytest.mark.usefixtures("no_local_idx_files")
def test_stateful_and_lazy_penalties_resume_exactly(tmp_path):
  """LeCam's EMAs live in the state: a run stopped at step 3 and resumed to
  step 6 equals the run that never stopped, state included."""
  common = dict(sample_every=0, checkpoint_every=100, steps_per_call=2,
                **{"data.on_device": True, "penalty.lecam": 0.3, "penalty.r1_lazy": 1.0})
  def run(steps, workdir):
    with tfds.testing.mock_data(num_examples=64):
      return jax.device_get(train.train_and_evaluate(small_config(num_steps=steps, **common),
                                                     str(workdir)))
  first = run(6, tmp_path / "first")
  assert float(first.aux["lecam"]["count"]) == 6 and float(first.aux["lecam"]["ema_real"]) != 0
  run(3, tmp_path / "resumed")
  resumed = run(6, tmp_path / "resumed")
  assert_bitwise_equal(first, resumed)
