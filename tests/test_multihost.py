"""Multi-host data parallelism on one machine: 2 processes on loopback (2 CPU
devices each, joined by jax.distributed with gloo collectives) train exactly
what one process with 4 devices trains, and write the run's outputs once."""
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "scripts"))
from multihost_run import SCENARIOS, run_dir  # noqa: E402

# Both runs together: a guard against hangs, not a speed test. They took
# ~2.5 min on a 2-core machine shared with two training runs; slower or
# busier machines take several times that, and a deadline must not fail them.
TIMEOUT_S = 900


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(tmp_path, tag: str, devices: int, *process_args: str) -> subprocess.Popen:
  # Fewer LLVM passes: less compile time, the same flags for both runs. Not
  # --xla_backend_optimization_level=0: with it XLA:CPU computed one sweep
  # member of the 2-process program 6e-4 off (the transposed convolution's
  # slot-ordered interleave), while 1 process at level 0 and both at the
  # default level agree to 1e-6; users run the default level.
  flags = (f"--xla_force_host_platform_device_count={devices} "
           "--xla_llvm_disable_expensive_passes=true")
  env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2")
  env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(HERE), env.get("PYTHONPATH", "")])
  for var in [v for v in env if v.startswith("SLURM_")]:   # no cluster detection here
    del env[var]
  log = open(tmp_path / f"{tag}.log", "w")
  return subprocess.Popen(
      [sys.executable, os.path.join(HERE, "scripts", "multihost_run.py"),
       "--workdir", str(tmp_path / ("multi" if tag.startswith("p") else tag)),
       "--results", str(tmp_path / "results"), "--tag", tag, *process_args],
      env=env, stdout=log, stderr=subprocess.STDOUT)


def _wait_all(procs: dict, tmp_path, deadline: float) -> None:
  """Every process exits 0 before the deadline, or all are killed."""
  try:
    for tag, proc in procs.items():
      proc.wait(timeout=max(1.0, deadline - time.monotonic()))
  except subprocess.TimeoutExpired:
    pass
  finally:
    for proc in procs.values():
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  for tag, proc in procs.items():
    log = (tmp_path / f"{tag}.log").read_text()
    assert proc.returncode == 0 and "DONE" in log, f"{tag} exited {proc.returncode}:\n{log[-4000:]}"


@pytest.mark.slow
def test_two_processes_train_what_one_process_trains(tmp_path):
  deadline = time.monotonic() + TIMEOUT_S
  coordinator = f"127.0.0.1:{_free_port()}"
  procs = {f"p{i}": _start(tmp_path, f"p{i}", 2, "--coordinator", coordinator,
                           "--num-processes", "2", "--process-id", str(i)) for i in range(2)}
  # The one-process run alongside, with the same 4 devices in all.
  procs["single"] = _start(tmp_path, "single", 4)
  _wait_all(procs, tmp_path, deadline)
  assert "process 1 of 2: 2 of 4 devices" in (tmp_path / "p1.log").read_text()

  worst = {}
  for name in SCENARIOS:
    load = lambda tag: np.load(tmp_path / "results" / f"{name}_{tag}.npz")
    p0, p1, single = load("p0"), load("p1"), load("single")
    assert sorted(p0) == sorted(single) and len(p0) > 10
    worst[name] = 0.0
    for key in single:
      # Both processes hold the same replicated state...
      np.testing.assert_array_equal(p0[key], p1[key], err_msg=f"{name} {key}")
      # ...which is the one-process state (reductions over processes may sum
      # in another order).
      np.testing.assert_allclose(p0[key], single[key], rtol=1e-5, atol=1e-5,
                                 err_msg=f"{name} {key}")
      worst[name] = max(worst[name], float(np.max(np.abs(p0[key] - single[key]), initial=0.0)))

    # Outputs once: one metrics row per logged step, one TensorBoard file,
    # and the same files as the one-process run.
    multi, one = (Path(run_dir(str(tmp_path / tag / name), SCENARIOS[name]))
                  for tag in ("multi", "single"))
    rows = [json.loads(l) for l in open(multi / "metrics.jsonl")]
    rows1 = [json.loads(l) for l in open(one / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [r["step"] for r in rows1]
    assert len({r["step"] for r in rows}) == len(rows)
    for a, b in zip(rows, rows1):
      np.testing.assert_allclose(a["d_loss"], b["d_loss"], rtol=1e-5, atol=1e-6)
    assert len(os.listdir(multi / "tensorboard")) == 1
    for sub in ("samples", "generator", "checkpoints"):
      assert sorted(os.listdir(multi / sub)) == sorted(os.listdir(one / sub)), sub
    for f in ("config.json", "losses.png"):
      assert os.path.isfile(multi / f)
  print(f"max |2 processes - 1 process| over all parameters: {worst}")


SLURM_2x8 = {"SLURM_JOB_ID": "123", "SLURM_STEP_NODELIST": "gpu[01-02]", "SLURM_NTASKS": "2",
             "SLURM_STEP_NUM_TASKS": "2", "SLURM_STEP_NUM_NODES": "2", "SLURM_PROCID": "1",
             "SLURM_LOCALID": "0"}


def _calls(monkeypatch, env: dict, cpu_only: bool, *args):
  """What `distributed.initialize(*args)` asks of jax.distributed in `env`."""
  import jax
  from gan_jax import distributed
  for var in [v for v in os.environ if v.startswith("SLURM_") or v == "CUDA_VISIBLE_DEVICES"]:
    monkeypatch.delenv(var)
  for var, value in env.items():
    monkeypatch.setenv(var, value)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda *a, **kw: calls.append((a, kw)))
  monkeypatch.setattr(distributed, "_cpu_only", lambda: cpu_only)
  joined = distributed.initialize(*args)
  assert joined == bool(calls)
  return calls


def test_initialize_single_explicit_and_slurm(monkeypatch):
  # One process: nothing, also in a one-task SLURM step.
  assert _calls(monkeypatch, {}, True) == []
  assert _calls(monkeypatch, dict(SLURM_2x8, SLURM_NTASKS="1", SLURM_STEP_NUM_TASKS="1"),
                False) == []
  # Explicit values go to jax as they are.
  assert _calls(monkeypatch, {}, True, "10.0.0.1:1234", 2, 1) == [
      (("10.0.0.1:1234", 2, 1), {})]
  # SLURM, one task per node: detected, and every GPU of the node is this
  # process's (not only GPU SLURM_LOCALID).
  assert _calls(monkeypatch, dict(SLURM_2x8, CUDA_VISIBLE_DEVICES="4,5,6,7"), False) == [
      ((None, None, None), {"local_device_ids": [0, 1, 2, 3]})]
  assert _calls(monkeypatch, dict(SLURM_2x8, SLURM_GPUS_ON_NODE="8"), False) == [
      ((None, None, None), {"local_device_ids": list(range(8))})]
  # One task per GPU: jax's own SLURM default.
  assert _calls(monkeypatch, dict(SLURM_2x8, SLURM_NTASKS="16", SLURM_STEP_NUM_TASKS="16",
                                  CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7"), False) == [
      ((None, None, None), {"local_device_ids": None})]
