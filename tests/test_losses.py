"""The loss and penalty zoo against independently written closed forms.

Expected values are computed in float64 numpy from the published definitions,
never by calling the function under test: the adversarial losses on
hand-picked logits, the penalties on critics whose input gradients are known
analytically (linear, quadratic) or by central finite differences (tanh).
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan_jax import losses
from gan_jax.losses import LOSSES
from gan_jax.penalties import PENALTIES

# Hand-picked logits: both signs, and on both sides of the hinge margins
# (1 - r = [-1, 2, 0.5], 1 + f = [-2, 1, 2.5]), so a relu on the wrong side, a
# sign flip or a missing factor changes the value.
REAL = np.array([2.0, -1.0, 0.5])
FAKE = np.array([-3.0, 0.0, 1.5])
NOISY_TARGET = 1.0 + 0.05 * np.array([0.3, -0.8, 1.0])  # per-example smoothed labels


# ----------------------------------------------------------------------------
# Adversarial losses: closed forms in plain numpy, float64.


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def _log_sigmoid(x):
  return np.log(_sigmoid(x))


def _log_one_minus_sigmoid(x):
  return np.log(1.0 - _sigmoid(x))


def _bce(logits, target):
  """-[t log s(x) + (1 - t) log(1 - s(x))], averaged."""
  t = np.broadcast_to(np.asarray(target, np.float64), np.shape(logits))
  return np.mean(-(t * _log_sigmoid(logits) + (1.0 - t) * _log_one_minus_sigmoid(logits)))


def _gan_d(r, f, t):
  # -E[t log D(x) + (1 - t) log(1 - D(x))] - E[log(1 - D(G(z)))]
  return _bce(r, t) + np.mean(-_log_one_minus_sigmoid(f))


def cf_minimax(r, f, t=1.0):
  return _gan_d(r, f, t), np.mean(_log_one_minus_sigmoid(f))


def cf_non_saturating(r, f, t=1.0):
  return _gan_d(r, f, t), -np.mean(_log_sigmoid(f))


def cf_non_saturating_joint(r, f, t=1.0):
  # BCE over the concatenated real+fake batch (equal sizes): half the sum.
  t = np.broadcast_to(np.asarray(t, np.float64), np.shape(r))
  logits = np.concatenate([r, f])
  targets = np.concatenate([t, np.zeros_like(f)])
  return _bce(logits, targets), -np.mean(_log_sigmoid(f))


def cf_least_squares(r, f, t=1.0):
  # Mao et al. 2017 with a = 0 (fake), b = 1 (real, or the smoothed target),
  # c = 1 (what G wants D to say about fakes).
  d = 0.5 * np.mean((np.asarray(r) - t) ** 2) + 0.5 * np.mean((np.asarray(f) - 0.0) ** 2)
  return d, 0.5 * np.mean((np.asarray(f) - 1.0) ** 2)


def cf_wasserstein(r, f):
  return np.mean(f) - np.mean(r), -np.mean(f)


def cf_hinge(r, f):
  d = np.mean(np.maximum(0.0, 1.0 - np.asarray(r))) + np.mean(np.maximum(0.0, 1.0 + np.asarray(f)))
  return d, -np.mean(f)


CLOSED_FORMS = {
    "minimax": cf_minimax,
    "non_saturating": cf_non_saturating,
    "non_saturating_joint": cf_non_saturating_joint,
    "least_squares": cf_least_squares,
    "wasserstein": cf_wasserstein,
    "hinge": cf_hinge,
}
TAKES_TARGET = {"minimax", "non_saturating", "non_saturating_joint", "least_squares"}

# Hand-computed numbers for the default target, as a check on the closed forms
# themselves (e.g. hinge D = (0 + 2 + 0.5)/3 + (0 + 1 + 2.5)/3 = 2).
HAND = {
    "wasserstein": (-0.5 - 0.5, 0.5),
    "hinge": (2.0, 0.5),
    "least_squares": (0.5 * (1 + 4 + 0.25) / 3 + 0.5 * (9 + 0 + 2.25) / 3,
                      0.5 * (16 + 1 + 0.25) / 3),
}


def _f32(x):
  return jnp.asarray(x, jnp.float32)


def test_every_registered_loss_has_a_closed_form():
  assert set(LOSSES) == set(CLOSED_FORMS), (
      "a loss was added to or removed from LOSSES: give it a closed form here")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_loss_matches_closed_form(name):
  d, g = LOSSES[name](_f32(REAL), _f32(FAKE))
  assert jnp.shape(d) == () and jnp.shape(g) == ()
  want_d, want_g = CLOSED_FORMS[name](REAL, FAKE)
  np.testing.assert_allclose(float(d), want_d, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(g), want_g, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(HAND))
def test_closed_forms_match_hand_computed_numbers(name):
  np.testing.assert_allclose(CLOSED_FORMS[name](REAL, FAKE), HAND[name], rtol=1e-12)


def test_bce_closed_forms_against_math():
  # log(sigmoid(2)) etc. written out with math, once, to pin the numpy helpers.
  want = -math.log(1.0 / (1.0 + math.exp(-2.0)))
  np.testing.assert_allclose(_bce([2.0], 1.0), want, rtol=1e-12)
  want = -math.log(1.0 - 1.0 / (1.0 + math.exp(3.0)))
  np.testing.assert_allclose(_bce([-3.0], 0.0), want, rtol=1e-12)


@pytest.mark.parametrize("target", [1.0, 0.9, 0.0, NOISY_TARGET], ids=["1", "0.9", "0", "noisy"])
def test_bce_helper(target):
  got = losses.bce(_f32(REAL), _f32(target))
  np.testing.assert_allclose(float(got), _bce(REAL, target), rtol=1e-5)


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_takes_real_target(name):
  assert losses.takes_real_target(LOSSES[name]) == (name in TAKES_TARGET)


@pytest.mark.parametrize("target", [0.9, NOISY_TARGET], ids=["const0.9", "noisy"])
@pytest.mark.parametrize("name", sorted(TAKES_TARGET))
def test_loss_with_real_target(name, target):
  d, g = LOSSES[name](_f32(REAL), _f32(FAKE), _f32(target))
  want_d, want_g = CLOSED_FORMS[name](REAL, FAKE, target)
  np.testing.assert_allclose(float(d), want_d, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(g), want_g, rtol=1e-5, atol=1e-6)
  # The target moves D's loss (on the reals) and never G's.
  d1, g1 = CLOSED_FORMS[name](REAL, FAKE, 1.0)
  assert abs(want_d - d1) > 1e-3
  assert want_g == g1


def test_per_example_target_is_not_averaged():
  # A per-example target differs from its mean for the reals' BCE and squares.
  for name in ("non_saturating", "least_squares"):
    d, _ = LOSSES[name](_f32(REAL), _f32(FAKE), _f32(NOISY_TARGET))
    d_mean, _ = CLOSED_FORMS[name](REAL, FAKE, float(np.mean(NOISY_TARGET)))
    assert abs(float(d) - d_mean) > 1e-4


def test_get_loss():
  for name in LOSSES:
    assert losses.get_loss(name) is LOSSES[name]


def test_get_loss_unknown_lists_registered_names():
  with pytest.raises(ValueError) as info:
    losses.get_loss("nope")
  message = str(info.value)
  assert "nope" in message
  for name in LOSSES:
    assert name in message


# ----------------------------------------------------------------------------
# Penalties. Images (B, 4, 4, 1); critics map them to per-example logits.

B, SHAPE = 6, (4, 4, 1)
N = int(np.prod(SHAPE))


def _images(seed, scale=1.0, shift=0.0):
  return np.random.default_rng(seed).normal(shift, scale, (B,) + SHAPE).astype(np.float32)


def _linear_weight(norm):
  w = np.random.default_rng(10).normal(size=SHAPE)
  return (w * norm / np.linalg.norm(w)).astype(np.float32)


def _linear_critic(w):
  return lambda x: jnp.sum(x * w, axis=(1, 2, 3))


def _capturing(critic, store):
  """critic, recording the (concrete) points it is evaluated at."""
  def wrapped(x):
    jax.debug.callback(lambda v: store.append(np.asarray(v, np.float64)), x)
    return critic(x)
  return wrapped


KEYS = [jax.random.key(0), jax.random.key(123)]


def test_every_registered_penalty_is_tested():
  assert set(PENALTIES) == {"gp", "dragan", "r1", "r2", "r1_lazy", "lecam"}, (
      "a penalty was added to or removed from PENALTIES: test it here (the last two: "
      "test_penalties.py)")


@pytest.mark.parametrize("norm", [2.5, 0.4])  # two-sided: ||W|| < 1 is penalised too
@pytest.mark.parametrize("key_index", [0, 1])
@pytest.mark.parametrize("name", ["gp", "dragan", "r1", "r2"])
def test_linear_critic_penalties_are_known_constants(name, key_index, norm):
  # grad_x sum(x * W) = W at every x: GP = DRAGAN = (||W|| - 1)^2 and
  # R1 = R2 = 0.5 ||W||^2, whatever the reals, the fakes and the key.
  critic = _linear_critic(_linear_weight(norm))
  want = {"gp": (norm - 1.0) ** 2, "dragan": (norm - 1.0) ** 2,
          "r1": 0.5 * norm ** 2, "r2": 0.5 * norm ** 2}[name]
  for seed in (1, 2):
    real, fake = _images(seed), _images(seed + 50, scale=3.0)
    got = PENALTIES[name](critic, jnp.asarray(real), jnp.asarray(fake), KEYS[key_index])
    assert jnp.shape(got) == ()
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_unit_norm_linear_critic_has_zero_gradient_penalty():
  critic = _linear_critic(_linear_weight(1.0))
  for name in ("gp", "dragan"):
    got = PENALTIES[name](critic, jnp.asarray(_images(1)), jnp.asarray(_images(2)), KEYS[0])
    assert abs(float(got)) < 1e-6


# A nonlinear critic: sum_k tanh(x_flat @ w)_k per example, numpy float64 twin.
_TANH_W = (np.random.default_rng(7).normal(size=(N, 8)) * 0.1).astype(np.float32)


def _tanh_critic(x):
  return jnp.sum(jnp.tanh(x.reshape(x.shape[0], -1) @ _TANH_W), axis=1)


def _tanh_critic_np(x_flat):  # one example, float64
  return np.sum(np.tanh(x_flat @ _TANH_W.astype(np.float64)))


def _fd_grad(f, x, h=1e-5):
  x = np.asarray(x, np.float64).ravel()
  g = np.empty_like(x)
  for j in range(x.size):
    e = np.zeros_like(x)
    e[j] = h
    g[j] = (f(x + e) - f(x - e)) / (2 * h)
  return g


def _fd_unit_norm_penalty(points):
  norms = np.array([np.linalg.norm(_fd_grad(_tanh_critic_np, p)) for p in points])
  return np.mean((norms - 1.0) ** 2), norms


@pytest.mark.parametrize("key_index", [0, 1])
def test_gradient_penalty_matches_finite_differences(key_index):
  key = KEYS[key_index]
  real, fake = _images(3), _images(4, scale=2.0, shift=0.5)
  # WGAN-GP: x_hat = e * real + (1 - e) * fake, one e ~ U(0, 1) per example,
  # drawn as jax.random.uniform(key, (B, 1, 1, 1)).
  eps = np.asarray(jax.random.uniform(key, (B, 1, 1, 1), jnp.float32), np.float64)
  x_hat = eps * real + (1.0 - eps) * fake
  want, norms = _fd_unit_norm_penalty(x_hat)
  assert np.ptp(norms) > 0.05 and want > 1e-2  # the critic is genuinely nonlinear
  assert norms.min() < 1.0 < norms.max()  # both sides of the two-sided penalty
  got = PENALTIES["gp"](_tanh_critic, jnp.asarray(real), jnp.asarray(fake), key)
  np.testing.assert_allclose(float(got), want, rtol=1e-4, atol=1e-6)
  # Neither the penalty at the reals nor at the fakes.
  for points in (real, fake):
    assert abs(_fd_unit_norm_penalty(points)[0] - want) > 1e-3


def test_gradient_penalty_evaluates_on_per_example_segments():
  real, fake = _images(5), _images(6, scale=2.0)
  seen = []
  PENALTIES["gp"](_capturing(_tanh_critic, seen), jnp.asarray(real), jnp.asarray(fake), KEYS[0])
  (x_hat,) = seen
  r, f = real.astype(np.float64).reshape(B, -1), fake.astype(np.float64).reshape(B, -1)
  x = x_hat.reshape(B, -1)
  # x_hat_i = e_i r_i + (1 - e_i) f_i with one scalar e_i in [0, 1] per example.
  e = np.sum((x - f) * (r - f), axis=1) / np.sum((r - f) ** 2, axis=1)
  assert np.all((e >= 0) & (e <= 1))
  np.testing.assert_allclose(x, e[:, None] * r + (1 - e[:, None]) * f, atol=1e-5)
  assert np.ptp(e) > 0.05  # not one e for the whole batch


# A quadratic critic: sum(a * x^2) per example, grad_x = 2 a x.
_QUAD_A = np.random.default_rng(8).uniform(0.05, 0.3, SHAPE).astype(np.float32)


def _quad_critic(x):
  return jnp.sum(_QUAD_A * x ** 2, axis=(1, 2, 3))


def _quad_grads(points):
  return (2.0 * _QUAD_A.astype(np.float64) * np.asarray(points, np.float64)).reshape(len(points), -1)


def _r1_closed_form(points):
  return 0.5 * np.mean(np.sum(_quad_grads(points) ** 2, axis=1))


@pytest.mark.parametrize("name", ["r1", "r2"])
def test_r1_r2_match_analytic_gradient(name):
  real, fake = _images(11), _images(12, scale=2.0)
  on = real if name == "r1" else fake
  want = _r1_closed_form(on)
  got = PENALTIES[name](_quad_critic, jnp.asarray(real), jnp.asarray(fake), KEYS[0])
  np.testing.assert_allclose(float(got), want, rtol=1e-5)
  other = fake if name == "r1" else real
  assert abs(_r1_closed_form(other) - want) > 1e-2 * want


def test_r1_ignores_fakes_and_r2_ignores_reals():
  real, fake = jnp.asarray(_images(11)), jnp.asarray(_images(12))
  other = jnp.asarray(_images(13, scale=5.0))
  r1 = PENALTIES["r1"]
  r2 = PENALTIES["r2"]
  np.testing.assert_allclose(float(r1(_quad_critic, real, fake, KEYS[0])),
                             float(r1(_quad_critic, real, other, KEYS[1])), rtol=1e-6)
  np.testing.assert_allclose(float(r2(_quad_critic, real, fake, KEYS[0])),
                             float(r2(_quad_critic, other, fake, KEYS[1])), rtol=1e-6)


def _quad_unit_norm_penalty(points):
  norms = np.linalg.norm(_quad_grads(points), axis=1)
  return np.mean((norms - 1.0) ** 2)


@pytest.mark.parametrize("key_index", [0, 1])
def test_dragan_matches_closed_form_at_reproduced_points(key_index):
  key = KEYS[key_index]
  real, fake = _images(21, scale=0.7, shift=0.2), _images(22)
  # DRAGAN (reference implementation): x_p = x + 0.5 std(x) U(0, 1) elementwise,
  # x_hat = e x + (1 - e) x_p with one e ~ U(0, 1) per example; keys as in
  # noise_key, eps_key = split(key).
  noise_key, eps_key = jax.random.split(key)
  noise = np.asarray(jax.random.uniform(noise_key, real.shape, jnp.float32), np.float64)
  eps = np.asarray(jax.random.uniform(eps_key, (B, 1, 1, 1), jnp.float32), np.float64)
  r = real.astype(np.float64)
  x_hat = eps * r + (1.0 - eps) * (r + 0.5 * np.std(r) * noise)
  want = _quad_unit_norm_penalty(x_hat)
  norms = np.linalg.norm(_quad_grads(x_hat), axis=1)
  assert norms.min() < 1.0 < norms.max()  # both sides of the two-sided penalty
  got = PENALTIES["dragan"](_quad_critic, jnp.asarray(real), jnp.asarray(fake), key)
  np.testing.assert_allclose(float(got), want, rtol=1e-4)
  assert abs(_quad_unit_norm_penalty(r) - want) > 1e-3  # the perturbation matters


def test_dragan_evaluates_near_the_reals_only():
  real = _images(21, scale=0.7, shift=0.2)
  r = real.astype(np.float64)
  half_std = 0.5 * np.std(r)
  values = []
  for fake_seed, key in ((22, KEYS[0]), (23, KEYS[1])):
    seen = []
    critic = _capturing(_quad_critic, seen)
    got = PENALTIES["dragan"](critic, jnp.asarray(real), jnp.asarray(_images(fake_seed, 4.0)), key)
    (x_hat,) = seen
    # Every evaluated point lies in [real, real + 0.5 std(real)] elementwise ...
    assert np.all(x_hat >= r - 1e-6)
    assert np.all(x_hat <= r + half_std + 1e-6)
    delta = (x_hat - r) / half_std
    assert delta.max() > 0.3  # ... and is genuinely perturbed, not the reals
    # ... and the value is the penalty at exactly those points.
    np.testing.assert_allclose(float(got), _quad_unit_norm_penalty(x_hat), rtol=1e-4)
    values.append(float(got))
  assert abs(values[0] - values[1]) > 1e-4  # the key matters, the (wild) fakes do not enter


def test_dragan_ignores_fakes():
  real = jnp.asarray(_images(21))
  a = PENALTIES["dragan"](_quad_critic, real, jnp.asarray(_images(22)), KEYS[0])
  b = PENALTIES["dragan"](_quad_critic, real, jnp.asarray(_images(23, scale=9.0)), KEYS[0])
  np.testing.assert_allclose(float(a), float(b), rtol=1e-6)


@pytest.mark.parametrize("name", ["gp", "dragan", "r1", "r2"])
def test_penalties_are_differentiable_in_critic_parameters(name):
  # D minimises loss + weight * penalty, so the penalty must carry a gradient
  # to D's parameters (double backprop). For sum(x * W):
  # d/dW (||W|| - 1)^2 = 2 (||W|| - 1) W / ||W||;  d/dW 0.5 ||W||^2 = W.
  w = _linear_weight(2.5)
  real, fake = jnp.asarray(_images(31)), jnp.asarray(_images(32))

  def penalty_of(w):
    return PENALTIES[name](_linear_critic(w), real, fake, KEYS[0])

  grad = np.asarray(jax.grad(penalty_of)(jnp.asarray(w)))
  assert np.all(np.isfinite(grad)) and np.any(grad != 0)
  w64 = w.astype(np.float64)
  norm = np.linalg.norm(w64)
  want = 2 * (norm - 1) * w64 / norm if name in ("gp", "dragan") else w64
  np.testing.assert_allclose(grad, want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["gp", "dragan", "r1", "r2"])
def test_penalties_jit(name):
  real, fake = jnp.asarray(_images(41)), jnp.asarray(_images(42))
  fn = jax.jit(lambda r, f, k: PENALTIES[name](_tanh_critic, r, f, k))
  eager = PENALTIES[name](_tanh_critic, real, fake, KEYS[1])
  np.testing.assert_allclose(float(fn(real, fake, KEYS[1])), float(eager), rtol=1e-5)


# ----------------------------------------------------------------------------
# WGAN weight clipping.


def test_clip_weights_clips_every_leaf_of_a_nested_tree():
  c = 0.01
  params = {
      "conv": {"kernel": np.array([[0.5, -0.5], [0.005, -0.02]], np.float32),
               "bias": np.array([0.0, 0.01, -0.01, 0.0099], np.float32)},
      "dense": {"inner": {"kernel": np.array([-3.0, 2e-3, 0.011], np.float32)}},
      "scale": np.float32(-7.0),
  }
  clipped = losses.clip_weights(params, c)
  assert jax.tree.structure(clipped) == jax.tree.structure(params)
  for got, orig in zip(jax.tree.leaves(clipped), jax.tree.leaves(params)):
    got, orig = np.asarray(got), np.asarray(orig)
    assert got.shape == orig.shape and got.dtype == orig.dtype
    inside = np.abs(orig) <= c
    np.testing.assert_array_equal(got[inside], orig[inside])  # untouched, bit for bit
    np.testing.assert_array_equal(got[~inside], np.float32(c) * np.sign(orig[~inside]))
    assert np.all(np.abs(got) <= np.float32(c))
  assert float(clipped["scale"]) == np.float32(-c)
  np.testing.assert_array_equal(np.asarray(clipped["dense"]["inner"]["kernel"]),
                                np.array([-c, 2e-3, c], np.float32))
