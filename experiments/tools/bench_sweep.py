r"""Benchmark of `sweep.seeds=K`: K GANs vmapped in one program against K
runs one after another (the same compiled single-member step K times).

  python experiments/tools/bench_sweep.py fc_gan dcgan28 --members 8

Per architecture: ms per training step of one member, of the K-member
sweep, and their ratio sweep / (K x single) — the sweep's share of the
sequential time (0.5 = twice as fast). Random uint8 data on device, fused
steps as `train` runs them; compile time reported apart (each sequential run
would pay it again).
"""
import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
from jax.sharding import PartitionSpec as P

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402  (same folder: SEEDS, config loading, timing)
from gan_jax import components, data, mesh as mesh_lib, step as step_lib, sweep  # noqa: E402


def time_steps(steps, state, indices, images, k, repeats):
  t = time.perf_counter()
  compiled = steps.lower(state, indices, images).compile()
  compile_s = time.perf_counter() - t
  box = [state]

  def call():
    box[0], metrics = compiled(box[0], indices, images)
    return metrics
  for _ in range(3):  # warm-up: the first calls after compiling also touch fresh memory
    call()
  return statistics.median(bench._timed(call, repeats)) / k, compile_s


def bench_sweep(cfg, name, members, k, repeats) -> dict:
  c, mesh, single_steps, (single, indices, images) = bench.train_steps_program(cfg, k)
  t1, c1 = time_steps(single_steps, single, indices, images, k, repeats)
  del single
  rows = cfg.batch_size * c.d_steps
  idx = np.random.default_rng(1).integers(0, len(images), (members, k, rows), dtype=np.int32)
  states = mesh_lib.replicate(sweep.stack([components.init_state(m, c, mesh)
                                        for m in _members(cfg, members)]), mesh)
  tk, ck = time_steps(step_lib.make_sweep_steps(c, mesh, cfg.optim, {}, cfg.data.pixel_range,
                                             on_device=True),
                      states, data.shard_batch(idx, mesh, P(None, None, mesh_lib.AXIS)),
                      images, k, repeats)
  return {"name": name, "members": members, "batch": cfg.batch_size, "dtype": cfg.model.dtype,
          "single_ms_per_step": 1e3 * t1, "sweep_ms_per_step": 1e3 * tk,
          "sequential_ms_per_step": 1e3 * members * t1,
          "sweep_share_of_sequential": tk / (members * t1),
          "single_images_per_sec": rows / t1, "sweep_images_per_sec": members * rows / tk,
          "single_compile_s": c1, "sweep_compile_s": ck}


def _members(cfg, members):
  with cfg.unlocked():
    cfg.sweep.seeds = members
  out = [m.config for m in sweep.members(cfg, "")]
  with cfg.unlocked():
    cfg.sweep.seeds = 0
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("targets", nargs="*", default=["fc_gan", "dcgan28"],
                      help=f"names in {sorted(bench.SEEDS)} or experiment files")
  parser.add_argument("--members", type=int, default=8)
  parser.add_argument("--batch", type=int, default=64, help="0 = each config's own")
  parser.add_argument("--steps-per-call", type=int, default=5)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"],
                      help="model.dtype of every member")
  parser.add_argument("--json", default="")
  args, extra = parser.parse_known_args(argv)
  overrides = bench.cli._split_overrides(extra, parser)
  rows = []
  for target in args.targets:
    cfg, name = bench.load_target(target, args.batch, args.dtype, overrides)
    row = bench_sweep(cfg, name, args.members, args.steps_per_call, args.repeats)
    rows.append(row)
    print(f"{name}: 1 member {row['single_ms_per_step']:.1f} ms/step, {args.members} members "
          f"{row['sweep_ms_per_step']:.1f} ms/step (sequential {row['sequential_ms_per_step']:.1f})"
          f" -> sweep = {row['sweep_share_of_sequential']:.2f} of sequential; "
          f"{row['sweep_images_per_sec']:.0f} vs {row['single_images_per_sec']:.0f} images/s; "
          f"compile {row['sweep_compile_s']:.1f} s vs {row['single_compile_s']:.1f} s", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  bench.reexec_keeping_freed_memory()   # the allocator bench.py measures with
  main()
