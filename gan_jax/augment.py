"""Differentiable augmentation of the discriminator's inputs (DiffAugment,
Zhao et al. 2020), and ADA's controller of its probability (Karras et al.
2020).

With little data D memorises the training set and G's signal collapses.
Augmenting *both* real and generated images before D, with transforms that
are differentiable in the images (so G's gradient flows through them),
regularises D without the augmentations leaking into G's samples.

An augmentation is a function registered by name,

  @augment.register("name")
  def fn(key, x) -> x

taking a PRNG key and float32 (N, H, W, C) images in [-1, 1] and returning
the augmented batch, same shape and dtype, each image with its own random
parameters drawn from `key`. It must be pure jax with static shapes, so
that it runs under jit, vmap and shard_map. `augment` applies a policy (a
tuple of names, see `parse_policy`) with a per-image probability p, which
`adjust_probability` can tune during training from D's outputs on reals.

The built-ins follow the reference code's 'color', 'translation' and
'cutout' policies and constants. The reference works on [-1, 1] images and
fills with 0 (mid-grey) where translation uncovers or cutout erases pixels;
so do these, in [-1, 1] terms, whatever `pixel_range` the caller uses.
"""
from __future__ import annotations

from typing import Callable, Iterable

import jax
import jax.numpy as jnp

from gan_jax.errors import ConfigError
from gan_jax.registry import Registry

Augmentation = Callable[[jax.Array, jax.Array], jax.Array]
AUGMENTATIONS: Registry = Registry("augmentation")

# Constants of the reference code.
FILL = 0.0                  # what [-1, 1] images are padded / cut out with
BRIGHTNESS = (-0.5, 0.5)    # added to every pixel
SATURATION = (0.0, 2.0)     # scales the deviation from the per-pixel channel mean
CONTRAST = (0.5, 1.5)       # scales the deviation from the per-image mean
TRANSLATION_RATIO = 1 / 8   # largest shift, as a fraction of the size
CUTOUT_RATIO = 1 / 2        # side of the erased rectangle, as a fraction of the size


def register(name: str) -> Callable[[Augmentation], Augmentation]:
  """`@augment.register("name")` over `fn(key, x) -> x`."""
  if not isinstance(name, str) or "," in name or name != name.strip():
    # A policy string is split on commas and stripped: such a name could never be named.
    raise ConfigError(f"augmentation name must not contain ',' or surrounding spaces, "
                      f"got {name!r}")
  return AUGMENTATIONS.register(name)


def _per_image_uniform(key, x, bounds) -> jax.Array:
  """U(lo, hi) per image, shaped (N, 1, 1, 1) to broadcast over the pixels."""
  lo, hi = bounds
  return jax.random.uniform(key, (x.shape[0], 1, 1, 1), x.dtype, lo, hi)


# Colour.

def adjust_color(x, brightness, saturation, contrast) -> jax.Array:
  """The reference's colour transforms, in its order, with the given
  per-image parameters (each broadcastable to (N, 1, 1, 1)). Saturation and
  contrast keep each image's mean, so the mean moves by `brightness` only."""
  x = x + brightness
  if x.shape[-1] > 1:   # one channel: no colour to (de)saturate
    pixel_mean = jnp.mean(x, axis=-1, keepdims=True)
    x = (x - pixel_mean) * saturation + pixel_mean
  image_mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - image_mean) * contrast + image_mean


def color_parameters(key, x) -> tuple[jax.Array, jax.Array, jax.Array]:
  """(brightness, saturation, contrast), each (N, 1, 1, 1), as "color" draws them."""
  kb, ks, kc = jax.random.split(key, 3)
  return (_per_image_uniform(kb, x, BRIGHTNESS), _per_image_uniform(ks, x, SATURATION),
          _per_image_uniform(kc, x, CONTRAST))


@register("color")
def rand_color(key, x):
  """Random brightness, saturation and contrast per image."""
  return adjust_color(x, *color_parameters(key, x))


# Translation.

def translate(x, dy, dx, fill: float = FILL) -> jax.Array:
  """Each image moved by whole pixels: image i's content moves down by
  dy[i] and right by dx[i] (int arrays (N,), negative = up / left); the
  uncovered border is `fill`. A gather with static shapes, differentiable
  in x."""
  n, h, w, _ = x.shape
  rows = jnp.arange(h)[None, :] - jnp.asarray(dy)[:, None]   # (N, H) source rows
  cols = jnp.arange(w)[None, :] - jnp.asarray(dx)[:, None]   # (N, W) source columns
  inside = (((rows >= 0) & (rows < h))[:, :, None] & ((cols >= 0) & (cols < w))[:, None, :])
  # Clipped indices read some valid pixel; `inside` then replaces it with the fill.
  moved = x[jnp.arange(n)[:, None, None], jnp.clip(rows, 0, h - 1)[:, :, None],
            jnp.clip(cols, 0, w - 1)[:, None, :]]
  return jnp.where(inside[..., None], moved, jnp.asarray(fill, x.dtype))


def _reference_round(size: int, ratio: float) -> int:
  """size * ratio rounded half up, as the reference computes its sizes
  (int(size * ratio + 0.5)): 28 pixels -> a shift of 4, not 28 // 8 = 3."""
  return int(size * ratio + 0.5)


def max_shift(size: int) -> int:
  """The largest shift along an axis of `size` pixels (size / 8, rounded half up)."""
  return _reference_round(size, TRANSLATION_RATIO)


@register("translation")
def rand_translation(key, x):
  """A shift per image, uniform over whole pixels in [-s, s] on each axis
  (s = `max_shift`), filling the uncovered border with 0."""
  ky, kx = jax.random.split(key)
  _, h, w, _ = x.shape
  sy, sx = max_shift(h), max_shift(w)
  dy = jax.random.randint(ky, (x.shape[0],), -sy, sy + 1)
  dx = jax.random.randint(kx, (x.shape[0],), -sx, sx + 1)
  return translate(x, dy, dx)


# Cutout.

def erase(x, top, left, height: int, width: int, fill: float = FILL) -> jax.Array:
  """Each image with rows [top[i], top[i] + height) x columns [left[i],
  left[i] + width) set to `fill`, clipped at the border (top / left may be
  negative). A mask with static shapes, differentiable in x."""
  _, h, w, _ = x.shape
  top, left = jnp.asarray(top)[:, None], jnp.asarray(left)[:, None]
  rows, cols = jnp.arange(h)[None, :], jnp.arange(w)[None, :]
  in_rows = (rows >= top) & (rows < top + height)   # (N, H)
  in_cols = (cols >= left) & (cols < left + width)  # (N, W)
  cut = in_rows[:, :, None, None] & in_cols[:, None, :, None]
  return jnp.where(cut, jnp.asarray(fill, x.dtype), x)


def cutout_size(size: int) -> int:
  """The side of the cut along an axis of `size` pixels (size / 2, rounded half up)."""
  return _reference_round(size, CUTOUT_RATIO)


@register("cutout")
def rand_cutout(key, x):
  """A `cutout_size` rectangle (half of each side) set to 0 per image,
  centred uniformly as in the reference (centre in [0, size], or [0, size)
  for an odd side), so that near the border it is clipped."""
  ky, kx = jax.random.split(key)
  _, h, w, _ = x.shape
  ch, cw = cutout_size(h), cutout_size(w)
  # The reference's offsets: randint(0, size + (1 - side % 2)), minus side // 2.
  cy = jax.random.randint(ky, (x.shape[0],), 0, h + 1 - ch % 2)
  cx = jax.random.randint(kx, (x.shape[0],), 0, w + 1 - cw % 2)
  return erase(x, cy - ch // 2, cx - cw // 2, ch, cw)


# Policy and probability.

def parse_policy(policy: str | Iterable[str]) -> tuple[str, ...]:
  """'color,translation,cutout' -> the registered names in order, each once;
  '' -> (). (A sequence of names is accepted too.) An unknown name is a
  ConfigError listing the registered augmentations."""
  if isinstance(policy, str):
    names = policy.split(",")
  elif isinstance(policy, Iterable):
    names = list(policy)
  else:
    raise ConfigError(f"augmentation policy must be a string like 'color,translation', "
                      f"got {policy!r}")
  out: list[str] = []
  for name in names:
    if not isinstance(name, str):
      raise ConfigError(f"augmentation policy {policy!r}: {name!r} is not a name")
    name = name.strip()
    if name and name not in out:
      AUGMENTATIONS.lookup(name, f"policy {policy!r}")
      out.append(name)
  return tuple(out)


def augment(x, key, policy: tuple[str, ...], p, pixel_range=(-1.0, 1.0)) -> jax.Array:
  """Each augmentation of `policy`, in order, applied to each image
  independently with probability `p` (a Python float or a traced scalar):
  a per-image Bernoulli draw picks the augmented or the unchanged image, so
  p == 0 returns x bitwise and p == 1 always augments. Images in
  `pixel_range` are mapped to [-1, 1] for the transforms and back; an image
  no augmentation picked is returned bitwise unchanged. Entry i of the
  policy draws from `jax.random.fold_in(key, i)`."""
  if x.ndim != 4:
    raise ValueError(f"augment expects (N, H, W, C) images, got shape {x.shape}")
  policy = tuple(policy)
  if isinstance(p, (int, float)):
    if not 0 <= p <= 1:
      raise ConfigError(f"augmentation probability must be in [0, 1], got {p}")
    if p == 0:
      return x   # statically off: no transform is traced at all
  if not policy:
    return x
  lo, hi = (float(v) for v in pixel_range)
  if not hi > lo:
    raise ConfigError(f"pixel_range must be (low, high) with low < high, got {pixel_range}")
  unit = (lo, hi) == (-1.0, 1.0)
  y = x if unit else (x - lo) * (2.0 / (hi - lo)) - 1.0
  p = jnp.asarray(p, jnp.float32)
  changed = jnp.zeros((x.shape[0],), bool)
  for index, name in enumerate(policy):
    fn = AUGMENTATIONS.lookup(name, "augmentation policy")
    mask_key, fn_key = jax.random.split(jax.random.fold_in(key, index))
    # uniform in [0, 1): never < 0, always < 1.
    picked = jax.random.uniform(mask_key, (x.shape[0],), jnp.float32) < p
    y = jnp.where(picked[:, None, None, None], fn(fn_key, y).astype(y.dtype), y)
    changed = changed | picked
  if not unit:
    y = (y + 1.0) * ((hi - lo) / 2.0) + lo
  # Untouched images skip the round trip through [-1, 1], so they stay bitwise x.
  return jnp.where(changed[:, None, None, None], y.astype(x.dtype), x)


def adjust_probability(p, real_sign_mean, *, target: float, batch: int,
                       speed_images: float = 500_000.0) -> jax.Array:
  """ADA's controller: with r_t = E[sign(D(real))] over the images since the
  last adjustment (`real_sign_mean`, already averaged), p moves by
  sign(r_t - target) * batch / speed_images, clipped to [0, 1]: D too sure
  of the reals (overfitting) -> more augmentation. `batch` is the number of
  images since the last adjustment, so p goes 0 -> 1 in `speed_images`
  images. Works on traced values; returns a float32 scalar."""
  if isinstance(batch, (int, float)) and batch <= 0:
    raise ConfigError(f"adjust_probability: batch must be > 0, got {batch}")
  if isinstance(speed_images, (int, float)) and speed_images <= 0:
    raise ConfigError(f"adjust_probability: speed_images must be > 0, got {speed_images}")
  direction = jnp.sign(jnp.asarray(real_sign_mean, jnp.float32) - jnp.float32(target))
  step = direction * (jnp.asarray(batch, jnp.float32) / jnp.float32(speed_images))
  return jnp.clip(jnp.asarray(p, jnp.float32) + step, 0.0, 1.0)
