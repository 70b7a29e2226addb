"""`sweep.seeds=K`: K GANs vmapped in one program equal K single runs."""
import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import small_config
from gan_jax import checkpointing, config as config_lib, sweep, train

pytestmark = pytest.mark.usefixtures("no_local_idx_files")


def _run(cfg, workdir):
  with tfds.testing.mock_data(num_examples=64):
    return jax.device_get(train.train_and_evaluate(cfg, str(workdir)))


@pytest.mark.slow
@pytest.mark.parametrize("overrides", [
    {"data.on_device": True, "steps_per_call": 2},
    {"d_steps": 2, "ema_decay": 0.9, "real_label_noise": 0.05},
], ids=["fused_on_device", "critic_steps_ema_noisy_labels"])
def test_each_member_equals_the_single_run_with_its_seed(tmp_path, overrides):
  # Adam's eps at 1e-3: with the default 1e-8 its first steps move each
  # weight by ~lr * sign(g), so a last-bit difference in a near-zero gradient
  # (the batched matmuls of vmap round differently) moves a weight by up to
  # 2 * lr; measured: max 1.2e-4 after 3 steps. With a smooth update the
  # members match the single runs to ~4e-7 in every leaf.
  common = dict(num_steps=3, seed=5, sample_every=3, checkpoint_every=100,
                **{"optim.eps": 1e-3, **overrides})
  stacked = _run(small_config(**{**common, "sweep.seeds": 2}), tmp_path / "sweep")
  for i, seed in enumerate((5, 6)):
    single = _run(small_config(**{**common, "seed": seed}), tmp_path / f"single{seed}")
    got = sweep.member(stacked, i)
    assert int(got.step) == int(single.step) == 3
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(single)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    # per-member outputs, laid out like a single run's work directory
    d = tmp_path / "sweep" / "members" / f"seed_{seed}"
    assert json.loads((d / "config.json").read_text())["seed"] == seed
    rows = [json.loads(l) for l in open(d / "metrics.jsonl")]
    single_rows = [json.loads(l) for l in open(tmp_path / f"single{seed}" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3]
    np.testing.assert_allclose([r["d_loss"] for r in rows],
                               [r["d_loss"] for r in single_rows], rtol=1e-5)
    assert (d / "samples" / "step_0000003.png").exists()
    assert (d / "generator" / "final.msgpack").exists()
    assert checkpointing.Checkpointer(str(d), 1).manager.all_steps() == [3]


@pytest.mark.slow
def test_sweep_resumes_every_member(tmp_path):
  cfg = lambda n: small_config(num_steps=n, sample_every=0, checkpoint_every=100,
                               **{"sweep.seeds": 2})
  straight = _run(cfg(4), tmp_path / "straight")
  _run(cfg(2), tmp_path / "resumed")
  resumed = _run(cfg(4), tmp_path / "resumed")
  for a, b in zip(jax.tree.leaves(straight), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_sweep_settings_are_checked(tmp_path):
  with pytest.raises(config_lib.ConfigError, match="sweep.seeds must be >= 0"):
    train.train_and_evaluate(small_config(**{"sweep.seeds": -1}), str(tmp_path / "w"))
  with pytest.raises(config_lib.ConfigError, match="not supported in a sweep"):
    train.train_and_evaluate(small_config(**{"sweep.seeds": 2, "eval.every": 5}),
                             str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
