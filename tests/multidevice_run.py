"""Run by test_multidevice.py in a subprocess with 8 fake CPU devices:
trains 3 steps on a mesh of 8 devices and on a mesh of 1 device from the same
state and the same global batches, and prints both runs' metrics and final
parameters' checksums as JSON."""
import json
import os
import sys

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import small_config  # noqa: E402
from gan_jax import data, train  # noqa: E402


def run(devices, batches, cfg):
  """Steps on a mesh of `devices`; `batches` hold d_steps global batches each."""
  c = train.build_components(cfg)
  mesh = train.make_mesh(devices)
  state = train.init_state(cfg, c, mesh)
  step = train.make_train_step(c, mesh)
  history = []
  for b in batches:
    b = data.device_major(b, cfg.d_steps, len(devices))
    state, metrics = step(state, data.shard_batch(b, mesh))
    history.append({k: float(v) for k, v in jax.device_get(metrics).items()})
  params = jax.device_get((state.g_params, state.d_params, state.g_ema_params,
                           state.g_batch_stats, state.d_batch_stats))
  return history, [float(np.sum(np.abs(x))) for x in jax.tree.leaves(params)]


if __name__ == "__main__":
  assert jax.device_count() == 8, jax.devices()
  # The default DCGAN with noisy labels; a WGAN with an R1 penalty, 3 critic
  # steps and an EMA. (Penalties with random draws, like GP, draw per device,
  # so they match 1 device only in distribution.)
  scenarios = {"dcgan": small_config(real_label_noise=0.05),
               "wgan_r1": small_config(**{"loss": "wasserstein", "penalty.r1": 10.0, "d_steps": 3,
                                          "model.d_norm": "none", "ema_decay": 0.9})}
  rng = np.random.default_rng(0)
  out = {}
  for name, cfg in scenarios.items():
    batches = [rng.uniform(-1, 1, (cfg.d_steps * cfg.batch_size, 28, 28, 1)).astype(np.float32)
               for _ in range(3)]
    out[name] = {"n8": run(jax.devices(), batches, cfg), "n1": run(jax.devices()[:1], batches, cfg)}
  print("RESULT " + json.dumps(out))
