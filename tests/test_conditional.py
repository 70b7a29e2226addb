"""Class conditioning (gan_jax.models.conditional) against hand-computed
values, the conditional step (ACGAN's class loss, generated labels), and
DiffAugment inside the step (identity at p = 0, gradients to G, ADA)."""
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from gan_jax import components, data, models
from gan_jax.components import ADA_KEY
from gan_jax.errors import ConfigError
from gan_jax.models import conditional
from conftest import small_config, step_setup


def test_conditional_batch_norm_is_batch_norm_with_a_gain_and_bias_per_class():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(6, 2, 2, 3)).astype(np.float32)
  labels = np.array([0, 1, 2, 1, 0, 2], np.int32)
  cbn = conditional.ConditionalBatchNorm(num_classes=3)
  variables = cbn.init(jax.random.PRNGKey(0), x, labels, train=False)
  gain = rng.normal(size=(3, 3)).astype(np.float32)
  bias = rng.normal(size=(3, 3)).astype(np.float32)
  params = {"gain": {"embedding": gain}, "bias": {"embedding": bias}}
  # Starts as plain BatchNorm: gain 1, bias 0.
  np.testing.assert_array_equal(variables["params"]["gain"]["embedding"], np.ones((3, 3)))
  np.testing.assert_array_equal(variables["params"]["bias"]["embedding"], np.zeros((3, 3)))
  y, updates = cbn.apply({**variables, "params": params}, x, labels, train=True,
                         mutable=["batch_stats"])
  mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  expected = ((x - mean) / np.sqrt(var + 1e-5) * gain[labels][:, None, None, :]
              + bias[labels][:, None, None, :])
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)
  # Running statistics as PyTorch's BatchNorm (momentum 0.1, unbiased var).
  np.testing.assert_allclose(updates["batch_stats"]["BatchNorm_0"]["mean"], 0.1 * mean,
                             rtol=1e-5, atol=1e-7)


def test_projection_head_adds_the_inner_product_of_the_class_embedding_and_features():
  rng = np.random.default_rng(1)
  h = rng.normal(size=(4, 5)).astype(np.float32)
  logits = rng.normal(size=(4,)).astype(np.float32)
  labels = np.array([2, 0, 1, 2], np.int32)

  class Head(conditional.nn.Module):
    head: str

    @conditional.nn.compact
    def __call__(self, logits, h, labels):
      return conditional.d_output(logits, h, labels, num_classes=3, head=self.head,
                                  spectral_norm=False, train=True)

  table = rng.normal(size=(3, 5)).astype(np.float32)
  w = rng.normal(size=(5, 3)).astype(np.float32)
  head = Head("projection+acgan")
  variables = head.init(jax.random.PRNGKey(0), logits, h, labels)
  params = {"projection": {"embedding": table},
            "ACGANHead_0": {"classifier": {"kernel": w, "bias": np.zeros(3, np.float32)}}}
  out, class_logits = head.apply({"params": params}, logits, h, labels)
  np.testing.assert_allclose(out, logits + np.sum(table[labels] * h, axis=1), rtol=1e-5)
  np.testing.assert_allclose(class_logits, h @ w, rtol=1e-5)
  assert jax.tree.map(np.shape, variables["params"]) == jax.tree.map(np.shape, params)
  # Projection alone returns the logits only; unconditional, D's own logits.
  only = Head("projection")
  v = only.init(jax.random.PRNGKey(0), logits, h, labels)
  assert only.apply(v, logits, h, labels).shape == (4,)
  np.testing.assert_array_equal(
      conditional.d_output(logits, h, None, num_classes=0, head="projection",
                           spectral_norm=False, train=True), logits)


def _conditional(**overrides):
  return small_config(**{"model.num_classes": 10, **overrides})


def _batch(cfg, mesh, seed=0):
  rng = np.random.default_rng(seed)
  rows = cfg.batch_size * cfg.d_steps
  return data.shard_batch((rng.uniform(-1, 1, (rows, 28, 28, 1)).astype(np.float32),
                           rng.integers(0, 10, (rows,), dtype=np.int32)), mesh)


@pytest.mark.slow   # compiles full training steps
def test_conditional_generator_draws_each_class_differently():
  cfg = _conditional()
  c = components.build_components(cfg)
  state = components.init_state(cfg, c, components.mesh_lib.make_mesh())
  generate = components.make_generate(c)
  z = jnp.tile(components.sample_latents(jax.random.PRNGKey(0), 1, c), (10, 1))
  # Fresh, every class has gain 1 and bias 0: the same image for each label.
  images = np.asarray(generate(state, z, jnp.arange(10)))
  np.testing.assert_array_equal(images[0], images[9])
  # Per-class gains and biases apart (as training makes them): a different
  # image per label from the same z.
  keys = iter(jax.random.split(jax.random.PRNGKey(1), 100))
  params = jax.tree_util.tree_map_with_path(
      lambda path, p: p + 0.3 * jax.random.normal(next(keys), p.shape)
      if "embedding" in jax.tree_util.keystr(path) else p, state.g_ema_params)
  images = np.asarray(generate(state.replace(g_ema_params=params), z, jnp.arange(10)))
  assert all(not np.allclose(images[0], images[k]) for k in range(1, 10))
  with pytest.raises(ConfigError, match="needs labels"):
    generate(state, z)


@pytest.mark.slow   # compiles full training steps
def test_acgan_class_loss_is_added_to_both_losses_with_its_weight():
  cfg = _conditional(**{"model.kwargs.d_head": "acgan", "class_loss_weight": 0.5})
  c, mesh, state, step = step_setup(cfg)
  batch = _batch(cfg, mesh)
  s0 = jax.device_get(state)
  _, metrics = step(state, batch)
  m = {k: float(v) for k, v in metrics.items()}
  assert m["d_loss"] == pytest.approx(m["d_adv_loss"] + 0.5 * m["d_class_loss"], rel=1e-6)
  assert m["g_loss"] == pytest.approx(m["g_adv_loss"] + 0.5 * m["g_class_loss"], rel=1e-6)
  # D's class loss: cross-entropy of its class logits on the reals (train
  # mode, as in the step) against the real labels.
  images, labels = (np.asarray(a) for a in batch)
  _, d = models.build_models(cfg.model)   # outside the step: no device axis
  (_, class_logits), _ = d.apply({"params": s0.d_params, "batch_stats": s0.d_batch_stats},
                                   images, labels, train=True, mutable=["batch_stats"])
  ce = optax.softmax_cross_entropy_with_integer_labels(class_logits, labels).mean()
  assert m["d_class_loss"] == pytest.approx(float(ce), rel=1e-5)


def test_generated_labels_are_uniform_and_change_every_step():
  cfg = _conditional()
  c = components.build_components(cfg)
  draws = [np.asarray(components.sample_labels(jax.random.PRNGKey(i), 1000, c)) for i in range(3)]
  counts = np.bincount(np.concatenate(draws), minlength=10)
  assert counts.min() > 230 and counts.max() < 370   # 300 expected per class
  assert not np.array_equal(draws[0], draws[1])


def test_a_model_that_is_not_conditional_is_one_error_naming_the_conditional_ones():
  cfg = small_config(**{"model.name": "mlp", "model.num_classes": 10,
                        "model.kwargs": {}})
  with pytest.raises(ConfigError, match="not class-conditional.*dcgan28"):
    models.build_models(cfg.model)


@pytest.mark.parametrize("bad, match", [({"model.kwargs.g_cond": "film"}, "g_cond"),
                                        ({"model.kwargs.d_head": "aux"}, "d_head")])
def test_bad_conditioning_kwargs_name_the_key(bad, match):
  with pytest.raises(ConfigError, match=match):
    models.build_models(_conditional(**bad).model)


# --- DiffAugment in the step -------------------------------------------------------

def _run(cfg, seed=0):
  c, mesh, state, step = step_setup(cfg)
  batch = data.shard_batch(np.random.default_rng(seed).uniform(
      -1, 1, (cfg.batch_size, 28, 28, 1)).astype(np.float32), mesh)
  state, metrics = step(state, batch)
  return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.slow   # compiles full training steps
def test_augmentation_at_probability_zero_is_the_plain_step():
  plain = _run(small_config())
  off = _run(small_config(**{"augment.policy": "color,translation,cutout", "augment.p": 0.0}))
  chex.assert_trees_all_equal(plain, off)


@pytest.mark.slow   # compiles full training steps
def test_augmentation_changes_the_step_and_g_learns_through_it():
  plain_state, plain = _run(small_config())
  state, metrics = _run(small_config(**{"augment.policy": "translation,cutout"}))
  chex.assert_tree_all_finite((state, metrics))
  assert float(metrics["d_loss"]) != float(plain["d_loss"])
  # G's gradient passes through the augmentation of its fakes.
  assert float(metrics["g_grad_norm"]) > 0
  assert not np.allclose(jax.tree.leaves(state.g_params)[0],
                         jax.tree.leaves(plain_state.g_params)[0])


@pytest.mark.slow   # compiles full training steps
def test_adaptive_probability_follows_the_sign_of_d_on_reals():
  cfg = small_config(**{"augment.policy": "translation", "augment.p": 0.5,
                        "augment.ada_target": 0.6, "augment.ada_images": 1600})
  state, metrics = _run(cfg)
  # This step augmented with p = 0.5; the next uses p moved by 16 images /
  # 1600 towards more augmentation when r_t = E[sign(D(real))] > 0.6.
  assert float(metrics["augment_p"]) == 0.5
  r_t = float(metrics["ada_r_t"])
  assert -1.0 <= r_t <= 1.0
  assert float(state.aux[ADA_KEY]["p"]) == pytest.approx(0.5 + np.sign(r_t - 0.6) * 0.01)


@pytest.mark.parametrize("key, value, match", [
    ("augment.policy", "colour", "unknown augmentation 'colour'"),
    ("augment.p", 1.5, "augment.p"), ("augment.ada_target", 2.0, "augment.ada_target"),
    ("augment.ada_images", 0, "augment.ada_images"), ("class_loss_weight", -1.0,
                                                     "class_loss_weight")])
def test_bad_augmentation_settings_are_one_config_error(key, value, match):
  from gan_jax import configure
  with pytest.raises(ConfigError, match=match):
    configure.check_components(small_config(**{key: value}))
