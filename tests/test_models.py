import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import pytest

from gan_jax import models
from conftest import small_config


def test_dcgan28_shapes_and_collections():
  cfg = small_config()
  g, d = models.build_models(cfg.model)
  z = jnp.zeros((5, cfg.model.latent_dim))
  g_vars = g.init(jax.random.PRNGKey(0), z, train=False)
  assert set(g_vars) == {"params", "batch_stats"}
  x, upd = g.apply(g_vars, z, train=True, mutable=["batch_stats"])
  assert x.shape == (5, 28, 28, 1)
  assert float(jnp.abs(x).max()) <= 1.0  # tanh output
  d_vars = d.init(jax.random.PRNGKey(1), x, train=False)
  logits, _ = d.apply(d_vars, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (5,)
  assert models.image_shape(cfg.model) == (28, 28, 1)


def test_dcgan_init_statistics():
  cfg = small_config()
  g, _ = models.build_models(cfg.model)
  params = g.init(jax.random.PRNGKey(0), jnp.zeros((2, cfg.model.latent_dim)), train=False)["params"]
  kernel = params["Dense_0"]["kernel"]
  assert abs(float(kernel.std()) - 0.02) < 0.002
  scale = params["BatchNorm_0"]["scale"]
  assert abs(float(scale.mean()) - 1.0) < 0.01 and 0.005 < float(scale.std()) < 0.04


def test_phase_and_transpose_generators_agree():
  """The fast upsampling is a drop-in: same params, same images."""
  cfg = small_config()
  g_fast, _ = models.build_models(cfg.model)
  with cfg.unlocked():
    cfg.model.kwargs.upsample = "transpose"
  g_ref, _ = models.build_models(cfg.model)
  z = jax.random.normal(jax.random.PRNGKey(0), (4, cfg.model.latent_dim))
  variables = g_fast.init(jax.random.PRNGKey(1), z, train=False)
  a = g_fast.apply(variables, z, train=False)
  b = g_ref.apply(variables, z, train=False)
  assert float(jnp.abs(a - b).max()) < 1e-5


def test_wrong_input_shape_is_caught():
  cfg = small_config()
  _, d = models.build_models(cfg.model)
  with pytest.raises(AssertionError):
    d.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 1)), train=False)


def test_unknown_names():
  cfg = small_config()
  with cfg.unlocked():
    cfg.model.name = "nope"
  with pytest.raises(ValueError, match="dcgan28"):
    models.build_models(cfg.model)
  with pytest.raises(ValueError, match="phase"):
    models.upsample_layer("nope")


def _compiled_g_gradient_hlo(cfg):
  """Compiled HLO of d(mean G(z)^2)/d(params) in training mode."""
  g, _ = models.build_models(cfg.model)
  z = jnp.ones((4, cfg.model.latent_dim))
  variables = g.init(jax.random.PRNGKey(0), z, train=False)

  def loss(params):
    x, _ = g.apply({**variables, "params": params}, z, train=True, mutable=["batch_stats"])
    return (x ** 2).mean()
  return jax.jit(jax.grad(loss)).lower(variables["params"]).compile().as_text()


@pytest.mark.parametrize("experiment", ["dcgan_fashion_mnist", "dcgan_color64",
                                        *(pytest.param(e, marks=pytest.mark.slow)
                                          for e in ("lsgan_cifar10", "dcgan_celeba"))])
def test_upsampling_has_no_transposed_conv_gradient_in_hlo(experiment):
  """The 'phase' upsampling compiles to no input-dilated convolution (what a
  transposed convolution and its gradients lower to, slow on XLA:CPU); the
  'transpose' reference layer does."""
  from gan_jax.config import load_config
  cfg = load_config(f"experiments/{experiment}.py")
  cfg.model.kwargs.g_features, cfg.model.latent_dim = 32, 8
  assert "lhs_dilate" not in _compiled_g_gradient_hlo(cfg)
  with cfg.unlocked():   # a kwarg the experiment leaves at its default
    cfg.model.kwargs.upsample = "transpose"
  assert "lhs_dilate" in _compiled_g_gradient_hlo(cfg)


def test_bfloat16_models_keep_float32_params_and_outputs():
  cfg = small_config(**{"model.dtype": "bfloat16"})
  g, d = models.build_models(cfg.model)
  z = jnp.ones((4, cfg.model.latent_dim))
  g_vars = g.init(jax.random.PRNGKey(0), z, train=False)
  x = g.apply(g_vars, z, train=False)
  d_vars = d.init(jax.random.PRNGKey(1), x, train=False)
  assert {p.dtype for p in jax.tree.leaves((g_vars, d_vars))} == {jnp.dtype("float32")}
  assert x.dtype == jnp.float32 and d.apply(d_vars, x, train=False).dtype == jnp.float32
  # Same weights in float32: the outputs differ by bfloat16 rounding only.
  g32, _ = models.build_models(small_config().model)
  x32 = g32.apply(g_vars, z, train=False)
  err = float(jnp.abs(x - x32).max())
  assert 0 < err < 0.05


def test_unknown_compute_dtype():
  cfg = small_config(**{"model.dtype": "float16"})
  with pytest.raises(models.ConfigError, match="model.dtype"):
    models.build_models(cfg.model)


# --- The registry: a model's keyword-only parameters are its model.kwargs ----

def test_registered_model_is_built_with_its_kwargs(monkeypatch):
  from gan_jax.config import base_config
  from gan_jax.registry import Registry
  registry = Registry("model")   # a copy, so the test's model does not leak
  registry.update(models.MODELS)
  monkeypatch.setattr(models, "MODELS", registry)
  monkeypatch.setattr(models, "register", registry.register)
  seen = {}

  @models.register("tiny")
  def tiny(ctx, *, hidden=(8,), slope=0.2):
    seen.update(ctx=ctx, hidden=hidden, slope=slope)
    return (models.MLPGenerator(ctx.latent_dim, hidden, ctx.image_shape, pixel_range=ctx.pixel_range),
            models.MLPDiscriminator(ctx.image_shape, hidden, slope=slope))

  mc = base_config().model
  mc.name, mc.latent_dim, mc.dtype = "tiny", 4, "bfloat16"
  mc.kwargs.slope = 0.1
  assert models.model_kwargs(mc) == {"hidden": (8,), "slope": 0.1}
  g, d = models.build_models(mc, pixel_range=(-0.5, 0.5), axis_name="data")
  assert seen == {"ctx": models.ModelContext((28, 28, 1), 4, (-0.5, 0.5), "data"),
                  "hidden": (8,), "slope": 0.1}
  assert d.slope == 0.1 and g.dtype == d.dtype == jnp.bfloat16   # the mixed-precision clone
  x = jax.eval_shape(lambda: g.apply(g.init(jax.random.PRNGKey(0), jnp.zeros((2, 4))),
                                     jnp.zeros((2, 4))))
  assert x.shape == (2, 28, 28, 1)

  class Width(nn.Module):   # no dtype field to compute in
    width: int

    def __call__(self, x):
      return x[..., :self.width]

  @models.register("bare")   # a required kwarg
  def bare(ctx, *, width):
    return Width(width), Width(1)

  mc.name, mc.kwargs = "bare", ml_collections.ConfigDict()
  with pytest.raises(models.ConfigError, match="needs model.kwargs.width"):
    models.build_models(mc)
  mc.kwargs.width = 3
  with pytest.raises(models.ConfigError, match="model.dtype='bfloat16'.*no `dtype` field"):
    models.build_models(mc)
  mc.dtype = "float32"
  assert models.build_models(mc)[0].width == 3


def test_unknown_kwarg_names_it_and_lists_the_valid_ones():
  cfg = small_config(**{"model.kwargs.d_dropout": 0.3, "model.kwargs.g_hiden": (8,)})
  with pytest.raises(models.ConfigError) as e:
    models.build_models(cfg.model)
  message = str(e.value)
  assert "'dcgan28' takes no model.kwargs.d_dropout, model.kwargs.g_hiden" in message
  assert ("g_features=256, d_features=64, g_norm='batch', d_norm='batch', "
          "d_spectral_norm=False, upsample='phase'") in message


def test_model_kwargs_fills_the_defaults():
  from gan_jax.config import base_config
  assert models.model_kwargs(small_config().model) == {
      "g_features": 32, "d_features": 16, "g_norm": "batch", "d_norm": "batch",
      "d_spectral_norm": False, "upsample": "phase", "g_cond": "bn", "d_head": "projection",
      "g_embed_dim": 50}
  mc = base_config().model
  mc.name = "mlp"
  assert models.model_kwargs(mc) == {"g_hidden": (1024, 2048), "d_hidden": (512,),
                                     "d_slope": 0.2, "d_spectral_norm": False}
  mc.name = "dcgan64"
  assert models.model_kwargs(mc)["d_dropout"] == 0.0


@pytest.mark.parametrize("overrides,message", [
    ({"model.kwargs.g_norm": "group"}, r"model.kwargs.g_norm must be one of \('batch'"),
    ({"model.kwargs.upsample": "nope"}, r"model.kwargs.upsample must be one of \('phase'"),
    ({"model.image_size": 32}, "'dcgan28' supports model.image_size 28, got 32"),
    ({"model.g_features": 32}, "model.g_features is not a common model key.*model.kwargs.g_features"),
    ({"model.name": "nope"}, "unknown model 'nope' \\(model.name\\); registered: dcgan28"),
])
def test_kwarg_values_are_checked_when_built(overrides, message):
  with pytest.raises(models.ConfigError, match=message):
    models.build_models(small_config(**overrides).model)


_DCGAN28_G = {"BatchNorm_0/bias": (256,), "BatchNorm_0/scale": (256,), "BatchNorm_1/bias": (128,),
              "BatchNorm_1/scale": (128,), "ConvTranspose_0/kernel": (4, 4, 256, 128),
              "ConvTranspose_1/bias": (1,), "ConvTranspose_1/kernel": (4, 4, 128, 1),
              "Dense_0/kernel": (100, 12544)}
# The default experiment's G: dcgan28 at g_features=128.
_DCGAN28_G128 = {"BatchNorm_0/bias": (128,), "BatchNorm_0/scale": (128,),
                 "BatchNorm_1/bias": (64,), "BatchNorm_1/scale": (64,),
                 "ConvTranspose_0/kernel": (4, 4, 128, 64), "ConvTranspose_1/bias": (1,),
                 "ConvTranspose_1/kernel": (4, 4, 64, 1), "Dense_0/kernel": (100, 6272)}
_DCGAN28_D_BN = {"BatchNorm_0/bias": (128,), "BatchNorm_0/scale": (128,), "Conv_0/bias": (64,),
                 "Conv_0/kernel": (4, 4, 1, 64), "Conv_1/kernel": (4, 4, 64, 128),
                 "Dense_0/bias": (1,), "Dense_0/kernel": (6272, 1)}
# (G params, D params) of each experiment, read off gan_jax/models.py before it
# became a package with model.kwargs (the default experiment's G since f4be368):
# checkpoints depend on these names and shapes.
PARAM_SHAPES = {
    "dcgan_fashion_mnist": (_DCGAN28_G128, _DCGAN28_D_BN),
    "wgan_fashion_mnist": (_DCGAN28_G, _DCGAN28_D_BN),
    "wgan_gp_fashion_mnist": (_DCGAN28_G, {
        "Conv_0/bias": (64,), "Conv_0/kernel": (4, 4, 1, 64), "Conv_1/bias": (128,),
        "Conv_1/kernel": (4, 4, 64, 128), "Dense_0/bias": (1,), "Dense_0/kernel": (6272, 1)}),
    "fc_gan_mnist": (
        {"Dense_0/bias": (1024,), "Dense_0/kernel": (128, 1024), "Dense_1/bias": (2048,),
         "Dense_1/kernel": (1024, 2048), "Dense_2/bias": (784,), "Dense_2/kernel": (2048, 784)},
        {"Dense_0/bias": (512,), "Dense_0/kernel": (784, 512), "Dense_1/bias": (1,),
         "Dense_1/kernel": (512, 1)}),
    "lsgan_cifar10": (
        {"BatchNorm_0/bias": (256,), "BatchNorm_0/scale": (256,), "BatchNorm_1/bias": (128,),
         "BatchNorm_1/scale": (128,), "BatchNorm_2/bias": (64,), "BatchNorm_2/scale": (64,),
         "ConvTranspose_0/kernel": (5, 5, 256, 128), "ConvTranspose_1/kernel": (5, 5, 128, 64),
         "ConvTranspose_2/kernel": (5, 5, 64, 3), "Dense_0/kernel": (100, 16384)},
        {"Conv_0/bias": (64,), "Conv_0/kernel": (5, 5, 3, 64), "Conv_1/bias": (128,),
         "Conv_1/kernel": (5, 5, 64, 128), "Dense_0/bias": (1,), "Dense_0/kernel": (8192, 1)}),
    "dcgan_celeba": (
        {"BatchNorm_0/bias": (512,), "BatchNorm_0/scale": (512,), "BatchNorm_1/bias": (256,),
         "BatchNorm_1/scale": (256,), "BatchNorm_2/bias": (128,), "BatchNorm_2/scale": (128,),
         "ConvTranspose_0/kernel": (5, 5, 512, 256), "ConvTranspose_1/kernel": (5, 5, 256, 128),
         "ConvTranspose_2/bias": (3,), "ConvTranspose_2/kernel": (5, 5, 128, 3),
         "Dense_0/kernel": (100, 25088)},
        {"BatchNorm_0/bias": (128,), "BatchNorm_0/scale": (128,), "BatchNorm_1/bias": (256,),
         "BatchNorm_1/scale": (256,), "Conv_0/bias": (64,), "Conv_0/kernel": (5, 5, 3, 64),
         "Conv_1/kernel": (5, 5, 64, 128), "Conv_2/kernel": (5, 5, 128, 256),
         "Dense_0/bias": (1,), "Dense_0/kernel": (4096, 1)}),
    "dcgan_color64": (
        {"ConvTranspose_0/bias": (256,), "ConvTranspose_0/kernel": (4, 4, 512, 256),
         "ConvTranspose_1/bias": (128,), "ConvTranspose_1/kernel": (4, 4, 256, 128),
         "ConvTranspose_2/bias": (64,), "ConvTranspose_2/kernel": (4, 4, 128, 64),
         "Conv_0/bias": (3,), "Conv_0/kernel": (4, 4, 64, 3), "Dense_0/bias": (32768,),
         "Dense_0/kernel": (100, 32768)},
        {"BatchNorm_0/bias": (64,), "BatchNorm_0/scale": (64,), "BatchNorm_1/bias": (128,),
         "BatchNorm_1/scale": (128,), "Conv_0/kernel": (5, 5, 3, 64),
         "Conv_1/kernel": (5, 5, 64, 128), "Dense_0/bias": (1,), "Dense_0/kernel": (32768, 1)}),
}


def _shapes(tree) -> dict:
  return {"/".join(k.key for k in path): tuple(v.shape)
          for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.mark.parametrize("experiment", sorted(PARAM_SHAPES))
def test_experiment_models_keep_their_parameter_trees(experiment):
  """Every built-in model, from its experiment's model.kwargs, has the
  parameter names and shapes it had before model.kwargs (and a BatchNorm's
  mean/var beside each BatchNorm's scale)."""
  from gan_jax.config import load_config
  cfg = load_config(f"experiments/{experiment}.py")
  g, d = models.build_models(cfg.model, cfg.data.pixel_range)
  z = jnp.zeros((2, cfg.model.latent_dim))
  g_vars = jax.eval_shape(lambda: g.init(jax.random.PRNGKey(0), z, train=False))
  x = jnp.zeros((2, *models.image_shape(cfg.model)))
  d_vars = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(1), x, train=False))
  for got, want in ((g_vars, PARAM_SHAPES[experiment][0]), (d_vars, PARAM_SHAPES[experiment][1])):
    assert _shapes(got["params"]) == want
    stats = {f"{m}/{s}": want[f"{m}/scale"] for m in {k.split("/")[0] for k in want}
             if m.startswith("BatchNorm") for s in ("mean", "var")}
    assert _shapes(got.get("batch_stats", {})) == stats
