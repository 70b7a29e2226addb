"""Sweeps: K GANs vmapped in one program (seeds, learning rates, loss
weights) equal K single runs."""
import json
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import small_config
from gan_jax import checkpointing, config as config_lib, outputs, sweep, train

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


@pytest.mark.slow
def test_each_member_of_a_learning_rate_sweep_equals_its_single_run(tmp_path):
  # The swept D learning rate is traced (one program for every value); each
  # member is the single run with that value, penalty included.
  common = dict(num_steps=3, seed=1, sample_every=0, checkpoint_every=100,
                **{"optim.eps": 1e-3, "penalty.r1": 1.0})
  values = (1e-4, 1e-3)
  stacked = _run(small_config(**common, **{"sweep.param": "optim.d_lr",
                                           "sweep.param_values": values}), tmp_path / "sweep")
  for i, lr in enumerate(values):
    single = _run(small_config(**common, **{"optim.d_lr": lr}), tmp_path / f"single{i}")
    for a, b in zip(jax.tree.leaves(sweep.member(stacked, i)), jax.tree.leaves(single)):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
    d = tmp_path / "sweep" / "members" / f"optim.d_lr={lr!r}_seed_1"
    assert json.loads((d / "config.json").read_text())["optim"]["d_lr"] == lr
  # the two learning rates did train differently
  a, b = (jax.tree.leaves(sweep.member(stacked, i).d_params)[0] for i in (0, 1))
  assert np.abs(np.asarray(a) - np.asarray(b)).max() > 1e-4


@pytest.mark.slow
def test_a_penalty_weight_sweep_over_seeds_names_and_orders_members(tmp_path):
  cfg = small_config(num_steps=2, sample_every=2, checkpoint_every=100,
                     **{"sweep.seeds": 2, "sweep.param": "penalty.gp",
                        "sweep.param_values": (0.0, 10.0)})
  runs = sweep.members(cfg, str(tmp_path))
  assert [m.name for m in runs] == ["penalty.gp=0.0_seed_0", "penalty.gp=0.0_seed_1",
                                    "penalty.gp=10.0_seed_0", "penalty.gp=10.0_seed_1"]
  stacked = _run(cfg, tmp_path)
  assert int(stacked.step[0]) == 2 and stacked.step.shape == (4,)
  for m in runs:
    rows = [json.loads(l) for l in open(os.path.join(m.workdir, "metrics.jsonl"))]
    # weight 0 adds 0 x the penalty; weight 10 adds 10 x it
    total_minus_adv = rows[-1]["d_loss"] - rows[-1]["d_adv_loss"]
    weight = m.hparams["penalty.gp"]
    np.testing.assert_allclose(total_minus_adv, weight * rows[-1]["penalty_gp"], rtol=1e-4,
                               atol=1e-6)
    assert os.path.exists(os.path.join(m.workdir, "samples", "step_0000002.png"))
  # same seed, different weight: same start, different training
  p = [np.asarray(jax.tree.leaves(sweep.member(stacked, i).d_params)[0]) for i in range(4)]
  assert np.abs(p[0] - p[2]).max() > 0 and np.abs(p[0] - p[1]).max() > 0


def test_sweep_settings_are_checked(tmp_path):
  bad = [({"sweep.seeds": -1}, "sweep.seeds must be >= 0"),
         ({"sweep.param": "model.latent_dim", "sweep.param_values": (8.0, 16.0)},
          "cannot be swept in one program"),
         ({"sweep.param": "penalty.nope", "sweep.param_values": (1.0,)}, "no such penalty"),
         ({"sweep.param": "optim.d_lr"}, "go together"),
         ({"sweep.param_values": (1.0, 2.0)}, "go together"),
         ({"sweep.param": "optim.d_lr", "sweep.param_values": (1e-4, 1e-4)}, "repeated values"),
         ({"sweep.param": "optim.d_lr", "sweep.param_values": ("fast",)}, "must be numbers"),
         ({"sweep.param": "penalty.gp", "sweep.param_values": (-1.0, 1.0)},
          "penalty.gp must be >= 0"),
         ({"sweep.param": "ema_decay", "sweep.param_values": (0.5, 1.5)}, "ema_decay must be in")]
  for overrides, message in bad:
    with pytest.raises(config_lib.ConfigError, match=message):
      train.train_and_evaluate(small_config(**overrides), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
def test_a_diverged_member_is_named_with_its_step_and_nothing_is_saved(tmp_path):
  # An infinite penalty weight makes member 2's D loss infinite at step 1.
  cfg = small_config(num_steps=2, sample_every=0, checkpoint_every=1,
                     **{"sweep.param": "penalty.gp", "sweep.param_values": (1.0, 1e999)})
  with pytest.raises(outputs.DivergenceError,
                     match=r"diverged at step 1 in member penalty\.gp=inf_seed_0: .*d_loss = inf"):
    _run(cfg, tmp_path)
  for m in sweep.members(cfg, str(tmp_path)):
    assert checkpointing.Checkpointer(m.workdir, 1).manager.all_steps() == []
