"""Faults around checkpoints: SIGTERM / SIGINT (checkpoint the step reached,
exit 128 + signal, resume), kill -9 in the middle of an async save (resume
from the last complete step), a corrupted latest checkpoint (fall back to the
one before), and a config whose shapes do not fit the checkpoint (one clear
error). Real signals and kills go to `scripts/fault_run.py` subprocesses, which share
a JAX compilation cache so only the first one compiles."""
import glob
import logging
import os
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from conftest import ROOT, small_config
from gan_jax import checkpointing, cli, components, mesh as mesh_lib, outputs

pytestmark = pytest.mark.usefixtures("no_local_idx_files")

HERE = os.path.dirname(os.path.abspath(__file__))
NUM_STEPS = 6          # fault_run.py's run: checkpoints at 2, 4, 6, three kept
# Any one subprocess wait: a guard against hangs, not a speed test (the runs
# take ~10-30 s on a quiet machine, several times that on a slow one under load).
TIMEOUT = 600


class Run:
  """fault_run.py in a subprocess, its stdout and stderr read as they come."""

  def __init__(self, workdir, args, env):
    self.proc = subprocess.Popen([sys.executable, os.path.join(HERE, "scripts", "fault_run.py"),
                                  str(workdir), *args], env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    self.lines, self.out, self.err = queue.Queue(), [], []
    self.readers = [threading.Thread(target=self._read, args=(self.proc.stdout, self.out, True)),
                    threading.Thread(target=self._read, args=(self.proc.stderr, self.err, False))]
    for t in self.readers:
      t.start()

  def _read(self, stream, sink, announce):
    for line in stream:
      sink.append(line)
      if announce:
        self.lines.put(line.strip())
    if announce:
      self.lines.put(None)

  def stderr(self) -> str:
    return "".join(self.err)

  def wait_for(self, marker: str) -> None:
    """Until the run prints `marker` on stdout."""
    deadline = time.monotonic() + TIMEOUT
    while True:
      try:
        line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        self.kill()
        pytest.fail(f"no {marker!r} within {TIMEOUT} s; stderr:\n{self.stderr()[-3000:]}")
      if line is None:
        self.proc.wait()
        pytest.fail(f"exited ({self.proc.returncode}) before {marker!r}; "
                    f"stderr:\n{self.stderr()[-3000:]}")
      if line == marker:
        return

  def finish(self) -> int:
    try:
      self.proc.wait(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
      self.kill()
      pytest.fail(f"still running after {TIMEOUT} s; stderr:\n{self.stderr()[-3000:]}")
    for t in self.readers:
      t.join(timeout=10)
    return self.proc.returncode

  def kill(self) -> None:
    if self.proc.poll() is None:
      self.proc.kill()
      self.proc.wait()


@pytest.fixture(scope="module")
def runs():
  """Starts fault_run.py subprocesses (sharing the session's compilation
  cache, conftest.py); kills any still running at the end."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
  started = []

  def start(workdir, *args) -> Run:
    run = Run(workdir, args, env)
    started.append(run)
    return run
  yield start
  for run in started:
    run.kill()


@pytest.fixture(scope="module")
def reference(runs, tmp_path_factory):
  """The uninterrupted run's work directory (call to wait for it). Runs in
  the background; once it has compiled everything (its first checkpoint),
  the other runs find their programs in the compilation cache."""
  workdir = tmp_path_factory.mktemp("reference")
  run = runs(workdir)
  run.wait_for("COMMITTING 2")
  done = []

  def get():
    if not done:
      rc = run.finish()
      assert rc == 0, run.stderr()[-3000:]
      done.append(workdir)
    return done[0]
  return get


@pytest.fixture(scope="module")
def interrupted_runs(runs, reference, tmp_path_factory):
  """The runs the fault tests interrupt, started together (once the
  reference has filled the compilation cache), each soon waiting at its
  hook for its test: {name: (workdir, Run)}."""
  hooks = {"SIGTERM": ("--pause-at", "2", "--slow-commit", "3:1"),
           "SIGINT": ("--pause-at", "2", "--slow-commit", "3:1"),
           "kill": ("--slow-commit", "4:300")}
  started = {}
  for name, args in hooks.items():
    workdir = tmp_path_factory.mktemp(name) / "w"
    started[name] = (workdir, runs(workdir, *args))
  return started


def steps(workdir):
  return checkpointing.Checkpointer(str(workdir), 3, read_only=True).manager.all_steps()


def tmp_dirs(workdir):
  return glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))


def load(workdir, step):
  """Checkpoint `step` as saved: a dict of arrays, no target needed."""
  with ocp.StandardCheckpointer() as c:
    return c.restore(os.path.join(workdir, "checkpoints", str(step), "default"))


def assert_same_checkpoint(workdir_a, workdir_b, step):
  a, b = (jax.tree_util.tree_flatten_with_path(load(w, step))[0] for w in (workdir_a, workdir_b))
  assert [p for p, _ in a] == [p for p, _ in b]
  for (path, x), (_, y) in zip(a, b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y), err_msg=jax.tree_util.keystr(path))


def logged_steps(workdir):
  return [r["step"] for r in outputs.read_metrics(os.path.join(workdir, "metrics.jsonl"))
          if "d_loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_checkpoints_the_step_reached_and_the_same_command_resumes(
    runs, reference, interrupted_runs, sig):
  """The signal lands after step 2 (checkpointed as usual); the loop stops
  after step 3, checks it, saves it, and exits 128 + signal. A second signal
  while that save commits changes nothing. Running again resumes at 3 and
  ends with exactly the uninterrupted run's state."""
  work, run = interrupted_runs[sig.name]
  run.wait_for("AT_STEP 2")
  run.proc.send_signal(sig)
  run.wait_for("COMMITTING 3")   # the stop's own save, committing for 1 s
  run.proc.send_signal(sig)
  rc = run.finish()
  err = run.stderr()
  assert rc == 128 + sig, err[-3000:]
  assert f"stopped by {sig.name} at step 3; checkpoint saved" in err
  assert "Traceback" not in err and "KeyboardInterrupt" not in err
  assert steps(work) == [2, 3] and not tmp_dirs(work)

  again = runs(work)
  assert again.finish() == 0, again.stderr()[-3000:]
  assert "RESUMED_FROM 3\n" in again.out
  assert steps(work) == [3, 4, 6]
  assert logged_steps(work) == list(range(1, NUM_STEPS + 1))
  assert_same_checkpoint(reference(), work, NUM_STEPS)


@pytest.mark.slow
def test_kill_9_mid_save_resumes_from_the_last_complete_checkpoint(
    runs, reference, interrupted_runs):
  """SIGKILL while checkpoint 4 is written but not committed: Orbax's
  temporary directory is left, never taken for a step; the next run resumes
  from 2, deletes it, and ends with the uninterrupted run's state."""
  work, run = interrupted_runs["kill"]
  run.wait_for("COMMITTING 4")
  run.proc.kill()
  assert run.finish() == -signal.SIGKILL
  # (Orbax starts step 6's save only once 4's is committed.)
  assert [os.path.basename(p).split(".")[0] for p in tmp_dirs(work)] == ["4"]
  assert steps(work) == [2]

  again = runs(work)
  assert again.finish() == 0, again.stderr()[-3000:]
  assert "RESUMED_FROM 2\n" in again.out
  assert not tmp_dirs(work)
  assert steps(work) == [2, 4, 6]
  assert logged_steps(work) == list(range(1, NUM_STEPS + 1))
  assert_same_checkpoint(reference(), work, NUM_STEPS)


def _truncate_largest_file(step_dir):
  """Cuts the largest file of a checkpoint (array data) to 1000 bytes."""
  files = [f for f in glob.glob(os.path.join(step_dir, "**"), recursive=True) if os.path.isfile(f)]
  with open(max(files, key=os.path.getsize), "r+b") as f:
    f.truncate(1000)


def _target(**overrides):
  cfg = small_config(num_steps=NUM_STEPS, **overrides)
  return components.init_state(cfg, components.build_components(cfg), mesh_lib.make_mesh())


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
def test_corrupted_latest_checkpoint_falls_back_to_the_one_before(tmp_path, reference, caplog):
  work = tmp_path / "w"
  shutil.copytree(reference(), work)
  _truncate_largest_file(work / "checkpoints" / "6")
  target = _target()
  ckpt = checkpointing.Checkpointer(str(work), 3)
  with caplog.at_level(logging.WARNING):
    state = ckpt.restore_latest(target)
  assert int(state.step) == 4
  warning = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
  assert len(warning) == 1 and warning[0].startswith("checkpoint 6 in "), warning
  assert "Error reading" in warning[0], warning   # TensorStore's error, naming the array
  # Set aside, so that training can write step 6 again.
  assert steps(work) == [2, 4] and os.path.isdir(work / "checkpoints" / "6.corrupt")
  expected = load(work, 4)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(
      {k: getattr(state, k) for k in sorted(expected)})):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  ckpt.save(6, state)   # training goes on and writes step 6 again
  ckpt.close()
  assert steps(work) == [2, 4, 6]
  shutil.rmtree(work / "checkpoints" / "6")

  # None restores: one error naming every step and its error.
  for step in (2, 4):
    _truncate_largest_file(work / "checkpoints" / str(step))
  with pytest.raises(checkpointing.CheckpointError,
                     match=r"no checkpoint in .* restores: step 4: .*Error reading.*; step 2: "):
    checkpointing.Checkpointer(str(work), 3).restore_latest(target)


def test_resume_with_shapes_that_do_not_fit_is_one_clear_error(tmp_path, reference, capsys):
  """model.kwargs.g_features 32 -> 16: every G entry is named with both shapes,
  before any array is read, and nothing is taken for corruption."""
  work = tmp_path / "w"
  shutil.copytree(reference(), work)
  config_json = (work / "config.json").read_text()
  with pytest.raises(checkpointing.CheckpointMismatchError) as e:
    checkpointing.Checkpointer(str(work), 3).restore_latest(_target(**{"model.kwargs.g_features": 16}))
  message = str(e.value)
  assert message.startswith(f"checkpoint 6 in {work / 'checkpoints'} does not fit this config")
  for entry in ("g_params/Dense_0/kernel: checkpoint (16, 1568) vs config (16, 784)",
                "g_ema_params/Dense_0/kernel: checkpoint (16, 1568) vs config (16, 784)",
                "g_opt_state/0/mu/Dense_0/kernel: checkpoint (16, 1568) vs config (16, 784)",
                "g_batch_stats/BatchNorm_0/mean: checkpoint (32,) vs config (16,)"):
    assert entry in message
  assert "d_params" not in message and "\n" not in message   # D is unchanged
  assert steps(work) == [2, 4, 6] and not glob.glob(str(work / "checkpoints" / "*.corrupt*"))

  # The command line: exit 1, one line, and the run's config.json untouched.
  capsys.readouterr()
  with tfds.testing.mock_data(num_examples=64):
    rc = cli.main(["train", "--config", str(work / "config.json"), "--workdir", str(work),
                   "--config.model.kwargs.g_features=16"])
  err = capsys.readouterr().err
  errors = [l for l in err.splitlines() if l.startswith("gan-jax:")]
  assert rc == 1 and len(errors) == 1 and "Traceback" not in err
  assert errors[0].startswith("gan-jax: error: checkpoint 6 in ")
  assert "g_params/Dense_0/kernel: checkpoint (16, 1568) vs config (16, 784)" in errors[0]
  assert (work / "config.json").read_text() == config_json
  assert steps(work) == [2, 4, 6]


@pytest.mark.slow
def test_a_signal_to_one_of_two_processes_stops_both_at_one_step(runs, tmp_path):
  """Two processes of one run (loopback): SIGTERM reaches only process 1.
  JAX's preemption service tells process 0 and both agree on a step: both
  save it collectively and exit 128 + SIGTERM, naming the same step."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  work = tmp_path / "w"
  procs = [runs(work, "--config.num_steps=10000", "--config.checkpoint_every=2",
                "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                "--process-id", str(i)) for i in (0, 1)]
  procs[0].wait_for("COMMITTING 2")   # both are training (process 0 commits)
  procs[1].proc.send_signal(signal.SIGTERM)
  stopped = []
  for run in procs:
    rc, err = run.finish(), run.stderr()
    assert rc == 128 + signal.SIGTERM, err[-3000:]
    assert "Traceback" not in err
    stopped += [int(n) for n in re.findall(r"^stopped by SIGTERM at step (\d+); checkpoint saved$",
                                           err, re.MULTILINE)]
  assert len(stopped) == 2 and stopped[0] == stopped[1], stopped
  assert 2 <= stopped[0] < 10000 and steps(work)[-1] == stopped[0] and not tmp_dirs(work)
