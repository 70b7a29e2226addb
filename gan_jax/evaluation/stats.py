"""GAN scores on device, in JAX: Fréchet distance (FID), KID, Inception Score
and precision/recall, from features of any extractor.

Moments stream in float64 (Chan et al.'s pairwise update, so the covariance
is accurate however many batches arrive), and the matrix square root of the
Fréchet distance comes from two symmetric eigendecompositions on device:

  tr sqrt(S1 S2) = tr sqrt(A S2 A),  A = S1^(1/2)   (A S2 A is symmetric PSD)

so no scipy and no host round trip. float64 needs JAX's x64 mode: every
function here that needs it switches it on for its own computation only
(`jax.enable_x64`), so the rest of the program stays in float32.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from gan_jax.errors import UserError


class FewSamplesError(UserError, ValueError):
  """Fewer samples than feature dimensions: the covariance is singular and
  the Fréchet distance is biased far beyond its usual bias."""


class Moments(NamedTuple):
  """Streaming mean and centred second moment (float64), n samples."""
  n: jax.Array       # float64 scalar
  mean: jax.Array    # (d,)
  m2: jax.Array      # (d, d): sum of outer products of centred samples

  @property
  def cov(self) -> jax.Array:
    """Unbiased covariance (n - 1), as numpy.cov and the FID references."""
    with jax.enable_x64(True):
      return self.m2 / (self.n - 1)


def init_moments(dim: int) -> Moments:
  with jax.enable_x64(True):
    return Moments(jnp.zeros((), jnp.float64), jnp.zeros((dim,), jnp.float64),
                   jnp.zeros((dim, dim), jnp.float64))


@jax.jit
def _update(m: Moments, x: jax.Array) -> Moments:
  x = x.astype(jnp.float64)
  nb = jnp.asarray(x.shape[0], jnp.float64)
  mean_b = x.mean(0)
  xc = x - mean_b
  m2_b = jnp.matmul(xc.T, xc, precision="highest")
  n = m.n + nb
  delta = mean_b - m.mean
  return Moments(n, m.mean + delta * (nb / n),
                 m.m2 + m2_b + jnp.outer(delta, delta) * (m.n * nb / n))


def update_moments(m: Moments, features) -> Moments:
  """Adds a batch (N, d) of features; the batch may be sharded over devices
  (the reduction over its rows is then a cross-device sum)."""
  with jax.enable_x64(True):
    return _update(m, features)


def moments_of(features) -> Moments:
  return update_moments(init_moments(features.shape[-1]), features)


@jax.jit
def _sqrt_psd(s: jax.Array) -> jax.Array:
  w, v = jnp.linalg.eigh(s)
  return (v * jnp.sqrt(jnp.clip(w, 0.0))) @ v.T


@jax.jit
def _frechet(mu1, s1, mu2, s2):
  a = _sqrt_psd(s1)
  m = a @ s2 @ a
  eig = jnp.linalg.eigvalsh((m + m.T) / 2)
  tr_covmean = jnp.sum(jnp.sqrt(jnp.clip(eig, 0.0)))
  diff = mu1 - mu2
  return diff @ diff + jnp.trace(s1) + jnp.trace(s2) - 2.0 * tr_covmean


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), in float64 on device.
  Negative eigenvalues from rounding or rank deficiency are clipped at 0,
  so singular covariances give a finite value."""
  with jax.enable_x64(True):
    args = [jnp.asarray(np.asarray(a, np.float64)) for a in (mu1, sigma1, mu2, sigma2)]
    if args[1].shape != args[3].shape or args[0].shape != args[2].shape:
      raise ValueError(f"feature dimensions differ: mean {args[0].shape} vs {args[2].shape}, "
                       f"covariance {args[1].shape} vs {args[3].shape}")
    return float(_frechet(*args))


def check_sample_count(n: int, dim: int, what: str, allow_few: bool = False) -> None:
  if n < 2:
    raise FewSamplesError(f"{what}: {n} sample(s); a covariance needs at least 2")
  if n < dim and not allow_few:
    raise FewSamplesError(
        f"{what}: {n} samples for {dim}-dimensional features; with fewer samples "
        f"than dimensions the covariance is singular and the Fréchet distance is "
        f"heavily biased (use >= {dim}, or allow it explicitly: eval.allow_few_samples)")


def frechet_from_moments(real: Moments, fake: Moments, allow_few: bool = False) -> float:
  dim = real.mean.shape[0]
  check_sample_count(int(real.n), dim, "real features", allow_few)
  check_sample_count(int(fake.n), dim, "generated features", allow_few)
  return frechet_distance(real.mean, real.cov, fake.mean, fake.cov)


# --- KID ----------------------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("num_subsets", "subset_size"))
def _kid(key, fx, fy, *, num_subsets: int, subset_size: int):
  d = fx.shape[1]
  m = subset_size

  def one(k):
    kx, ky = jax.random.split(k)
    x = fx[jax.random.choice(kx, fx.shape[0], (m,), replace=False)]
    y = fy[jax.random.choice(ky, fy.shape[0], (m,), replace=False)]
    # Gram matrices in float32 (the matmul cost), the kernel and its sums in float64.
    kern = lambda a, b: (jnp.matmul(a, b.T, precision="highest").astype(jnp.float64)
                         / d + 1.0) ** 3
    kxx, kyy, kxy = kern(x, x), kern(y, y), kern(x, y)
    same = (kxx.sum() - jnp.trace(kxx) + kyy.sum() - jnp.trace(kyy)) / (m * (m - 1))
    return same - 2.0 * kxy.sum() / (m * m)

  mmd = jax.lax.map(one, jax.random.split(key, num_subsets))
  return mmd.mean(), mmd.std()


def kernel_inception_distance(real, fake, *, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float]:
  """Unbiased MMD^2 with the cubic polynomial kernel (x.y/d + 1)^3, averaged
  over random subsets of min(subset_size, n_real, n_fake) samples each
  (Bińkowski et al. 2018); returns (mean, std over subsets)."""
  real, fake = np.asarray(real, np.float32), np.asarray(fake, np.float32)
  m = min(subset_size, len(real), len(fake))
  if m < 2:
    raise FewSamplesError(f"KID needs at least 2 samples per set, got {len(real)} real "
                          f"and {len(fake)} generated")
  with jax.enable_x64(True):
    mean, std = _kid(jax.random.PRNGKey(seed), jnp.asarray(real), jnp.asarray(fake),
                     num_subsets=num_subsets, subset_size=m)
    return float(mean), float(std)


# --- Inception Score ----------------------------------------------------------

@functools.partial(jax.jit, static_argnames=("splits",))
def _inception_score(logits, *, splits: int):
  logp = jax.nn.log_softmax(logits.astype(jnp.float64), axis=-1)
  n = logp.shape[0] // splits * splits
  logp = logp[:n].reshape(splits, -1, logp.shape[-1])
  p = jnp.exp(logp)
  log_py = jnp.log(p.mean(axis=1, keepdims=True))
  kl = jnp.sum(p * (logp - log_py), axis=-1).mean(axis=1)
  scores = jnp.exp(kl)
  return scores.mean(), scores.std()


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """exp(E_x KL(p(y|x) || p(y))) from class logits, on `splits` equal parts
  (the remainder is dropped, as in the reference code); (mean, std) over them."""
  logits = np.asarray(logits)
  if not 1 <= splits <= len(logits):
    raise ValueError(f"Inception Score: {splits} splits of {len(logits)} samples")
  with jax.enable_x64(True):
    mean, std = _inception_score(jnp.asarray(logits), splits=splits)
    return float(mean), float(std)


# --- Precision / recall ---------------------------------------------------------

def _sq_dists(a, b):
  aa = jnp.sum(a * a, axis=1)[:, None]
  bb = jnp.sum(b * b, axis=1)[None, :]
  return jnp.maximum(aa + bb - 2.0 * jnp.matmul(a, b.T, precision="highest"), 0.0)


def _blocks(x, block: int):
  """Rows of x in equal blocks (padded with the last row), and the row count."""
  n = x.shape[0]
  pad = -n % block
  x = jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)]) if pad else x
  return x.reshape(-1, block, x.shape[1]), n


@functools.partial(jax.jit, static_argnames=("k", "block"))
def _knn_radii(x, *, k: int, block: int):
  """Squared distance of each row to its k-th nearest other row."""
  xb, n = _blocks(x, block)

  def kth(d):
    # The (k+1)-th smallest (the row itself is the first) by k+1 argmin
    # passes, each masking one entry: XLA:CPU's top_k over 10k columns is
    # ~20x slower.
    rows = jnp.arange(d.shape[0])
    for _ in range(k):
      d = d.at[rows, jnp.argmin(d, axis=1)].set(jnp.inf)
    return jnp.min(d, axis=1)

  r = jax.lax.map(lambda b: kth(_sq_dists(b, x)), xb)
  return r.reshape(-1)[:n]


@functools.partial(jax.jit, static_argnames=("block",))
def _coverage(queries, points, radii, *, block: int):
  """Number of queries inside at least one point's k-NN ball."""
  qb, n = _blocks(queries, block)
  inside = jax.lax.map(lambda b: jnp.any(_sq_dists(b, points) <= radii[None, :], axis=1), qb)
  return jnp.sum(inside.reshape(-1)[:n].astype(jnp.int32))


def precision_recall(real, fake, k: int = 3, block: int = 1000) -> tuple[float, float]:
  """Improved precision and recall (Kynkäänniemi et al. 2019): the manifold
  of a set is the union of balls reaching each sample's k-th nearest
  neighbour; precision = share of generated samples inside the real
  manifold, recall = share of real samples inside the generated one."""
  real, fake = jnp.asarray(real, jnp.float32), jnp.asarray(fake, jnp.float32)
  if min(len(real), len(fake)) <= k:
    raise FewSamplesError(f"precision/recall with k={k} needs more than {k} samples per "
                          f"set, got {len(real)} real and {len(fake)} generated")
  block = min(block, len(real), len(fake))
  r_real = _knn_radii(real, k=k, block=block)
  r_fake = _knn_radii(fake, k=k, block=block)
  precision = int(_coverage(fake, real, r_real, block=block)) / len(fake)
  recall = int(_coverage(real, fake, r_fake, block=block)) / len(real)
  return precision, recall
