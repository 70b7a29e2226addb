"""Backend-aware lowering (gan_jax.layers): the default train step lowered for
CUDA uses XLA's own convolutions and none of the CPU paths, the CPU lowering
keeps them, both implementations agree on CPU, and a checkpoint trained with
one samples with the other."""
import collections
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from gan_jax import cli, configure, data, hardware, layers, models, train
from conftest import DEFAULT_EXPERIMENT, small_config, step_setup

pytestmark = pytest.mark.usefixtures("no_local_idx_files")

_SCOPE = re.compile(r"\b(cpu|native)_(convtranspose|conv|bf16_matmul|f32_matmul)\b")


def _lowered_step(cfg, platform):
  """(StableHLO with locations, the op counts) of `cfg`'s train step lowered for `platform`."""
  c, mesh, state, step = step_setup(cfg)
  batch = data.shard_batch(np.zeros((cfg.batch_size, *c.image_shape), np.float32), mesh)
  lowered = step.trace(state, batch).lower(lowering_platforms=(platform,))
  text = lowered.as_text(debug_info=True)
  ops = collections.Counter(re.findall(r"stablehlo\.(convolution|dot_general|concatenate)",
                                       lowered.as_text()))
  return text, ops


def _scopes(text):
  return collections.Counter(m.group(0) for m in _SCOPE.finditer(text))


@pytest.fixture
def gpu_host(monkeypatch):
  """As on a host with a GPU: 'auto' layers switch on the platform compiled
  for (a CPU-only host takes the CPU path without the switch)."""
  monkeypatch.setattr(layers, "cpu_only_host", lambda: False)


@pytest.mark.usefixtures("gpu_host")
def test_default_step_lowers_to_native_convolutions_for_cuda_and_cpu_paths_for_cpu():
  cfg = configure.load(DEFAULT_EXPERIMENT)   # the default experiment, full size
  cuda, cuda_ops = _lowered_step(cfg, "cuda")
  cpu, cpu_ops = _lowered_step(cfg, "cpu")
  cuda_scopes, cpu_scopes = _scopes(cuda), _scopes(cpu)
  assert {"native_conv", "native_convtranspose"} <= set(cuda_scopes), cuda_scopes
  assert not any(s.startswith("cpu_") for s in cuda_scopes), cuda_scopes
  assert {"cpu_conv", "cpu_convtranspose"} <= set(cpu_scopes), cpu_scopes
  assert not any(s.startswith("native_") for s in cpu_scopes), cpu_scopes
  # The program itself: CUDA's has a convolution (forward and gradients) for
  # every conv layer where the CPU's has im2col / phase matmuls and concatenations.
  assert cuda_ops["convolution"] > cpu_ops["convolution"]
  assert cpu_ops["dot_general"] > cuda_ops["dot_general"]
  assert cpu_ops["concatenate"] > cuda_ops["concatenate"]
  # A transposed convolution is one lhs-dilated convolution on CUDA.
  assert re.search(r"lhs_dilate = \[2, 2\]", cuda)


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
@pytest.mark.usefixtures("gpu_host")
def test_bfloat16_step_for_cuda_has_bfloat16_convolutions_and_no_custom_vjp():
  cfg = small_config()
  with cfg.unlocked():
    cfg.model.dtype = "bfloat16"
  text, _ = _lowered_step(cfg, "cuda")
  assert "cpu_bf16_matmul" not in text and "native_bf16_matmul" in text
  convs = [l for l in text.splitlines() if "stablehlo.convolution" in l]
  operand_types = [re.findall(r"tensor<[^>]*>", l.split(":")[-1].split("->")[0]) for l in convs]
  assert convs and all(len(t) == 2 and all("bf16" in x for x in t) for t in operand_types), convs[:2]
  cpu_text, _ = _lowered_step(cfg, "cpu")
  assert "cpu_bf16_matmul" in cpu_text and "native_" not in cpu_text


@pytest.mark.parametrize("cls,h,k,s,cin,cout", [
    (layers.ConvTranspose, 7, 4, 2, 48, 40),    # DCGAN up-sampling, wide (im2col phases)
    (layers.ConvTranspose, 14, 4, 2, 40, 1),    # narrow output layer (shift_conv phases)
    (layers.ConvTranspose, 8, 5, 1, 40, 24),    # stride 1
    (layers.ConvTranspose, 8, 5, 2, 24, 3),
    (layers.Conv, 28, 4, 2, 1, 40),              # narrow input (XLA conv)
    (layers.Conv, 14, 4, 2, 40, 48),             # wide (im2col)
    (layers.Conv, 16, 5, 2, 48, 64),
])
def test_native_and_cpu_implementations_agree_with_gradients(cls, h, k, s, cin, cout):
  x = jax.random.normal(jax.random.PRNGKey(0), (3, h, h, cin))
  outs = {}
  for lowering in ("native", "cpu"):
    layer = cls(cout, (k, k), (s, s), lowering=lowering)
    params = layer.init(jax.random.PRNGKey(1), x)
    loss = lambda p, x: jnp.sum(jnp.sin(layer.apply(p, x)))
    outs[lowering] = (layer.apply(params, x), jax.grad(loss, argnums=(0, 1))(params, x))
  for a, b in zip(jax.tree.leaves(outs["native"]), jax.tree.leaves(outs["cpu"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))


_SLOW = pytest.mark.slow   # the layer-level agreement above stays in the fast suite


@pytest.mark.parametrize("name,size,channels,kwargs", [
    pytest.param("dcgan28", 28, 1, {"g_features": 32, "d_features": 16}, marks=_SLOW),
    pytest.param("dcgan64", 64, 3, {"g_features": 32, "d_features": 8}, marks=_SLOW),
    pytest.param("lsgan32", 32, 3, {"g_features": 32, "d_features": 8}, marks=_SLOW),
    pytest.param("dcgan_faces", 28, 3, {"g_features": 32, "d_features": 8}, marks=_SLOW),
    ("mlp", 28, 1, {"g_hidden": (64,), "d_hidden": (32,)}),
])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_models_agree_between_lowerings(name, size, channels, kwargs, dtype):
  """G and D of each model: outputs and the gradients of a GAN loss w.r.t.
  every parameter, native vs CPU implementation."""
  results = {}
  for lowering in ("native", "cpu"):
    mc = {"name": name, "image_size": size, "channels": channels, "latent_dim": 16,
          "dtype": dtype, "lowering": lowering, "kwargs": kwargs}
    g, d = models.build_models(mc)
    z = jax.random.normal(jax.random.PRNGKey(0), (4, 16))
    gv = g.init(jax.random.PRNGKey(1), z, train=False)
    dv = d.init(jax.random.PRNGKey(2), g.apply(gv, z, train=False), train=False)

    def loss(gp, dp):
      x = g.apply({**gv, "params": gp}, z, train=False)
      return jnp.mean(jax.nn.softplus(-d.apply({**dv, "params": dp}, x, train=False))), x
    (value, x), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        gv["params"], dv["params"])
    results[lowering] = (value, x, grads)
  if dtype == "float32":
    for a, b in zip(jax.tree.leaves(results["native"]), jax.tree.leaves(results["cpu"])):
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))
  else:   # native also rounds each layer's output to bfloat16: the images within
    # bf16 precision, all gradients together within 10% (a wrong kernel or tap
    # order is off by ~100%)
    np.testing.assert_allclose(results["native"][1], results["cpu"][1], atol=3e-2)
    a, b = (np.concatenate([np.ravel(v) for v in jax.tree.leaves(results[k][2])])
            for k in ("native", "cpu"))
    assert np.linalg.norm(a - b) <= 0.1 * np.linalg.norm(b), np.linalg.norm(a - b) / np.linalg.norm(b)


def test_a_cpu_only_host_lowers_auto_layers_without_the_platform_switch():
  text, _ = _lowered_step(small_config(), "cpu")
  assert "cpu_convtranspose" in text and "native_" not in text
  assert "stablehlo.case" not in text


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
@pytest.mark.usefixtures("gpu_host")
def test_on_a_gpu_host_the_cpu_lowering_is_bitwise_the_cpu_path():
  """The switch resolved for CPU computes exactly the forced CPU path."""
  from conftest import one_step
  after = {}
  for lowering in ("auto", "cpu"):
    cfg = small_config()
    with cfg.unlocked():
      cfg.model.lowering = lowering
    after[lowering] = jax.tree.leaves(one_step(cfg)[1])
  for a, b in zip(after["auto"], after["cpu"]):
    np.testing.assert_array_equal(a, b)


def test_bad_lowering_is_a_config_error():
  cfg = small_config()
  with cfg.unlocked():
    cfg.model.lowering = "gpu"
  with pytest.raises(Exception, match=r"model.lowering must be one of \('auto', 'native', 'cpu'\)"):
    configure.check_components(cfg)


@pytest.mark.parametrize("trained,sampled", [pytest.param("auto", "native", marks=_SLOW),
                                             pytest.param("native", "cpu", marks=_SLOW)])
def test_checkpoint_samples_with_the_other_lowering(tmp_path, trained, sampled):
  """Trained on CPU ('auto' = the CPU paths), sampled with the GPU path
  forced; and the reverse. Same parameters, same samples."""
  cfg = small_config(num_steps=2)
  with cfg.unlocked():
    cfg.model.lowering = trained
  with tfds.testing.mock_data(num_examples=64):
    train.train_and_evaluate(cfg, str(tmp_path))
  npy = tmp_path / "samples" / "samples_step2_n8_seed0.npy"
  images = {}
  for lowering in (trained, sampled):
    assert cli.main(["sample", "--workdir", str(tmp_path), "--num", "8",
                     f"--config.model.lowering={lowering}"]) == 0
    images[lowering] = np.load(npy)
  assert images[sampled].std() > 0
  np.testing.assert_allclose(images[sampled], images[trained], atol=1e-5)


def test_auto_dtype_follows_the_hardware(monkeypatch, tmp_path):
  cpu = jax.devices("cpu")[0]
  monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
  assert hardware.auto_dtype(cpu)[0] == "float32"
  monkeypatch.setattr(hardware, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
  assert hardware.auto_dtype(cpu) == ("bfloat16", "CPU with avx512_bf16")
  # Training records the choice in config.json.
  cfg = small_config(num_steps=1)
  with cfg.unlocked():
    cfg.model.dtype = "auto"
  with tfds.testing.mock_data(num_examples=64):
    train.train_and_evaluate(cfg, str(tmp_path))
  saved = configure.load(str(tmp_path / "config.json"))
  assert saved.model.dtype == "bfloat16"
