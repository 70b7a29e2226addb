"""End to end: train_and_evaluate under tfds.testing.mock_data, resume, sample, CLI."""
import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from gan_jax import (checkpointing, cli, commands, components, configure, data,
                     mesh as mesh_lib, step as step_lib, train)
from conftest import DEFAULT_EXPERIMENT, make_idx_data, small_config, write_idx_folder


pytestmark = pytest.mark.usefixtures("no_local_idx_files")


def _train(cfg, workdir, num_examples=64):
  with tfds.testing.mock_data(num_examples=num_examples):
    return train.train_and_evaluate(cfg, str(workdir))


def test_two_steps_end_to_end(tmp_path):
  cfg = small_config(num_steps=2)
  state = _train(cfg, tmp_path)
  assert int(state.step) == 2
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2]
  assert all(np.isfinite(r[k]) for r in rows for k in ("d_loss", "g_loss", "images_per_sec"))
  assert os.path.isfile(tmp_path / "samples" / "step_0000002.png")
  assert os.path.isfile(tmp_path / "losses.png")
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert checkpointing.Checkpointer(str(tmp_path), 1).latest_step() == 2
  assert json.load(open(tmp_path / "config.json"))["model"]["kwargs"]["g_features"] == 32


def test_fused_on_device_run_equals_step_by_step_pipeline_run(tmp_path):
  """The whole loop with 3 steps per call and the split on device trains
  exactly the run fed step by step by the tf.data pipeline (same data order
  across the epoch boundary at step 5, same logs and checkpoints), with
  events (logs, grids, checkpoints) that do not fall on chunk ends: calls of
  3, 1, 1, 3 steps."""
  kw = dict(num_steps=8, log_every=4, sample_every=5, checkpoint_every=5)
  plain = jax.device_get(_train(small_config(**kw, steps_per_call=1, **{"data.on_device": False}),
                                tmp_path / "plain", num_examples=80))
  fused = jax.device_get(_train(small_config(**kw, steps_per_call=3, **{"data.on_device": True}),
                                tmp_path / "fused", num_examples=80))
  assert int(fused.step) == 8
  for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(fused)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  rows = lambda d: [json.loads(l) for l in open(tmp_path / d / "metrics.jsonl")]
  assert [r["step"] for r in rows("fused")] == [r["step"] for r in rows("plain")] == [4, 8]
  for a, b in zip(rows("plain"), rows("fused")):
    np.testing.assert_allclose(a["d_loss"], b["d_loss"], rtol=1e-5)
  assert sorted(os.listdir(tmp_path / "fused" / "samples")) == sorted(
      os.listdir(tmp_path / "plain" / "samples")) == [f"step_{n:07d}.png" for n in (5, 8)]
  assert checkpointing.Checkpointer(str(tmp_path / "fused"), 1).manager.all_steps() == [5, 8]


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
def test_resume_continues_from_checkpoint(tmp_path):
  cfg = small_config(num_steps=2)
  first = jax.device_get(_train(cfg, tmp_path))
  cfg = small_config(num_steps=4)
  c = components.build_components(cfg)
  mesh = mesh_lib.make_mesh()
  restored = jax.device_get(checkpointing.Checkpointer(str(tmp_path), 3).restore(
      components.init_state(cfg, c, mesh)))
  # The checkpoint holds exactly the state training returned (donation-safe save).
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(a, b)
  # As if the first run had logged steps 3 and 4 and was killed before saving them.
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write(json.dumps({"step": 3, "d_loss": 9.0}) + "\n")
  resumed = _train(cfg, tmp_path)
  assert int(resumed.step) == 4
  steps = [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")]
  assert steps == [1, 2, 3, 4]  # continued, not restarted, no stale rows
  assert all(json.loads(l).get("d_loss") != 9.0 for l in open(tmp_path / "metrics.jsonl"))
  assert checkpointing.Checkpointer(str(tmp_path), 1).manager.all_steps() == [2, 4]


@pytest.mark.slow
def test_a_work_directory_from_before_model_kwargs_and_penalty_state_resumes(tmp_path):
  """A config.json with the flat model section of before (every family's keys)
  and checkpoints saved without GANState.aux: the run resumes, and `sample`
  and a resume from config.json work on it."""
  cfg = small_config(num_steps=2)
  first = jax.device_get(_train(cfg, tmp_path))
  saved = json.load(open(tmp_path / "config.json"))
  saved["model"].update(saved["model"].pop("kwargs"), d_dropout=0.0, g_hidden=[1024, 2048],
                        d_hidden=[512], d_slope=0.2)
  saved["penalty"] = {"gp": 0.0, "dragan": 0.0, "r1": 0.0, "r2": 0.0}
  del saved["imports"]
  json.dump(saved, open(tmp_path / "config.json", "w"))
  old_state = {f.name: getattr(first, f.name) for f in dataclasses.fields(first) if f.name != "aux"}
  shutil.rmtree(tmp_path / "checkpoints")
  ckpt = checkpointing.Checkpointer(str(tmp_path), 3)
  ckpt.save(2, old_state)
  ckpt.close()
  old = configure.load(str(tmp_path / "config.json"), {"num_steps": "4"})
  assert dict(old.model.kwargs) == {"g_features": 32, "d_features": 16, "g_norm": "batch",
                                    "d_norm": "batch", "d_spectral_norm": False,
                                    "upsample": "phase", "g_cond": "bn",
                                    "d_head": "projection", "g_embed_dim": 50}
  assert cli.main(["sample", "--workdir", str(tmp_path), "--num", "4"]) == 0
  resumed = _train(old, tmp_path)
  assert int(resumed.step) == 4 and resumed.aux == {}
  assert [json.loads(l)["step"] for l in open(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


def test_sample_writes_npy_and_grid(tmp_path):
  cfg = small_config(num_steps=2)
  _train(cfg, tmp_path)
  code = cli.main(["sample", "--workdir", str(tmp_path), "--num", "10"])
  assert code == 0
  images = np.load(tmp_path / "samples" / "samples_step2_n10_seed0.npy")
  assert images.shape == (10, 28, 28, 1)
  assert np.all(np.abs(images) <= 1.0) and images.std() > 0
  assert os.path.isfile(tmp_path / "samples" / "samples_step2_n10_seed0.png")


def test_sample_without_checkpoint_is_an_error(tmp_path):
  cfg = small_config()
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    commands.write_samples(cfg, str(tmp_path), 4)


@pytest.mark.slow
def test_sample_of_a_step_without_checkpoint_lists_the_steps(tmp_path):
  _train(small_config(num_steps=2), tmp_path)
  with pytest.raises(checkpointing.NoCheckpointError,
                     match=r"no checkpoint of step 7 in .*; steps: \[2\]"):
    commands.write_samples(small_config(), str(tmp_path), 4, step=7)


def test_cli_unknown_key_lists_valid_keys(tmp_path, capsys):
  code = cli.main(["train", "--config", DEFAULT_EXPERIMENT, "--workdir", str(tmp_path),
                   "--config.optim.lr=1e-3"])
  err = capsys.readouterr().err
  assert code == 2
  assert "unknown config key 'optim.lr'" in err and "optim.g_lr" in err and "batch_size" in err
  assert not os.listdir(tmp_path)  # nothing was started


@pytest.mark.parametrize("arg,message", [
    ("--config.batch_size=abc", "is not an int"),
    ("--config.progress_bar=maybe", "is not a bool"),
    ("--config.data.pixel_range=(0,)", "tuple of 2"),
])
def test_cli_bad_value(tmp_path, capsys, arg, message):
  code = cli.main(["train", "--config", DEFAULT_EXPERIMENT, "--workdir", str(tmp_path), arg])
  assert code == 2 and message in capsys.readouterr().err


def test_cli_overrides_are_applied():
  from gan_jax import config as config_lib
  cfg = config_lib.apply_overrides(config_lib.load_config(DEFAULT_EXPERIMENT), {
      "optim.d_lr": "1e-4", "num_steps": "7", "data.pixel_range": "(-0.5, 0.5)",
      "progress_bar": "false", "data.name": "mnist"})
  assert cfg.optim.d_lr == 1e-4 and cfg.num_steps == 7 and cfg.progress_bar is False
  assert tuple(cfg.data.pixel_range) == (-0.5, 0.5) and cfg.data.name == "mnist"


def test_cli_bad_idx_file_is_one_clear_error(tmp_path, capsys):
  """A truncated IDX file stops `train` before anything runs, with one line naming it."""
  folder = write_idx_folder(tmp_path / "idx", make_idx_data({"train": 20, "test": 5}))
  bad = folder / "train-images-idx3-ubyte.gz"
  import gzip
  raw = gzip.decompress(bad.read_bytes())
  bad.write_bytes(gzip.compress(raw[:-100]))
  code = cli.main(["train", "--config", DEFAULT_EXPERIMENT, "--workdir", str(tmp_path / "w"),
                   f"--config.data.idx_dir={folder}", f"--config.data.data_dir={tmp_path / 'tfds'}",
                   "--config.progress_bar=false"])
  err = capsys.readouterr().err.strip()
  assert code == 1
  assert err.startswith("gan-jax: error:") and "truncated" in err and str(bad) in err
  assert "Traceback" not in err
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("key,value,message", [
    ("batch_size", 0, "'batch_size' must be positive"),
    ("log_every", 0, "'log_every' must be positive"),
    ("data.pixel_range", (1.0, -1.0), "low < high"),
    ("loss", "wasserstein_typo", "unknown loss"),
])
def test_invalid_config_rejected_before_training(tmp_path, key, value, message):
  from gan_jax.config import ConfigError
  with pytest.raises(ConfigError, match=message):
    train.train_and_evaluate(small_config(**{key: value}), str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
def test_divergence_stops_before_checkpointing_it(tmp_path, monkeypatch):
  """A NaN metric at step 2 stops training with the step and metric named, and
  the state of that step is not checkpointed (step 1's stays the latest)."""
  import jax.numpy as jnp
  from gan_jax import outputs
  real_step = step_lib.train_step
  def step_with_nan_g_loss_at_2(state, batch, **kw):
    new_state, metrics = real_step(state, batch, **kw)
    metrics["g_loss"] = jnp.where(state.step == 1, jnp.nan, metrics["g_loss"])
    return new_state, metrics
  monkeypatch.setattr(step_lib, "train_step", step_with_nan_g_loss_at_2)
  cfg = small_config(num_steps=4, checkpoint_every=1, log_every=4)
  with pytest.raises(outputs.DivergenceError, match=r"step 2: g_loss = nan"):
    _train(cfg, tmp_path)
  assert checkpointing.Checkpointer(str(tmp_path), 1).manager.all_steps() == [1]


COLOR64 = os.path.join(os.path.dirname(DEFAULT_EXPERIMENT), "dcgan_color64.py")


def test_folder_size_that_does_not_fit_the_model_names_both(tmp_path):
  from conftest import write_image_folder
  from gan_jax.config import apply_overrides, load_config
  folder = write_image_folder(tmp_path / "photos", 3)
  cfg = apply_overrides(load_config(COLOR64), {"data.folder": str(folder),
                                               "data.image_size": "48"})
  with pytest.raises(data.DataError, match=r"48x48 \(data.image_size\).*64x64 \(model.image_size\)"):
    train.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()


def test_folder_without_readable_images_is_one_line_error(tmp_path, capsys):
  (tmp_path / "photos").mkdir()
  (tmp_path / "photos" / "a.jpg").write_bytes(b"garbage")
  (tmp_path / "photos" / "notes.txt").write_text("hello")
  rc = cli.main(["train", "--config", COLOR64, "--workdir", str(tmp_path / "w"),
                 f"--config.data.folder={tmp_path / 'photos'}"])
  err = capsys.readouterr().err.strip()
  assert rc == 1 and err.startswith("gan-jax: error: no readable images") and "\n" not in err
  assert "1 undecodable" in err and "1 not images" in err
  assert not (tmp_path / "w").exists()


def test_tfds_image_shape_that_does_not_fit_the_model_names_both(tmp_path):
  cfg = small_config(**{"data.name": "cifar10"})
  with tfds.testing.mock_data(num_examples=16):
    with pytest.raises(data.DataError, match=r"\(32, 32, 3\).*\(28, 28, 1\)"):
      train.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert not (tmp_path / "w").exists()
