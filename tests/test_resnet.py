"""The SNGAN ResNet (gan_jax.models.resnet): shapes, the paper's parameter
counts, spectral norm, class conditioning, config errors, bfloat16."""
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan_jax import config as config_lib, models
from gan_jax.errors import ConfigError
from gan_jax.models import resnet

SMALL = {"g_channels": 16, "d_channels": 16}


def _model_cfg(size=32, channels=3, num_classes=0, dtype="float32", latent_dim=32, **kwargs):
  """A model config as build_models takes it; `kwargs` are model.kwargs."""
  cfg = config_lib.base_config().model
  cfg.name = "sngan_resnet"
  cfg.image_size, cfg.channels, cfg.latent_dim = size, channels, latent_dim
  cfg.num_classes, cfg.dtype = num_classes, dtype
  for k, v in kwargs.items():
    cfg.kwargs[k] = v
  return cfg


def _count(tree):
  return sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tree))


def _param_count(module, *inputs):
  """Parameters from shapes alone (no computation)."""
  variables = jax.eval_shape(lambda: module.init(jax.random.PRNGKey(0), *inputs, train=False))
  return _count(variables["params"])


def _init(g, d, n=4, labels=None, size=32, channels=3):
  z = jax.random.normal(jax.random.PRNGKey(0), (n, g.latent_dim))
  x = jax.random.uniform(jax.random.PRNGKey(1), (n, size, size, channels), minval=-1, maxval=1)
  extra = () if labels is None else (labels,)
  g_vars = g.init(jax.random.PRNGKey(2), z, *extra, train=False)
  d_vars = d.init(jax.random.PRNGKey(3), x, *extra, train=False)
  return z, x, g_vars, d_vars


@pytest.mark.parametrize("size", [pytest.param(32, marks=pytest.mark.slow), 64])
def test_shapes_pixel_range_and_resolutions(size):
  g, d = models.build_models(_model_cfg(size, **SMALL), pixel_range=(0.0, 1.0))
  z, x, g_vars, d_vars = _init(g, d, size=size)
  assert set(g_vars) == {"params", "batch_stats"}
  images, _ = g.apply(g_vars, z, train=True, mutable=["batch_stats"])   # no labels
  chex.assert_shape(images, (4, size, size, 3))
  assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
  logits, state = d.apply(d_vars, x, train=True, mutable=["batch_stats", "intermediates"],
                          capture_intermediates=lambda m, _: isinstance(m, resnet.DBlock))
  chex.assert_shape(logits, (4,))
  assert logits.dtype == jnp.float32
  # 32 -> 16 -> 8 -> 8 -> 8 (64: one more downsampling block), width d_channels.
  blocks = state["intermediates"]
  sides = [blocks[f"block{i}"]["__call__"][0].shape[1] for i in range(1, len(blocks) + 1)]
  assert sides == ([16, 8, 8, 8] if size == 32 else [32, 16, 8, 8, 8])
  # G: 4 -> 8 -> 16 -> 32 (-> 64): 3 or 4 up-blocks.
  assert sorted(k for k in g_vars["params"] if k.startswith("block")) == (
      ["block2", "block3", "block4"] + (["block5"] if size == 64 else []))


def test_paper_parameter_counts():
  """SNGAN CIFAR-10 (32x32x3, z 128, G Ch 256, D Ch 128), layer by layer;
  as in the reference, every conv and G's dense have a bias, D's output
  dense none."""
  z_dim, ch, c = 128, 256, 3
  conv = lambda k, i, o: k * k * i * o + o
  bn = lambda f: 2 * f
  g_dense = z_dim * 4 * 4 * ch + 4 * 4 * ch                        # 528,384
  g_block = (bn(ch) + conv(3, ch, ch) + bn(ch) + conv(3, ch, ch)    # residual
             + conv(1, ch, ch))                                    # shortcut: 1,246,976
  g_out = bn(ch) + conv(3, ch, c)                                  # 512 + 6,915
  g_total = g_dense + 3 * g_block + g_out
  assert g_total == 4_276_739

  dch = 128
  d_opt = conv(3, c, dch) + conv(3, dch, dch) + conv(1, c, dch)    # 151,680
  d_down = conv(3, dch, dch) + conv(3, dch, dch) + conv(1, dch, dch)  # 311,680
  d_same = conv(3, dch, dch) + conv(3, dch, dch)                   # identity shortcut: 295,168
  d_dense = dch                                                    # no bias
  d_total = d_opt + d_down + 2 * d_same + d_dense
  assert d_total == 1_053_824

  cfg = _model_cfg(latent_dim=z_dim)
  g, d = models.build_models(cfg)
  z, x = jnp.zeros((2, z_dim)), jnp.zeros((2, 32, 32, c))
  assert _param_count(g, z) == g_total
  assert _param_count(d, x) == d_total

  # Conditional ('bn'): each of the 6 BatchNorms in the blocks is conditional,
  # a (classes, Ch) gain and bias table in place of BatchNorm's own 2 * Ch;
  # the projection D adds the (classes, Ch) embedding.
  k = 10
  cfg.num_classes = k
  g_c, d_c = models.build_models(cfg)
  labels = jnp.zeros((2,), jnp.int32)
  assert _param_count(g_c, z, labels) == g_total + 6 * (k * 2 * ch - 2 * ch)
  assert _param_count(d_c, x, labels) == d_total + k * dch


def test_spectral_norm_top_singular_value_is_one():
  """After enough power iterations (one per training application), every D
  kernel divided by its sigma has top singular value 1: the convs, the
  output dense, the projection table and the ACGAN classifier."""
  g, d = models.build_models(_model_cfg(num_classes=5, d_head="projection+acgan", **SMALL))
  labels = jnp.arange(4) % 5
  _, x, _, d_vars = _init(g, d, labels=labels)

  @jax.jit
  def update(stats):
    _, new = d.apply({**d_vars, "batch_stats": stats}, x, labels, train=True,
                     mutable=["batch_stats"])
    return new["batch_stats"]
  stats = d_vars["batch_stats"]
  for _ in range(40):
    stats = update(stats)

  params = d_vars["params"]
  normalised = 0
  for path, sigma in jax.tree_util.tree_flatten_with_path(stats)[0]:
    keys = [p.key for p in path]
    if not keys[-1].endswith("/sigma"):
      continue
    layer, var, _ = keys[-1].split("/")
    node = params
    for k in keys[:-2]:                  # the SpectralNorm wrapper's parent module
      node = node[k]
    kernel = np.asarray(node[layer][var])
    w = kernel.reshape(-1, kernel.shape[-1]) / float(sigma)
    assert abs(np.linalg.svd(w, compute_uv=False)[0] - 1.0) < 1e-2, keys
    normalised += 1
  # 3 + 3 + 2 + 2 convs, the output dense, the projection, the classifier.
  assert normalised == 13


@pytest.mark.parametrize("g_cond", ["bn", "concat"])
def test_conditional_generator_uses_labels(g_cond):
  g, d = models.build_models(_model_cfg(num_classes=10, g_cond=g_cond, **SMALL))
  labels = jnp.array([0, 1, 2, 3])
  z, x, g_vars, d_vars = _init(g, d, labels=labels)
  if g_cond == "bn":
    # The per-class gains start at 1 and biases at 0 (plain BatchNorm): train them a bit.
    leaves, tree = jax.tree_util.tree_flatten_with_path(g_vars["params"])
    key = jax.random.PRNGKey(5)
    leaves = [v + 0.3 * jax.random.normal(jax.random.fold_in(key, i), v.shape)
              if any(getattr(p, "key", None) in ("gain", "bias") for p in path[-2:-1]) else v
              for i, (path, v) in enumerate(leaves)]
    g_vars = {**g_vars, "params": jax.tree_util.tree_unflatten(tree, leaves)}
  same_z = jnp.broadcast_to(z[:1], z.shape)
  images = g.apply(g_vars, same_z, labels, train=False)
  diffs = [float(jnp.abs(images[0] - images[i]).max()) for i in range(1, 4)]
  assert min(diffs) > 1e-3
  # The projection D: the same image scores differently per class.
  same_x = jnp.broadcast_to(x[:1], x.shape)
  logits, _ = d.apply(d_vars, same_x, labels, train=True, mutable=["batch_stats"])
  assert float(jnp.abs(logits - logits[0]).max()) > 1e-4
  with pytest.raises(ConfigError, match="needs labels"):
    g.apply(g_vars, z, train=False)
  with pytest.raises(ConfigError, match="needs labels"):
    d.apply(d_vars, x, train=False)


def test_acgan_head_returns_class_logits():
  g, d = models.build_models(_model_cfg(num_classes=7, d_head="acgan", **SMALL))
  labels = jnp.arange(4)
  _, x, _, d_vars = _init(g, d, labels=labels)
  (logits, class_logits), _ = d.apply(d_vars, x, labels, train=True, mutable=["batch_stats"])
  chex.assert_shape((logits, class_logits), ((4,), (4, 7)))


@pytest.mark.parametrize("key,value,match", [
    ("image_size", 48, "model.image_size"),
    ("g_cond", "nope", "model.kwargs.g_cond"),
    ("d_head", "nope", "model.kwargs.d_head"),
    ("g_channels", 0, "model.kwargs.g_channels"),
])
def test_bad_config_names_the_key(key, value, match):
  cfg = _model_cfg(**SMALL)
  if key == "image_size":
    cfg.image_size = value
  else:
    cfg.kwargs[key] = value
  with pytest.raises(ConfigError, match=match):
    models.build_models(cfg)


def test_bfloat16_builds_and_runs():
  g, d = models.build_models(_model_cfg(num_classes=10, dtype="bfloat16", **SMALL))
  assert g.dtype == d.dtype == jnp.bfloat16
  labels = jnp.arange(4)
  z, x, g_vars, d_vars = _init(g, d, labels=labels)
  images, _ = g.apply(g_vars, z, labels, train=True, mutable=["batch_stats"])
  logits, _ = d.apply(d_vars, images, labels, train=True, mutable=["batch_stats"])
  assert images.dtype == logits.dtype == jnp.float32
  chex.assert_tree_all_finite((images, logits))
  assert float(jnp.abs(images).max()) <= 1.0
  # The G gradient flows through the bfloat16 convs.
  def loss(p):
    out, _ = g.apply({**g_vars, "params": p}, z, labels, train=True, mutable=["batch_stats"])
    return jnp.mean(out ** 2)
  grads = jax.jit(jax.grad(loss))(g_vars["params"])
  chex.assert_tree_all_finite(grads)
  assert float(jnp.abs(grads["block2"]["c1"]["kernel"]).max()) > 0


def test_registered_and_built_from_a_config():
  cfg = _model_cfg(num_classes=10, g_channels=16, d_channels=8, g_spectral_norm=True)
  assert "sngan_resnet" in models.conditional_models()
  assert models.model_kwargs(cfg) == {
      "g_channels": 16, "d_channels": 8, "g_cond": "bn", "d_head": "projection",
      "g_embed_dim": 128, "d_spectral_norm": True, "g_spectral_norm": True}
  g, d = models.build_models(cfg)
  assert isinstance(g, resnet.SNGANGenerator) and isinstance(d, resnet.SNGANDiscriminator)
  assert (g.num_classes, g.channels, d.channels, d.head) == (10, 16, 8, "projection")
  z, labels = jnp.zeros((2, 32)), jnp.arange(2)
  g_vars = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, labels, train=False))
  # G's layers are spectrally normalised too (g_spectral_norm): l1, 3 x 3 convs, c_out.
  sigmas = [k for k, _ in jax.tree_util.tree_flatten_with_path(g_vars["batch_stats"])[0]
            if k[-1].key.endswith("/sigma")]
  assert len(sigmas) == 11


def test_resampling_helpers():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 6, 3))
  np.testing.assert_array_equal(resnet.upsample2(x),
                                jax.image.resize(x, (2, 8, 12, 3), "nearest"))
  np.testing.assert_allclose(resnet.avgpool2(x), nn.avg_pool(x, (2, 2), (2, 2)), atol=1e-6)
  # A 1x1 conv commutes with both, so the shortcuts run it at the low resolution.
  w, b = jax.random.normal(jax.random.PRNGKey(1), (3, 5)), jnp.arange(5.0)
  np.testing.assert_allclose(resnet.upsample2(x) @ w + b, resnet.upsample2(x @ w + b),
                             atol=1e-5)
  np.testing.assert_allclose(resnet.avgpool2(x) @ w + b, resnet.avgpool2(x @ w + b), atol=1e-5)


def test_28x28_is_the_32x32_network_padded():
  """At 28x28 (Fashion-MNIST) G keeps the centre of its 32x32 image and D
  pads its input with the background: the same parameters as at 32x32."""
  g28, d28 = models.build_models(_model_cfg(28, 1, **SMALL))
  g32, d32 = models.build_models(_model_cfg(32, 1, **SMALL))
  z, x, g_vars, d_vars = _init(g32, d32, size=32, channels=1)
  assert (jax.tree.map(jnp.shape, g28.init(jax.random.PRNGKey(2), z, train=False))
          == jax.tree.map(jnp.shape, g_vars))
  np.testing.assert_array_equal(g28.apply(g_vars, z, train=False),
                                g32.apply(g_vars, z, train=False)[:, 2:30, 2:30])
  inner = x[:, 2:30, 2:30]
  padded = jnp.pad(inner, ((0, 0), (2, 2), (2, 2), (0, 0)), constant_values=-1.0)
  np.testing.assert_allclose(d28.apply(d_vars, inner, train=False),
                             d32.apply(d_vars, padded, train=False), rtol=1e-6)
