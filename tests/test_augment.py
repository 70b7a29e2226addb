"""DiffAugment: the built-in transforms against hand-computed expectations,
the per-image probability, gradients through the transforms, pixel ranges,
jit / vmap / shard_map, policy parsing and ADA's controller of p."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan_jax import augment
from gan_jax.errors import ConfigError

BUILTINS = ("color", "translation", "cutout")
FULL = BUILTINS
SHAPES = ((8, 16, 16, 3), (8, 28, 28, 1))


def images(shape, seed=0, low=-1.0, high=1.0):
  return jax.random.uniform(jax.random.key(seed), shape, jnp.float32, low, high)


def changed_per_image(a, b):
  return np.any(np.asarray(a) != np.asarray(b), axis=(1, 2, 3))


def assert_bitwise_equal(a, b):
  a, b = np.asarray(a), np.asarray(b)
  assert a.dtype == b.dtype and a.shape == b.shape
  assert a.tobytes() == b.tobytes()


# Probability 0 and 1.

@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("policy", [(name,) for name in BUILTINS] + [FULL])
def test_p0_is_bitwise_identity(policy, shape):
  x = images(shape)
  key = jax.random.key(1)
  assert_bitwise_equal(augment.augment(x, key, policy, 0.0), x)
  # A traced p == 0 runs the transforms and must still select x everywhere.
  run = jax.jit(lambda x, key, p: augment.augment(x, key, policy, p))
  assert_bitwise_equal(run(x, key, jnp.float32(0.0)), x)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", BUILTINS)
def test_p1_changes_images(name, shape):
  x = images(shape)
  y = augment.augment(x, jax.random.key(2), (name,), 1.0)
  assert y.shape == x.shape and y.dtype == x.dtype
  changed = changed_per_image(x, y)
  if name == "translation":   # a (0, 0) shift is drawn with probability 1/25 or 1/49
    assert changed.sum() >= shape[0] // 2
  else:
    assert changed.all()


# Gradients.

@pytest.mark.parametrize("p", [1.0, 0.5])
@pytest.mark.parametrize("name", BUILTINS)
def test_gradients_flow_through_each_augmentation(name, p):
  n, h, w, c = 8, 16, 16, 3
  z = jax.random.normal(jax.random.key(0), (n, 4))
  weights = jax.random.normal(jax.random.key(1), (n, h, w, c))
  theta = 0.1 * jax.random.normal(jax.random.key(2), (4, h * w * c))

  def loss(theta):
    x = jnp.tanh(z @ theta).reshape(n, h, w, c)   # a tiny "generator"
    return jnp.sum(augment.augment(x, jax.random.key(3), (name,), p) * weights)

  grad = np.asarray(jax.grad(loss)(theta))
  assert np.all(np.isfinite(grad))
  assert np.any(grad != 0)


# Translation.

def test_translate_moves_a_pixel_by_exactly_the_shift():
  h, w = 16, 16
  x = np.full((1, h, w, 2), -1.0, np.float32)
  x[0, 5, 6] = 1.0
  x = jnp.asarray(np.repeat(x, 4, axis=0))
  dy, dx = np.array([0, 2, -2, 1]), np.array([0, -1, 2, -3])
  y = np.asarray(augment.translate(x, dy, dx))
  for i in range(4):
    expect = np.full((h, w, 2), -1.0, np.float32)
    expect[5 + dy[i], 6 + dx[i]] = 1.0
    # The uncovered rows / columns are the fill value (0 in [-1, 1] terms).
    if dy[i] > 0:
      expect[:dy[i]] = 0.0
    if dy[i] < 0:
      expect[h + dy[i]:] = 0.0
    if dx[i] > 0:
      expect[:, :dx[i]] = 0.0
    if dx[i] < 0:
      expect[:, w + dx[i]:] = 0.0
    np.testing.assert_array_equal(y[i], expect)


def test_translate_off_the_image_leaves_only_fill():
  x = jnp.ones((2, 8, 8, 1))
  y = augment.translate(x, np.array([8, 0]), np.array([0, -9]))
  np.testing.assert_array_equal(np.asarray(y), 0.0)


@pytest.mark.parametrize("shape", SHAPES)
def test_random_translation_is_a_whole_pixel_shift_of_at_most_an_eighth(shape):
  x = images(shape)
  y = np.asarray(augment.rand_translation(jax.random.key(4), x))
  s = {16: 2, 28: 4}[shape[1]]   # the reference's int(size / 8 + 0.5)
  found = {}
  for dy in range(-s, s + 1):
    for dx in range(-s, s + 1):
      n = x.shape[0]
      match = np.all(np.asarray(augment.translate(x, np.full(n, dy), np.full(n, dx))) == y,
                     axis=(1, 2, 3))
      for i in np.flatnonzero(match):
        found.setdefault(int(i), []).append((dy, dx))
  # Every image is exactly one of the allowed shifts, and the shifts differ per image.
  assert sorted(found) == list(range(shape[0]))
  assert all(len(v) == 1 for v in found.values())
  assert len({v[0] for v in found.values()}) > 1


@pytest.mark.parametrize("size", [16, 28])
def test_random_translation_reaches_its_whole_range(size):
  # One lit pixel in the middle of each image: where it lands is the shift.
  x = jnp.zeros((512, size, size, 1)).at[:, size // 2, size // 2].set(1.0)
  y = np.asarray(augment.rand_translation(jax.random.key(6), x))[..., 0]
  assert np.all(y.reshape(512, -1).max(1) == 1.0)   # no shift moves it off the image
  rows, cols = np.nonzero(y.max(2))[1], np.nonzero(y.max(1))[1]
  s = {16: 2, 28: 4}[size]   # the reference's int(size / 8 + 0.5)
  for shifts in (rows - size // 2, cols - size // 2):
    assert set(shifts.tolist()) == set(range(-s, s + 1))


def test_sizes_are_rounded_half_up_as_the_reference_rounds_them():
  # The reference: int(size * ratio + 0.5), not size // 8 or size // 2.
  assert [augment.max_shift(n) for n in (16, 27, 28, 32, 64)] == [2, 3, 4, 4, 8]
  assert [augment.cutout_size(n) for n in (15, 16, 28, 33)] == [8, 8, 14, 17]


# Cutout.

def test_erase_sets_exactly_the_clipped_rectangle():
  x = jnp.ones((3, 16, 16, 2))
  y = np.asarray(augment.erase(x, np.array([3, -4, 12]), np.array([5, -2, 10]), 8, 8))
  expect = np.ones((3, 16, 16, 2), np.float32)
  expect[0, 3:11, 5:13] = 0.0   # inside: 8 x 8
  expect[1, 0:4, 0:6] = 0.0     # clipped at the top-left corner: 4 x 6
  expect[2, 12:16, 10:16] = 0.0  # clipped at the bottom-right corner: 4 x 6
  np.testing.assert_array_equal(y, expect)


@pytest.mark.parametrize("shape", [(64, 16, 16, 3), (64, 28, 28, 1)])
def test_random_cutout_erases_a_half_size_square(shape):
  _, h, w, _ = shape
  x = images(shape, low=0.1, high=1.0)   # no pixel is 0 before the cut
  y = np.asarray(augment.rand_cutout(jax.random.key(5), x))
  cut = np.all(y == 0.0, axis=-1)
  # Everything else is untouched.
  np.testing.assert_array_equal(np.where(cut[..., None], np.asarray(x), y), np.asarray(x))
  full = 0
  for mask in cut:
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    assert rows.size and cols.size
    # One rectangle, at most (H/2) x (W/2), smaller only where it meets the border.
    assert mask.sum() == rows.size * cols.size
    assert rows.size <= h // 2 and cols.size <= w // 2
    assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
    if rows.size < h // 2:
      assert rows[0] == 0 or rows[-1] == h - 1
    if cols.size < w // 2:
      assert cols[0] == 0 or cols[-1] == w - 1
    full += mask.sum() == (h // 2) * (w // 2)
  assert 0 < full < len(cut)   # some inside, some clipped


# Colour.

@pytest.mark.parametrize("shape", SHAPES)
def test_color_moves_each_image_mean_by_its_brightness(shape):
  x = images(shape)
  key = jax.random.key(6)
  brightness, saturation, contrast = (np.asarray(v).ravel()
                                      for v in augment.color_parameters(key, x))
  assert np.all((-0.5 <= brightness) & (brightness <= 0.5))
  assert np.all((0.0 <= saturation) & (saturation <= 2.0))
  assert np.all((0.5 <= contrast) & (contrast <= 1.5))
  assert len(set(brightness)) == shape[0]   # per-image parameters
  y = augment.rand_color(key, x)
  shift = np.asarray(jnp.mean(y, axis=(1, 2, 3)) - jnp.mean(x, axis=(1, 2, 3)))
  np.testing.assert_allclose(shift, brightness, atol=1e-5)


def test_contrast_keeps_each_image_mean_and_scales_its_deviation():
  x = images((4, 16, 16, 3))
  c = jnp.array([0.5, 0.8, 1.2, 1.5]).reshape(4, 1, 1, 1)
  y = augment.adjust_color(x, 0.0, 1.0, c)
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(np.asarray(jnp.mean(y, axis=(1, 2, 3), keepdims=True)),
                             np.asarray(mean), atol=1e-6)
  np.testing.assert_allclose(np.asarray(y - mean), np.asarray((x - mean) * c), atol=1e-6)


def test_saturation_scales_the_deviation_from_the_pixel_mean():
  x = images((4, 8, 8, 3))
  s = jnp.array([0.0, 0.5, 1.0, 2.0]).reshape(4, 1, 1, 1)
  y = augment.adjust_color(x, 0.0, s, 1.0)
  pixel_mean = jnp.mean(x, axis=-1, keepdims=True)
  np.testing.assert_allclose(np.asarray(y), np.asarray((x - pixel_mean) * s + pixel_mean),
                             atol=1e-6)
  # Saturation 0 is grey: all channels equal.
  np.testing.assert_allclose(np.asarray(y[0] - y[0, ..., :1]), 0.0, atol=1e-6)


def test_saturation_is_the_identity_on_one_channel():
  x = images((4, 8, 8, 1))
  b = jnp.array([-0.5, -0.1, 0.2, 0.5]).reshape(4, 1, 1, 1)
  c = jnp.array([0.5, 0.9, 1.1, 1.5]).reshape(4, 1, 1, 1)
  y = augment.adjust_color(x, b, jnp.full((4, 1, 1, 1), 1.7), c)
  m = jnp.mean(x + b, axis=(1, 2, 3), keepdims=True)
  np.testing.assert_allclose(np.asarray(y), np.asarray((x + b - m) * c + m), atol=1e-6)


@pytest.mark.parametrize("name", BUILTINS)
def test_each_image_gets_its_own_parameters(name):
  x = jnp.broadcast_to(images((1, 16, 16, 3)), (8, 16, 16, 3))
  y = np.asarray(augment.augment(x, jax.random.key(7), (name,), 1.0))
  distinct = {y[i].tobytes() for i in range(8)}
  assert len(distinct) >= (8 if name == "color" else 3)


# Probability.

@pytest.mark.parametrize("name", BUILTINS)
def test_fraction_augmented_follows_p(name):
  shape = (4096, 16, 16, 1)
  x = images(shape)
  y = augment.augment(x, jax.random.key(8), (name,), 0.3)
  # A (0, 0) translation (1 in 25) leaves a picked image as it was.
  unchanged_when_picked = 1 / 25 if name == "translation" else 0.0
  fraction = changed_per_image(x, y).mean()
  assert abs(fraction - 0.3 * (1 - unchanged_when_picked)) < 0.03


def test_each_policy_entry_is_drawn_independently(monkeypatch):
  monkeypatch.setattr(augment, "AUGMENTATIONS", augment.AUGMENTATIONS.copy())
  augment.register("plus_one")(lambda key, x: x + 1.0)
  augment.register("plus_two")(lambda key, x: x + 2.0)
  x = jnp.zeros((4096, 2, 2, 1))
  y = np.asarray(augment.augment(x, jax.random.key(9), ("plus_one", "plus_two"), 0.3))
  added = y[:, 0, 0, 0]
  one, two = np.isin(added, (1.0, 3.0)), np.isin(added, (2.0, 3.0))
  assert abs(one.mean() - 0.3) < 0.03 and abs(two.mean() - 0.3) < 0.03
  assert abs((one & two).mean() - 0.09) < 0.02


# Pixel range.

def test_pixel_range_0_1_round_trips():
  x01 = images((8, 16, 16, 3), low=0.0, high=1.0)
  key = jax.random.key(10)
  assert_bitwise_equal(augment.augment(x01, key, FULL, 0.0, pixel_range=(0.0, 1.0)), x01)
  traced = jax.jit(lambda x, p: augment.augment(x, key, FULL, p, pixel_range=(0.0, 1.0)))
  assert_bitwise_equal(traced(x01, jnp.float32(0.0)), x01)
  for policy in (("translation",), FULL):
    y01 = augment.augment(x01, key, policy, 1.0, pixel_range=(0.0, 1.0))
    y11 = augment.augment(x01 * 2.0 - 1.0, key, policy, 1.0)
    np.testing.assert_allclose(np.asarray(y01), np.asarray((y11 + 1.0) / 2.0), atol=1e-6)
  # The fill is mid-grey in the caller's range too.
  y = np.asarray(augment.augment(x01, key, ("cutout",), 1.0, pixel_range=(0.0, 1.0)))
  assert np.any(np.all(y == 0.5, axis=-1))


# Transformations of the function.

def test_jit_and_vmap_over_members_with_traced_p():
  members = 3
  x = jnp.stack([images((8, 16, 16, 3), seed=s) for s in range(members)])
  keys = jax.random.split(jax.random.key(11), members)
  p = jnp.array([0.0, 1.0, 0.5], jnp.float32)
  run = jax.jit(jax.vmap(lambda x, key, p: augment.augment(x, key, FULL, p)))
  y = run(x, keys, p)
  assert_bitwise_equal(y[0], x[0])
  assert changed_per_image(x[1], y[1]).all()   # cutout always changes an image
  np.testing.assert_allclose(np.asarray(y[1]),
                             np.asarray(augment.augment(x[1], keys[1], FULL, 1.0)), atol=1e-6)


def test_runs_under_shard_map():
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
  P = jax.sharding.PartitionSpec

  # check_vma: the key and p are replicated, the images split; the mix must type-check.
  @functools.partial(jax.shard_map, mesh=mesh, in_specs=(P("data"), P(), P()),
                     out_specs=P("data"), check_vma=True)
  def run(x, key, p):
    return augment.augment(x, key, FULL, p)

  x, key = images((8, 16, 16, 3)), jax.random.key(12)
  y = jax.jit(run)(x, key, jnp.float32(1.0))
  np.testing.assert_allclose(np.asarray(y), np.asarray(augment.augment(x, key, FULL, 1.0)),
                             atol=1e-6)


# Policy parsing and registration.

def test_parse_policy_keeps_order_and_drops_duplicates():
  assert augment.parse_policy("") == ()
  assert augment.parse_policy("cutout,color") == ("cutout", "color")
  assert augment.parse_policy(" translation , color,translation,") == ("translation", "color")
  assert augment.parse_policy(["color", "color"]) == ("color",)


def test_parse_policy_unknown_name_lists_the_registered_ones():
  with pytest.raises(ConfigError, match="unknown augmentation 'colour'") as err:
    augment.parse_policy("colour,translation")
  assert "registered: color, cutout, translation" in str(err.value)


def test_user_registered_augmentation_is_used(monkeypatch):
  monkeypatch.setattr(augment, "AUGMENTATIONS", augment.AUGMENTATIONS.copy())

  @augment.register("negate")
  def negate(key, x):
    return -x

  assert augment.parse_policy("negate,cutout") == ("negate", "cutout")
  x = images((4, 8, 8, 3))
  assert_bitwise_equal(augment.augment(x, jax.random.key(13), ("negate",), 1.0), -x)


def test_user_registration_does_not_leak_out_of_the_copy():
  assert "negate" not in augment.AUGMENTATIONS
  assert "plus_one" not in augment.AUGMENTATIONS


def test_register_rejects_names_a_policy_cannot_spell(monkeypatch):
  monkeypatch.setattr(augment, "AUGMENTATIONS", augment.AUGMENTATIONS.copy())
  for bad in ("a,b", " padded", ""):
    with pytest.raises(ConfigError):
      augment.register(bad)(lambda key, x: x)


def test_bad_probability_and_pixel_range_are_config_errors():
  x = images((2, 8, 8, 1))
  with pytest.raises(ConfigError, match="probability"):
    augment.augment(x, jax.random.key(0), FULL, 1.5)
  with pytest.raises(ConfigError, match="pixel_range"):
    augment.augment(x, jax.random.key(0), FULL, 0.5, pixel_range=(1.0, 0.0))


# ADA's controller.

def test_adjust_probability_moves_towards_the_target():
  up = augment.adjust_probability(0.5, 0.9, target=0.6, batch=64, speed_images=6400.0)
  down = augment.adjust_probability(0.5, 0.2, target=0.6, batch=64, speed_images=6400.0)
  still = augment.adjust_probability(0.5, 0.6, target=0.6, batch=64, speed_images=6400.0)
  assert up.dtype == jnp.float32 and up.shape == ()
  np.testing.assert_allclose(float(up), 0.51, rtol=1e-6)
  np.testing.assert_allclose(float(down), 0.49, rtol=1e-6)
  assert float(still) == 0.5
  # Default speed: 0 -> 1 takes 500k images.
  np.testing.assert_allclose(float(augment.adjust_probability(0.0, 1.0, target=0.6, batch=500)),
                             1e-3, rtol=1e-5)


def test_adjust_probability_is_clipped_to_0_1():
  assert float(augment.adjust_probability(0.995, 1.0, target=0.6, batch=64,
                                          speed_images=6400.0)) == 1.0
  assert float(augment.adjust_probability(0.005, -1.0, target=0.6, batch=64,
                                          speed_images=6400.0)) == 0.0
  assert float(augment.adjust_probability(1.0, 1.0, target=0.6, batch=64)) == 1.0
  assert float(augment.adjust_probability(0.0, 0.0, target=0.6, batch=64)) == 0.0


def test_adjust_probability_on_traced_values():
  step = jax.jit(lambda p, r: augment.adjust_probability(p, r, target=0.6, batch=32,
                                                         speed_images=3200.0))
  p = jnp.float32(0.0)
  for r in (0.9, 0.9, 0.9, 0.1):
    p = step(p, jnp.float32(r))
  np.testing.assert_allclose(float(p), 0.02, atol=1e-6)
