"""Run by test_multidevice.py in a subprocess with 8 fake CPU devices:
trains 3 steps on a mesh of 8 devices and on a mesh of 1 device from the same
state and the same global batches, and prints both runs' metrics and final
parameters' checksums as JSON."""
import json
import os
import sys

import jax
import numpy as np
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: conftest
from conftest import small_config  # noqa: E402
from gan_jax import components, data, evaluation, mesh as mesh_lib, step as step_lib  # noqa: E402
from gan_jax.evaluation import classifier  # noqa: E402


def run(devices, batches, cfg):
  """Steps on a mesh of `devices`; `batches` hold d_steps global batches
  each: float images, or (on-device mode) indices into uint8 `IMAGES`, all
  steps fused into one call."""
  c = components.build_components(cfg)
  mesh = mesh_lib.make_mesh(devices)
  state = components.init_state(cfg, c, mesh)
  history = []
  major = lambda b: jax.tree.map(lambda a: data.device_major(a, cfg.d_steps, len(devices)), b)
  if cfg.data.on_device:
    steps = step_lib.make_train_steps(c, mesh, cfg.data.pixel_range, on_device=True)
    idx = np.stack([major(b) for b in batches])
    images = (IMAGES, LABELS) if c.conditional else IMAGES
    state, metrics = steps(state, data.shard_batch(idx, mesh, P(None, mesh_lib.AXIS)),
                           mesh_lib.replicate(images, mesh))
    metrics = jax.device_get(metrics)
    history = [{k: float(v[i]) for k, v in metrics.items()} for i in range(len(batches))]
  step = step_lib.make_train_step(c, mesh)
  for b in ([] if cfg.data.on_device else batches):
    state, metrics = step(state, data.shard_batch(major(b), mesh))
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  params = jax.device_get((state.g_params, state.d_params, state.g_ema_params,
                           state.g_batch_stats, state.d_batch_stats, state.aux))
  return history, [float(np.sum(np.abs(x))) for x in jax.tree.leaves(params)]


def scores(devices):
  """Every score of two image sets, their feature batches split over
  `devices` (batches of 100 rows: padded to 104 on 8 devices), with a
  randomly initialised domain classifier."""
  module = classifier.DomainClassifier(num_classes=10)
  variables = module.init(jax.random.key(0), np.zeros((1, 28, 28, 1), np.float32))
  extractor = evaluation.Extractor("domain:random", "", "none", 128,
                                   jax.jit(lambda x: module.apply(variables, x)))
  mesh = mesh_lib.make_mesh(devices)
  rng = np.random.default_rng(1)
  real, fake = (rng.uniform(0, 1, (300, 28, 28, 1)).astype(np.float32) ** p for p in (1, 2))
  sets = [evaluation.extract(extractor, (x[i:i + 100] for i in range(0, 300, 100)), mesh,
                             keep_features=True, keep_logits=True) for x in (real, fake)]
  cfg = small_config(**{"eval.kid_subset_size": 100, "eval.kid_subsets": 5, "eval.is_splits": 3})
  return evaluation.metrics.compute_scores(*sets, ('fd', 'kid', 'is', 'pr'), cfg.eval)


def augment_stats(devices):
  """DiffAugment as the step draws it (a key per device, folded with the
  device index) on 4096 images split over `devices`: per augmentation, the
  fraction of images it changed and the mean pixel of the result."""
  from gan_jax import augment
  mesh = mesh_lib.make_mesh(devices)
  x = np.tile(np.linspace(-1, 1, 16 * 16, dtype=np.float32).reshape(1, 16, 16, 1), (4096, 1, 1, 1))
  out = {}
  for policy in ("color", "translation", "cutout"):
    def per_device(x):
      key = jax.random.fold_in(jax.random.key(3), jax.lax.axis_index(mesh_lib.AXIS))
      y = augment.augment(x, key, (policy,), 0.5)
      changed = np.float32(1) * (jax.numpy.abs(y - x).max(axis=(1, 2, 3)) > 0)
      return jax.lax.pmean(jax.numpy.stack([changed.mean(), y.mean()]), mesh_lib.AXIS)
    f = jax.shard_map(per_device, mesh=mesh, in_specs=P(mesh_lib.AXIS), out_specs=P())
    out[policy] = [float(v) for v in jax.jit(f)(data.shard_batch(x, mesh))]
  return out


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  # The default DCGAN with noisy labels; a WGAN with an R1 penalty, 3 critic
  # steps and an EMA. (Penalties with random draws, like GP, draw per device,
  # so they match 1 device only in distribution.)
  scenarios = {"dcgan": small_config(real_label_noise=0.05),
               "wgan_r1": small_config(**{"loss": "wasserstein", "penalty.r1": 10.0, "d_steps": 3,
                                          "model.kwargs.d_norm": "none", "ema_decay": 0.9})}
  # Penalties with state (LeCam's EMAs) and lazy ones (R1 at step 0 only),
  # with the hinge loss of the LeCam paper. (A strong R1 under the BCE loss
  # amplifies last-bit differences through Adam, lazy or not: 1e-4 apart.)
  scenarios["lecam_lazy_r1"] = small_config(**{
      "loss": "hinge", "penalty.lecam": 0.3, "penalty.r1_lazy": 1.0, "d_steps": 2,
      "model.kwargs.d_norm": "none"})
  # bfloat16 matmuls, 3 steps fused in one call, batches gathered on device.
  scenarios["bf16_fused_on_device"] = small_config(**{"model.dtype": "bfloat16",
                                                      "data.on_device": True})
  # Class-conditional: conditional BN in G, projection + ACGAN heads in D,
  # generated labels drawn per step; host batches of (images, labels), and
  # fused with (images, labels) gathered on device.
  conditional = {"model.num_classes": 10, "model.kwargs.d_head": "projection+acgan"}
  scenarios["conditional"] = small_config(**conditional)
  scenarios["conditional_fused_on_device"] = small_config(**conditional,
                                                          **{"data.on_device": True})
  rng = np.random.default_rng(0)
  IMAGES = rng.integers(0, 256, (200, 28, 28, 1), dtype=np.uint8)
  LABELS = rng.integers(0, 10, (200,), dtype=np.int32)
  out = {}
  for name, cfg in scenarios.items():
    rows = cfg.d_steps * cfg.batch_size
    batches = [rng.permutation(len(IMAGES))[:rows].astype(np.int32) if cfg.data.on_device
               else rng.uniform(-1, 1, (rows, 28, 28, 1)).astype(np.float32) for _ in range(3)]
    if cfg.model.num_classes and not cfg.data.on_device:
      batches = [(b, rng.integers(0, 10, (rows,), dtype=np.int32)) for b in batches]
    out[name] = {"n8": run(jax.devices(), batches, cfg), "n1": run(jax.devices()[:1], batches, cfg)}
  out["eval"] = {"n8": scores(jax.devices()), "n1": scores(jax.devices()[:1])}
  out["augment"] = {"n8": augment_stats(jax.devices()), "n1": augment_stats(jax.devices()[:1])}
  print("RESULT " + json.dumps(out))
