import json
import os
import subprocess
import sys

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.slow
def test_eight_devices_equal_one_device():
  """Same global batches on 8 (fake CPU) devices and on 1: same losses,
  gradient norms and parameters after 3 steps, for a DCGAN with noisy labels,
  for a WGAN with an R1 penalty, 3 critic steps (each on its own batch) and an EMA, for
  LeCam (state kept equal on every device) with a lazy R1 and 2 critic steps, and
  for bfloat16 matmuls with 3 steps fused and batches gathered on device; and
  for a class-conditional DCGAN (conditional BN, projection + ACGAN heads),
  from host batches and fused from (images, labels) on device; every
  evaluation score with feature batches split over 8 devices vs 1; and
  DiffAugment's draws (per device) matching one device's in distribution."""
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
  proc = subprocess.run([sys.executable, os.path.join(HERE, "scripts", "multidevice_run.py")],
                        env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")][-1]
  out = json.loads(line[len("RESULT "):])
  assert set(out) == {"dcgan", "wgan_r1", "lecam_lazy_r1", "bf16_fused_on_device",
                      "conditional", "conditional_fused_on_device", "eval", "augment"}
  # DiffAugment: each device draws its own augmentations (not the 1-device
  # numbers), so 8 devices match 1 in distribution: over 4096 images at p =
  # 0.5, the fraction changed (std ~0.008) and the mean pixel agree.
  aug = out.pop("augment")
  for policy, (frac1, mean1) in aug["n1"].items():
    frac8, mean8 = aug["n8"][policy]
    assert abs(frac1 - 0.5) < 0.05 and abs(frac8 - frac1) < 0.04, (policy, frac8, frac1)
    assert abs(mean8 - mean1) < 0.02, (policy, mean8, mean1)
  # Evaluation: feature batches split over 8 devices give the same scores.
  ev = out.pop("eval")
  assert set(ev["n8"]) == {"fd", "kid", "kid_std", "is", "is_std", "is_single", "precision",
                           "recall"}
  for key, v1 in ev["n1"].items():
    assert abs(ev["n8"][key] - v1) <= 1e-5 * max(1.0, abs(v1)), (key, ev["n8"][key], v1)
  for name, runs in out.items():
    (h8, p8), (h1, p1) = runs["n8"], runs["n1"]
    assert len(h8) == len(h1) == 3
    # bfloat16 rounds values that differ in the last fp32 bit (a different
    # summation order over devices) to different neighbours.
    tol = 10.0 if name.startswith("bf16") else 1.0
    for m8, m1 in zip(h8, h1):
      for key in ("d_loss", "g_loss"):
        assert abs(m8[key] - m1[key]) <= tol * 1e-5 * max(1.0, abs(m1[key])), (
            name, key, m8[key], m1[key])
      for key in ("d_grad_norm", "g_grad_norm"):  # catches a gradient scaled by the device count
        np.testing.assert_allclose(m8[key], m1[key], rtol=tol * 1e-4, err_msg=f"{name} {key}")
    np.testing.assert_allclose(p8, p1, rtol=tol * 1e-4, err_msg=name)
