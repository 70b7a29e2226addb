"""Run safety: one trainer per work directory, checks before training, and
one clear line (exit 1, nothing lost) for the faults that used to end in a
traceback or a misleading message."""
import os
import shutil
import signal
import subprocess
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from conftest import DEFAULT_EXPERIMENT, small_config
from gan_jax import checkpointing, cli, commands, configure, outputs, train
from gan_jax.errors import ConfigError
from test_faults import logged_steps, reference, runs, steps  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("no_local_idx_files")


def _cli_error(capsys, *argv) -> tuple[int, str]:
  """gan-jax ARGV in this process: its exit code and its one error line."""
  capsys.readouterr()
  with tfds.testing.mock_data(num_examples=64):
    rc = cli.main(list(argv))
  err = capsys.readouterr().err
  assert "Traceback" not in err
  lines = [l for l in err.splitlines() if l.startswith("gan-jax:")]
  assert len(lines) == 1, err
  return rc, lines[0]


def _snapshot(folder) -> dict:
  """Every file under `folder` -> its bytes (what "nothing lost" compares)."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = f.read()
  return out


def _chattr(flag: str, path) -> bool:
  return subprocess.run(["chattr", flag, str(path)], capture_output=True).returncode == 0


@pytest.fixture
def immutable():
  """Makes folders immutable (`chattr +i`: even root cannot write there),
  undone at the end; skips where that is not possible."""
  done = []
  def make(path):
    if shutil.which("chattr") is None or not _chattr("+i", path):
      pytest.skip("chattr +i is not available here (needs root on ext4/xfs)")
    done.append(path)
  yield make
  for path in done:
    _chattr("-i", path)


@pytest.mark.slow
def test_a_second_trainer_fails_at_once_and_a_killed_ones_work_directory_resumes(runs, tmp_path):
  work = tmp_path / "w"
  first = runs(work, "--pause-at", "4")   # checkpoint 2 saved, paused at step 4
  first.wait_for("AT_STEP 4")
  second = runs(work)
  assert second.finish() == 1
  errors = [l for l in second.stderr().splitlines() if l.startswith("gan-jax:")]
  assert len(errors) == 1 and "Traceback" not in second.stderr()
  assert errors[0].startswith(f"gan-jax: error: {work} is in use by another trainer (host ")
  assert f"pid {first.proc.pid}, started " in errors[0]
  assert not any(l.startswith("RESUMED_FROM") for l in second.out)   # stopped before the data
  assert logged_steps(work) == [1, 2, 3, 4]   # nothing written twice

  first.kill()   # kill -9: the OS drops the lock with the process
  third = runs(work)
  third.wait_for("RESUMED_FROM 2")
  assert third.finish() == 0
  assert logged_steps(work) == [1, 2, 3, 4, 5, 6] and steps(work) == [2, 4, 6]


@pytest.mark.slow
def test_sample_and_eval_run_beside_a_trainer(tmp_path, reference):
  """Readers take no lock: `sample` works while a trainer holds the folder."""
  from gan_jax.workdir import WorkdirLock
  work = tmp_path / "w"
  shutil.copytree(reference(), work)
  with WorkdirLock(str(work)) as lock:
    lock.acquire()
    assert cli.main(["sample", "--workdir", str(work), "--num", "4"]) == 0


@pytest.mark.slow
def test_an_unwritable_checkpoints_folder_fails_before_training(tmp_path, reference, capsys,
                                                                 immutable):
  work = tmp_path / "w"
  shutil.copytree(reference(), work)
  immutable(work / "checkpoints")
  before = _snapshot(work)
  rc, line = _cli_error(capsys, "train", "--config", str(work / "config.json"),
                        "--workdir", str(work), "--config.num_steps=8")
  assert rc == 1
  assert line == (f"gan-jax: error: cannot write in {work / 'checkpoints'}: Operation not "
                  f"permitted; training would fail at its first save (make it writable or "
                  f"choose another --workdir)")
  assert _snapshot(work) == before


@pytest.mark.slow
def test_a_save_that_fails_mid_run_is_one_line(runs, tmp_path, immutable):
  """The folder turns read-only while training runs: the next save fails
  with one line naming it, at once (no time-outs), and what was saved
  before stays; the resume drops the metrics rows after it."""
  work = tmp_path / "w"
  run = runs(work, "--pause-at", "4")
  run.wait_for("AT_STEP 4")
  deadline = time.monotonic() + 600   # checkpoint 2 is committed in the background
  while steps(work) != [2] and time.monotonic() < deadline:
    time.sleep(0.05)
  immutable(work / "checkpoints")
  run.proc.send_signal(signal.SIGTERM)   # resume; step 4 is saved at once
  assert run.finish() == 1
  errors = [l for l in run.stderr().splitlines() if l.startswith("gan-jax:")]
  assert len(errors) == 1 and "Traceback" not in run.stderr(), run.stderr()[-3000:]
  assert errors[0].startswith(f"gan-jax: error: could not save checkpoint 4 in "
                              f"{work / 'checkpoints'}: ")
  assert "checkpoints up to the last one saved are kept" in errors[0]
  assert steps(work) == [2]


def test_a_work_directory_that_is_a_file_is_one_line(tmp_path, capsys):
  path = tmp_path / "w"
  path.write_text("not a folder")
  rc, line = _cli_error(capsys, "train", "--config", DEFAULT_EXPERIMENT, "--workdir", str(path))
  assert rc == 1 and line == f"gan-jax: error: --workdir {path} is a file, not a directory"
  assert path.read_text() == "not a folder"


def test_a_corrupt_inception_weights_file_is_one_line(tmp_path, capsys):
  weights = tmp_path / "fid_inception.msgpack"
  weights.write_bytes(np.random.default_rng(0).bytes(4096))
  rc, line = _cli_error(capsys, "eval", "--config", DEFAULT_EXPERIMENT, "--split", "train",
                        "--config.eval.extractor=inception",
                        f"--config.eval.inception_weights={weights}")
  assert rc == 1
  assert line.startswith(f"gan-jax: error: {weights} is not a converted FID Inception weights "
                         f"file (")
  assert line.endswith("convert pt_inception-2015-12-05-6726825d.pth again with "
                       "experiments/tools/convert_fid_inception.py --pth "
                       f"pt_inception-2015-12-05-6726825d.pth --out {weights}")


@pytest.mark.parametrize("body,expected", [
    ("from gan_jax.config import base_config\n\ndef get_config(:\n  return base_config()\n",
     "syntax error in {path}, line 3: "),
    ("def get_config():\n  return 3\n",
     "{path}: get_config() returned a int, not an ml_collections.ConfigDict"),
    ("def get_config():\n  return {}['model']\n",
     "{path}: get_config() failed at {path}, line 2: KeyError: 'model'"),
], ids=["syntax", "not_a_configdict", "raises"])
def test_a_broken_experiment_file_is_one_line(tmp_path, capsys, body, expected):
  path = tmp_path / "exp.py"
  path.write_text(body)
  rc, line = _cli_error(capsys, "train", "--config", str(path), "--workdir", str(tmp_path / "w"))
  assert rc == 2 and line.startswith("gan-jax: error: " + expected.format(path=path))
  assert not (tmp_path / "w").exists()


def test_negative_num_steps_other_than_unset_is_rejected(tmp_path, capsys):
  rc, line = _cli_error(capsys, "train", "--config", DEFAULT_EXPERIMENT,
                        "--workdir", str(tmp_path / "w"), "--config.num_steps=-3")
  assert rc == 1 and "num_steps must be > 0 or -1 (unset: num_epochs decides)" in line
  assert not (tmp_path / "w").exists()


def test_divergence_without_a_checkpoint_says_so():
  with pytest.raises(outputs.DivergenceError, match=r"d_loss = nan; no checkpoint was written$"):
    outputs.check_finite(3, {"d_loss": float("nan")})
  with pytest.raises(outputs.DivergenceError,
                     match=r"the last checkpoint \(step 2\) is from before it$"):
    outputs.check_finite(3, {"d_loss": float("inf")}, saved_step=2)


@pytest.mark.slow
def test_a_finite_loss_beyond_the_bound_stops_training(tmp_path):
  """Learning rates of 1e6 wreck the model with finite losses; the default
  bound stops it before the first checkpoint, as a NaN would."""
  cfg = small_config(num_steps=6, checkpoint_every=4, **{"optim.g_lr": 1e6, "optim.d_lr": 1e6})
  with pytest.raises(outputs.DivergenceError,
                     match=r"training diverged at step \d: .*loss = .*\(beyond divergence."
                           r"max_abs_loss=1e\+06\); no checkpoint was written"):
    with tfds.testing.mock_data(num_examples=64):
      train.train_and_evaluate(cfg, str(tmp_path / "w"))
  assert checkpointing.Checkpointer(str(tmp_path / "w"), 1).latest_step() is None
  with pytest.raises(ConfigError, match="divergence.max_abs_loss must be >= 0"):
    configure.validate(small_config(**{"divergence.max_abs_loss": -1.0}), 1)


@pytest.mark.slow
def test_resuming_a_sweep_with_more_members_says_what_will_work(tmp_path):
  cfg = small_config(num_steps=2, **{"sweep.seeds": 2})
  with tfds.testing.mock_data(num_examples=64):
    train.train_and_evaluate(cfg, str(tmp_path))
    with pytest.raises(ConfigError) as e:
      train.train_and_evaluate(small_config(num_steps=4, **{"sweep.seeds": 3}), str(tmp_path))
  message = str(e.value)
  assert "step 0: seed_2; step 2: seed_0, seed_1" in message
  assert "a sweep resumes only with the members it was started with" in message
  assert "delete" not in message
  assert steps(tmp_path / "members" / "seed_0") == [2]


@pytest.mark.slow
def test_sample_and_eval_print_no_read_only_notices(tmp_path, reference, caplog):
  work = tmp_path / "w"
  shutil.copytree(reference(), work)
  with caplog.at_level("WARNING"):
    commands.write_samples(configure.load(str(work / "config.json")), str(work), 4)
  assert not [r for r in caplog.records if "read only" in r.getMessage()], caplog.text
