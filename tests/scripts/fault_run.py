"""Run by test_faults.py in a subprocess: `gan-jax train` (gan_jax.cli.main)
of conftest's small config under tfds.testing.mock_data into WORKDIR, with
hooks that let a test time a fault exactly, announced on stdout:

  python fault_run.py WORKDIR [--pause-at K] [--slow-commit STEP:SECONDS] [--config.KEY=VALUE ...]

  RESUMED_FROM n   the step training starts from (0: a fresh run)
  AT_STEP k        (--pause-at k) step k is logged; training waits here until
                   a signal arrives, so the signal lands at a known step
  COMMITTING s     (--slow-commit s:t) checkpoint s is written into Orbax's
                   temporary directory and about to be committed (renamed);
                   it sleeps t seconds there first, so a kill lands mid-save

Exits with gan-jax's exit code.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: conftest
# tensorboardX imports torch when it can (4-5 s of CPU per run); nothing here uses it.
sys.modules.setdefault("torch", None)
import pytest  # noqa: E402  (MonkeyPatch only)
import tensorflow_datasets as tfds  # noqa: E402
from orbax.checkpoint._src.path import atomicity  # noqa: E402

from conftest import hide_local_idx_files, small_config  # noqa: E402
from gan_jax import checkpointing, cli, outputs  # noqa: E402

NUM_STEPS = 6   # with checkpoint_every=2: checkpoints 2, 4, 6


def say(line: str) -> None:
  print(line, flush=True)


def main(argv: list[str]) -> int:
  workdir, rest = argv[0], argv[1:]
  pause_at, slow_step, slow_seconds, overrides = None, None, 0.0, []
  while rest:
    arg = rest.pop(0)
    if arg == "--pause-at":
      pause_at = int(rest.pop(0))
    elif arg == "--slow-commit":
      step, seconds = rest.pop(0).split(":")
      slow_step, slow_seconds = int(step), float(seconds)
    else:
      overrides.append(arg)

  signalled = []
  handle = checkpointing.StopOnSignal._handle
  def noting_handle(self, signum, frame):
    signalled.append(signum)
    handle(self, signum, frame)
  checkpointing.StopOnSignal._handle = noting_handle

  restore_latest = checkpointing.Checkpointer.restore_latest
  def announcing_restore_latest(self, target):
    state = restore_latest(self, target)
    if self.directory.endswith(os.sep + "checkpoints"):
      say(f"RESUMED_FROM {int(state.step)}")
    return state
  checkpointing.Checkpointer.restore_latest = announcing_restore_latest

  write = outputs.MetricWriter.write
  def pausing_write(self, step, scalars):
    write(self, step, scalars)
    if step == pause_at and "d_loss" in scalars:
      say(f"AT_STEP {step}")
      deadline = time.monotonic() + 900   # the test's own timeouts are shorter
      while not signalled and time.monotonic() < deadline:
        time.sleep(0.01)
  outputs.MetricWriter.write = pausing_write

  # Orbax's commit of a step: arrays written in `<step>.orbax-checkpoint-tmp-*`,
  # then this renames it to `<step>`.
  finalize = atomicity.AtomicRenameTemporaryPath.finalize
  async def slow_finalize(self, *args, **kwargs):
    final = self.get_final()
    if final.name.isdigit():
      say(f"COMMITTING {final.name}")
      if int(final.name) == slow_step:
        time.sleep(slow_seconds)   # blocks only Orbax's commit thread
    return await finalize(self, *args, **kwargs)
  atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize

  monkeypatch = pytest.MonkeyPatch()
  hide_local_idx_files(monkeypatch)
  cfg = small_config(num_steps=NUM_STEPS)
  with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
    f.write(cfg.to_json_best_effort())
  try:
    with tfds.testing.mock_data(num_examples=64):
      return cli.main(["train", "--config", f.name, "--workdir", workdir, *overrides])
  finally:
    os.remove(f.name)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
