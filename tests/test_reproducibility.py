"""Bitwise reproducibility on CPU: the same config and seed give the same
parameters, and a run stopped at step k and resumed equals the run that
never stopped (data order included: the input position is derived from the
step)."""
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import small_config
from gan_jax import train

pytestmark = pytest.mark.usefixtures("no_local_idx_files")


def _run(cfg, workdir):
  # 64 examples, batch 16: 4 steps per epoch, so 6 steps cross an epoch.
  with tfds.testing.mock_data(num_examples=64):
    return jax.device_get(train.train_and_evaluate(cfg, str(workdir)))


def assert_bitwise_equal(a, b):
  la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.parametrize("on_device,steps_per_call", [
    pytest.param(False, 1, marks=pytest.mark.slow), (True, 2)], ids=["tf.data", "on_device_fused"])
def test_same_seed_is_bitwise_equal_and_resume_equals_no_stop(tmp_path, on_device,
                                                               steps_per_call):
  """Two runs of 6 steps; and one stopped at step 3 (mid-epoch) and resumed
  to step 6 (the next epoch)."""
  common = dict(sample_every=0, checkpoint_every=100, steps_per_call=steps_per_call,
                **{"data.on_device": on_device})
  first = _run(small_config(num_steps=6, **common), tmp_path / "first")
  second = _run(small_config(num_steps=6, **common), tmp_path / "second")
  assert int(first.step) == 6
  assert_bitwise_equal(first, second)
  part = _run(small_config(num_steps=3, **common), tmp_path / "resumed")
  resumed = _run(small_config(num_steps=6, **common), tmp_path / "resumed")
  assert int(resumed.step) == 6
  assert_bitwise_equal(first, resumed)
  # the comparison can fail: training moves the parameters
  assert not np.array_equal(np.asarray(jax.tree.leaves(part.g_params)[0]),
                            np.asarray(jax.tree.leaves(first.g_params)[0]))
