"""Run by test_multihost.py, once per process: 3 training steps of each
scenario with `train.train_and_evaluate` under tfds.testing.mock_data, as one
process of a multi-process run (--coordinator, --num-processes,
--process-id) or alone. Writes each scenario's final state, as this process
sees it, to RESULTS/<scenario>_<tag>.npz, and prints `DONE`."""
import argparse
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # tests/: conftest
from conftest import hide_local_idx_files, small_config  # noqa: E402
from gan_jax import distributed  # noqa: E402

# Both kinds of input and both data layouts: the split on device, indices
# sent, 3 steps fused into one call (stacked (3, rows) chunks); and the
# tf.data pipeline, 2 critic batches per step (device-major rows), events
# after every step (single-step calls), across an epoch boundary. (Not a
# weight-clipped WGAN: its tiny G gradients sit near Adam's epsilon, where the
# other summation order of the cross-process mean moves a few weights by 2e-5.)
SCENARIOS = {
    "on_device_fused": dict(num_steps=3, log_every=3, sample_every=3, checkpoint_every=3,
                            steps_per_call=3, **{"data.on_device": True}),
    "pipeline_critic2": dict(num_steps=3, log_every=1, sample_every=2, checkpoint_every=2,
                             steps_per_call=1, d_steps=2, **{"data.on_device": False}),
    # A sweep of 2 seeds: the member axis on state, batches and metrics.
    # Adam's eps at 1e-3 as in test_sweep.py: with 1e-8, a last-bit
    # difference in a near-zero gradient moves a weight by ~lr.
    "sweep_seeds2": dict(num_steps=3, log_every=3, sample_every=3, checkpoint_every=3,
                         steps_per_call=3, **{"data.on_device": True, "sweep.seeds": 2,
                                              "optim.eps": 1e-3}),
}


def run_dir(workdir: str, overrides: dict) -> str:
  """Where a scenario's outputs are: a sweep's first member's directory."""
  return os.path.join(workdir, "members", "seed_0") if overrides.get("sweep.seeds") else workdir


def check_rows(cfg):
  """This process's host batches are its devices' contiguous slice of the
  device-major global batches, images and indices alike."""
  import itertools
  import jax
  import numpy as np
  from gan_jax import data, mesh as mesh_lib, models
  from gan_jax.data import pipeline
  mesh = mesh_lib.make_mesh()
  source = pipeline.TrainData(cfg.data, cfg.batch_size, cfg.seed, mesh,
                              models.image_shape(cfg.model), batches_per_step=cfg.d_steps)
  rows = source.step_batch // jax.process_count()
  mine = slice(jax.process_index() * rows, (jax.process_index() + 1) * rows)
  np.testing.assert_array_equal(data.process_rows(mesh, source.step_batch),
                                np.arange(source.step_batch)[mine])
  n = source.steps_per_epoch + 1   # into the second epoch
  for indices in (False, True):
    full = itertools.chain.from_iterable(
        source.epoch_indices(e) if indices else source.epoch(e) for e in range(2))
    local = source.host_batches(indices=indices)
    for batch, got in zip(itertools.islice(full, n), itertools.islice(local, n)):
      want = data.device_major(np.asarray(batch), cfg.d_steps, mesh.devices.size)[mine]
      assert got.shape[0] == rows, got.shape
      np.testing.assert_array_equal(got, want)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--coordinator")
  parser.add_argument("--num-processes", type=int)
  parser.add_argument("--process-id", type=int)
  parser.add_argument("--workdir", required=True, help="one subfolder per scenario")
  parser.add_argument("--results", required=True)
  parser.add_argument("--tag", required=True)
  args = parser.parse_args()
  distributed.initialize(args.coordinator, args.num_processes, args.process_id)

  import jax
  import numpy as np
  import pytest
  import tensorflow_datasets as tfds
  from gan_jax import checkpointing, sweep, train

  print(f"process {jax.process_index()} of {jax.process_count()}: "
        f"{jax.local_device_count()} of {jax.device_count()} devices", flush=True)
  for name, overrides in SCENARIOS.items():
    cfg = small_config(**overrides)
    workdir = os.path.join(args.workdir, name)
    with pytest.MonkeyPatch.context() as mp, tfds.testing.mock_data(num_examples=64):
      hide_local_idx_files(mp)
      check_rows(cfg)
      state = train.train_and_evaluate(cfg, workdir)
    # The step-3 checkpoint, restored collectively, is the returned state.
    first = sweep.member(state, 0) if cfg.sweep.seeds else state
    restored = checkpointing.Checkpointer(run_dir(workdir, overrides), 1).restore(first)
    final = jax.device_get(state)   # replicated: this process's copy
    for a, b in zip(jax.tree.leaves(jax.device_get(first)),
                    jax.tree.leaves(jax.device_get(restored))):
      np.testing.assert_array_equal(a, b)
    leaves = {f"leaf_{i:03d}": np.asarray(x) for i, x in enumerate(jax.tree.leaves(final))}
    os.makedirs(args.results, exist_ok=True)
    np.savez(os.path.join(args.results, f"{name}_{args.tag}.npz"), **leaves)
  usage = resource.getrusage(resource.RUSAGE_SELF)
  print(f"DONE cpu_s={usage.ru_utime + usage.ru_stime:.1f}", flush=True)


if __name__ == "__main__":
  main()
