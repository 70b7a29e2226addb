"""The core needs no TensorFlow: with `import tensorflow` (and TFDS,
TensorBoard) failing, a fused on-device run on an in-memory source trains,
`gan-jax sample` samples it and the benchmark's random-data path runs."""
import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "tests", "scripts", "tf_free_run.py")


@pytest.mark.slow
def test_train_sample_and_bench_run_without_tensorflow(tmp_path):
  out = subprocess.run([sys.executable, SCRIPT, str(tmp_path / "work")], cwd=tmp_path,
                       env={**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"},
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  modules = json.loads(out.stdout.strip().splitlines()[-1])
  assert not [m for m in modules if not m.startswith("gan_jax")]
  assert "gan_jax.train" in modules and "gan_jax.commands" in modules
  assert os.path.isfile(tmp_path / "work" / "samples" / "samples_step4_n4_seed0.npy")
  assert os.path.isfile(tmp_path / "work" / "samples" / "step_0000004.png")
