"""The JAX scores against NumPy/SciPy references and closed forms."""
import numpy as np
import pytest
import scipy.linalg

from gan_jax.evaluation import stats


def scipy_frechet(mu1, s1, mu2, s2):
  """pytorch-fid's calculate_frechet_distance (scipy.linalg.sqrtm of S1 S2)."""
  covmean, _ = scipy.linalg.sqrtm(s1 @ s2, disp=False)
  covmean = covmean.real
  diff = mu1 - mu2
  return diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)


def random_gaussian_features(rng, n, d, shift=0.0):
  a = rng.normal(size=(d, d)) / np.sqrt(d)
  return (rng.normal(size=(n, d)) @ a + shift).astype(np.float32)


def test_streaming_moments_match_numpy_float64():
  rng = np.random.default_rng(0)
  # a large common offset: naive E[xx^T] - mu mu^T in float32 would lose it
  x = random_gaussian_features(rng, 3000, 16, shift=1000.0)
  m = stats.init_moments(16)
  for batch in np.array_split(x, [7, 500, 1999, 2000]):   # uneven batches
    m = stats.update_moments(m, batch)
  x64 = x.astype(np.float64)
  assert m.mean.dtype == np.float64 and int(m.n) == 3000
  np.testing.assert_allclose(np.asarray(m.mean), x64.mean(0), rtol=1e-12)
  np.testing.assert_allclose(np.asarray(m.cov), np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-9)


def test_frechet_matches_scipy_on_random_gaussians():
  rng = np.random.default_rng(1)
  d = 64
  x = random_gaussian_features(rng, 2000, d)
  y = random_gaussian_features(rng, 2000, d, shift=0.3)
  mx, my = stats.moments_of(x), stats.moments_of(y)
  ours = stats.frechet_from_moments(mx, my)
  ref = scipy_frechet(np.asarray(mx.mean), np.asarray(mx.cov), np.asarray(my.mean),
                      np.asarray(my.cov))
  assert ours == pytest.approx(ref, rel=1e-6)


def test_identical_sets_give_zero():
  rng = np.random.default_rng(2)
  x = random_gaussian_features(rng, 500, 32)
  m = stats.moments_of(x)
  assert abs(stats.frechet_from_moments(m, m)) < 1e-8


def test_closed_form_for_known_gaussians():
  # Diagonal covariances commute: FD = |mu1-mu2|^2 + sum (sqrt(a) - sqrt(b))^2.
  mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
  a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 0.25])
  expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  assert stats.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(
      expected, rel=1e-12)
  # Rotated (non-diagonal) covariances: invariant under a common rotation.
  q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(3, 3)))
  got = stats.frechet_distance(q @ mu1, q @ np.diag(a) @ q.T, q @ mu2, q @ np.diag(b) @ q.T)
  assert got == pytest.approx(expected, rel=1e-9)


def test_rank_deficient_covariances_stay_finite():
  rng = np.random.default_rng(4)
  # 20 samples in 64 dimensions, and a feature that is always 0
  x = random_gaussian_features(rng, 20, 64)
  x[:, 5] = 0.0
  y = random_gaussian_features(rng, 20, 64)
  mx, my = stats.moments_of(x), stats.moments_of(y)
  value = stats.frechet_from_moments(mx, my, allow_few=True)
  assert np.isfinite(value) and value > 0
  # sqrt of rounding-level eigenvalues (~1e-15) leaves ~1e-6 of a trace of ~20
  assert stats.frechet_from_moments(mx, mx, allow_few=True) == pytest.approx(0.0, abs=1e-4)


def test_fewer_samples_than_dimensions_is_an_error():
  rng = np.random.default_rng(5)
  m = stats.moments_of(random_gaussian_features(rng, 20, 64))
  with pytest.raises(stats.FewSamplesError, match="20 samples for 64-dimensional"):
    stats.frechet_from_moments(m, m)


def test_frechet_dimension_mismatch_is_an_error():
  with pytest.raises(ValueError, match="feature dimensions differ"):
    stats.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def numpy_kid(x, y, num_subsets, m, seed):
  """Reference: clean-fid/Bińkowski's unbiased polynomial-kernel MMD, on the
  same subsets as ours (indices drawn with the same JAX keys)."""
  import jax
  d = x.shape[1]
  values = []
  for k in jax.random.split(jax.random.PRNGKey(seed), num_subsets):
    kx, ky = jax.random.split(k)
    xs = x[np.asarray(jax.random.choice(kx, len(x), (m,), replace=False))].astype(np.float64)
    ys = y[np.asarray(jax.random.choice(ky, len(y), (m,), replace=False))].astype(np.float64)
    kxx, kyy, kxy = ((xs @ xs.T / d + 1) ** 3, (ys @ ys.T / d + 1) ** 3,
                     (xs @ ys.T / d + 1) ** 3)
    a = (kxx.sum() - np.diag(kxx).sum()) + (kyy.sum() - np.diag(kyy).sum())
    values.append((a / (m - 1) - 2 * kxy.sum() / m) / m)
  return np.mean(values), np.std(values)


def test_kid_matches_numpy_reference():
  rng = np.random.default_rng(6)
  x = random_gaussian_features(rng, 300, 16)
  y = random_gaussian_features(rng, 250, 16, shift=0.2)
  mean, std = stats.kernel_inception_distance(x, y, num_subsets=5, subset_size=100, seed=3)
  ref_mean, ref_std = numpy_kid(x, y, 5, 100, 3)
  assert mean == pytest.approx(ref_mean, rel=1e-5)
  assert std == pytest.approx(ref_std, rel=1e-4)
  # same distribution: unbiased, so close to 0 (and it can go negative)
  same, _ = stats.kernel_inception_distance(x[:150], x[150:], num_subsets=5, subset_size=100)
  assert abs(same) < 0.1 * mean


def test_inception_score_bounds():
  n, c = 1000, 10
  uniform = np.zeros((n, c), np.float32)
  assert stats.inception_score(uniform)[0] == pytest.approx(1.0, abs=1e-9)
  onehot = np.full((n, c), -1e4, np.float32)
  onehot[np.arange(n), np.arange(n) % c] = 0.0   # balanced and confident
  mean, std = stats.inception_score(onehot, splits=10)
  assert mean == pytest.approx(c, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)
  single, _ = stats.inception_score(onehot, splits=1)
  assert single == pytest.approx(c, rel=1e-9)
  with pytest.raises(ValueError, match="splits"):
    stats.inception_score(uniform[:5], splits=10)


def numpy_precision_recall(real, fake, k):
  def radii(x):
    d = ((x[:, None] - x[None]) ** 2).sum(-1)
    return np.sort(d, axis=1)[:, k]
  def coverage(q, p, r):
    d = ((q[:, None] - p[None]) ** 2).sum(-1)
    return np.mean(np.any(d <= r[None], axis=1))
  real, fake = real.astype(np.float64), fake.astype(np.float64)
  return coverage(fake, real, radii(real)), coverage(real, fake, radii(fake))


def test_precision_recall_matches_brute_force():
  rng = np.random.default_rng(7)
  real = rng.normal(size=(230, 8)).astype(np.float32)
  fake = (rng.normal(size=(170, 8)) * 0.5 + 1.0).astype(np.float32)  # a narrower, shifted set
  p, r = stats.precision_recall(real, fake, k=3, block=64)
  ref_p, ref_r = numpy_precision_recall(real, fake, 3)
  assert (p, r) == (pytest.approx(ref_p, abs=1e-6), pytest.approx(ref_r, abs=1e-6))
  assert p > r   # mode dropping shows as low recall
  same = stats.precision_recall(real, real, k=3)
  assert same == (1.0, 1.0)
