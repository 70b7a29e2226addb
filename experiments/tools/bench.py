r"""Training-speed benchmark: the seed architectures at batch 64 on random data.

  python experiments/tools/bench.py                    # the four seed GANs
  python experiments/tools/bench.py --against torch    # + PyTorch, same run
  python experiments/tools/bench.py dcgan28 --dtype bfloat16 --steps-per-call 10
  python experiments/tools/bench.py experiments/wgan_gp_fashion_mnist.py --batch 0
  python experiments/tools/bench.py dcgan64 --batch 64 1024 --dtype bfloat16 \
      --against torch torch_compile --markdown table.md     # on a GPU: see gpu_check.sh

Arguments name seed architectures (fc_gan, dcgan28, dcgan64, lsgan32: the
experiments fc_gan_mnist, dcgan_fashion_mnist, dcgan_color64, lsgan_cifar10)
or experiment config files. For each, gan_jax's training step runs the way
`train` runs it with `data.on_device`: the config's `steps_per_call` steps
(or `--steps-per-call`) fused in one compiled call, batches gathered on
device from a uint8 array of random images. Reported: steady-state ms/step
and images/s (median of --repeats timings after one warm-up call; with
`--against`, gan_jax and the references take turns in every round, so that a
change in the shared machine's speed falls on all of them alike), compile
time, XLA's FLOPs per step (of the program before optimisation: on a GPU the
compiled count misses cuDNN's and cuBLAS's calls), achieved GFLOP/s and its
fraction of this device's measured matmul peak (fp32, and bf16 with fp32
accumulation), and XLA's peak buffer memory. `--input N` also times N steps
of the tf.data input pipeline alone (Fashion-MNIST, for the 28x28x1 models),
the host work that `data.on_device` removes. `--against torch` runs
experiments/tools/torch_reference.py's PyTorch models (eager,
torch.optim.Adam, BCEWithLogitsLoss) in the same run, on the same device
(CPU, or CUDA when JAX runs on a GPU), and `torch_compile` the same models
under `torch.compile`; for `--dtype bfloat16` they run under bfloat16
autocast. "vs torch" is gan_jax's images/s over eager PyTorch's in the same
precision, "vs compile" over torch.compile's. `--config.KEY=VALUE` overrides
every config; the PyTorch references follow the widths, latent size and
Adam settings it sets, and any other change (another loss, penalty, optimiser,
d_steps, ...: torch_reference.FIXED) makes their rows "failed", naming it.
"""
import argparse
import json
import os
import statistics
import sys
import time

# glibc's malloc told to keep the memory it frees (the README's "Speed
# options"): both gan_jax and PyTorch then run without re-faulting their
# freed temporaries every step, whichever of them ran first.
KEEP_FREED_MEMORY = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_MAX_": "0",
                     "MALLOC_TRIM_THRESHOLD_": "68719476736"}


def reexec_keeping_freed_memory():
  """This command again with KEEP_FREED_MEMORY set (Linux; a variable set
  already is kept; GAN_JAX_SYSTEM_MALLOC=1 measures with glibc's defaults)."""
  missing = {k: v for k, v in KEEP_FREED_MEMORY.items() if k not in os.environ}
  if sys.platform == "linux" and missing and os.environ.get("GAN_JAX_SYSTEM_MALLOC") != "1":
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], {**os.environ, **missing})


if __name__ == "__main__":   # before the imports below, which it would repeat
  reexec_keeping_freed_memory()

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from gan_jax import cli, components, configure, data, mesh as mesh_lib, step as step_lib

HERE = os.path.dirname(os.path.abspath(__file__))
SEEDS = {"fc_gan": "fc_gan_mnist", "dcgan28": "dcgan_fashion_mnist",
         "dcgan64": "dcgan_color64", "lsgan32": "lsgan_cifar10"}
# Each seed is the architecture as published, which its experiment may
# resize: dcgan28 is TensorFlow's DCGAN-tutorial G (256 wide), the default
# experiment trains it at half that width.
SEED_OVERRIDES = {"dcgan28": {"model.kwargs.g_features": "256"}}


def seed_config(name, overrides=None):
  """The completed config of seed architecture `name` ({'a.b': 'text'}
  `overrides` applied after the seed's own)."""
  return configure.load(os.path.join(HERE, "..", SEEDS[name] + ".py"),
                        {**SEED_OVERRIDES.get(name, {}), **(overrides or {})})


def load_target(target, batch=0, dtype="float32", overrides=None):
  """(config, name) of a SEEDS name or an experiment file, at `batch` (0 =
  the config's own) and model dtype."""
  overrides = {**(overrides or {}), "model.dtype": dtype}
  cfg = (seed_config(target, overrides) if target in SEEDS
         else configure.load(target, overrides))
  if batch:
    cfg.batch_size = batch
  return cfg, target


def matmul_peak(dtype, n=None, repeats=5) -> float:
  """Best FLOP/s of an n^3 matmul on the default device (bf16 operands
  accumulate in fp32, the form gan_jax's bfloat16 mode uses)."""
  n = n or (2048 if jax.default_backend() == "cpu" else 8192)
  a = jnp.ones((n, n), dtype)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  f(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def _timed(fn, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return times


def take_turns(runs: dict, repeats: int, required=()) -> tuple[dict, dict]:
  """({key: per-step seconds}, {key: exception}) of each `run` over `repeats`
  rounds in which they take turns, starting one later each round: a change
  in the shared machine's speed falls on every implementation alike. A run
  that raises drops out; one of the `required` ends the rounds."""
  times, errors, keys = {key: [] for key in runs}, {}, list(runs)
  for r in range(repeats):
    for key in keys[r % len(keys):] + keys[:r % len(keys)]:
      if key not in errors:
        try:
          times[key].append(runs[key]())
        except Exception as e:  # noqa: BLE001  (e.g. an optional reference out of memory)
          errors[key] = e
          if key in required:
            return times, errors
  return times, errors


def train_steps_program(cfg, k) -> tuple:
  """(c, mesh, steps, (state, indices, images)): `train`'s jitted call of `k`
  fused on-device steps and its arguments, random uint8 images."""
  c = components.build_components(cfg)
  mesh = mesh_lib.make_mesh()
  state = components.init_state(cfg, c, mesh)
  rng = np.random.default_rng(0)
  images = mesh_lib.replicate(rng.integers(0, 256, (4096, *c.image_shape), dtype=np.uint8), mesh)
  indices = data.shard_batch(rng.integers(0, 4096, (k, cfg.batch_size * c.d_steps),
                                          dtype=np.int32), mesh, P(None, mesh_lib.AXIS))
  steps = step_lib.make_train_steps(c, mesh, cfg.data.pixel_range, on_device=True)
  return c, mesh, steps, (state, indices, images)


def program_flops(lowered) -> float:
  """FLOPs of a lowered program, counted before XLA optimises it: the
  compiled program's count leaves out the convolutions and matmuls that
  XLA:GPU hands to cuDNN and cuBLAS as custom calls. JAX has no such count
  for a PJRT plugin backend (CUDA): there XLA's HLO cost analysis of the same
  unoptimised program runs on the CPU client (JAX_PLATFORMS must include
  cpu). NaN, with a warning, where neither is available."""
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  if cost is None:
    cost = _hlo_cost(lowered.compiler_ir("hlo").as_hlo_module())
  if cost is None or "flops" not in cost:
    print("bench: no FLOP count for this program (a GPU without a CPU backend? "
          "set JAX_PLATFORMS=cuda,cpu)", file=sys.stderr)
    return float("nan")
  return float(cost["flops"])


def _hlo_cost(module) -> dict | None:
  from jax._src.lib import xla_client  # pylint: disable=import-outside-toplevel
  try:
    client = jax.devices("cpu")[0].client
  except RuntimeError:   # no CPU backend in this process
    return None
  return xla_client._xla.hlo_module_cost_analysis(client, module)  # pylint: disable=protected-access


def prepare_jax(cfg, name, k, input_steps=0) -> tuple[dict, object]:
  """(row without its timing, run): `run()` runs one call of `k` fused steps
  (warmed up) and returns the seconds per step."""
  c, mesh, steps, (state, indices, images) = train_steps_program(cfg, k)
  rows = cfg.batch_size * c.d_steps
  t = time.perf_counter()
  lowered = steps.lower(state, indices, images)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t
  flops = program_flops(lowered) / k
  mem = compiled.memory_analysis()
  peak = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
          - mem.alias_size_in_bytes) if mem is not None else float("nan")
  box = [state]

  def run():
    t = time.perf_counter()
    box[0], metrics = compiled(box[0], indices, images)
    jax.block_until_ready(metrics)
    return (time.perf_counter() - t) / k
  run()  # warm-up
  row = {"name": name, "dtype": cfg.model.dtype, "batch": cfg.batch_size, "d_steps": c.d_steps,
         "steps_per_call": k, "rows_per_step": rows, "compile_s": compile_s,
         "gflop_per_step": flops / 1e9, "peak_memory_mb": peak / 2 ** 20}
  if input_steps:
    row["input_ms_per_step"] = input_ms_per_step(cfg, c, mesh, input_steps)
  return row, run


def jax_timing(row, seconds) -> dict:
  """`row` of `prepare_jax` with the median of its per-step `seconds`."""
  dt = statistics.median(seconds)
  return {**row, "ms_per_step": 1e3 * dt, "images_per_sec": row["rows_per_step"] / dt,
          "achieved_gflops": row["gflop_per_step"] / dt}


def input_ms_per_step(cfg, c, mesh, n) -> float | None:
  """Host time per step of the TFDS pipeline (read, shuffle, normalise,
  batch, shard to device) alone, on Fashion-MNIST (28x28x1 models only)."""
  if c.image_shape != (28, 28, 1):
    return None
  data_config = cfg.data.copy_and_resolve_references()
  data_config.update(source="tfds", name="fashion_mnist", split="train")
  from gan_jax.data import pipeline
  try:   # DataError also where TensorFlow/TFDS are not installed
    source = pipeline.TrainData(data_config, cfg.batch_size, cfg.seed, mesh, c.image_shape,
                                batches_per_step=c.d_steps)
  except data.DataError:
    return None
  batches = source.batches()
  jax.block_until_ready(next(batches))
  t = time.perf_counter()
  for _ in range(n):
    jax.block_until_ready(next(batches))
  return 1e3 * (time.perf_counter() - t) / n


TORCH_DTYPES = {"float32": "fp32", "bfloat16": "bf16"}


def _torch_impl(dtype, compile):
  return f"{'torch.compile' if compile else 'torch'} {TORCH_DTYPES[dtype]}"


def prepare_torch(arch, batch, dtype="float32", compile=False, cfg=None) -> tuple[dict, object]:
  """(row without its timing, run) of PyTorch's step of `arch` on the device
  JAX uses (CUDA or CPU), with `cfg`'s widths and optimiser (default: the
  seed's); `run()` times 3 steps (see torch_reference)."""
  device = "cuda" if jax.default_backend() == "gpu" else "cpu"
  info, run = _torch_reference().prepare(arch, batch=batch, warmup=3, steps=3, device=device,
                                      compile=compile, bf16=dtype == "bfloat16", cfg=cfg)
  info.update(name=arch, dtype=dtype, impl=_torch_impl(dtype, compile), batch=batch)
  return info, run


def torch_timing(info, seconds) -> dict:
  return _torch_reference().summary(info, seconds)


def _torch_reference():
  """experiments/tools/torch_reference.py (optional: needs torch)."""
  if HERE not in sys.path:
    sys.path.insert(0, HERE)
  import torch_reference  # noqa: E402
  return torch_reference


def torch_error(arch, batch, dtype, compile, e) -> dict:
  """The row of a reference that failed (a missing compiler for
  torch.compile, memory at a large batch): the other rows still count."""
  return {"name": arch, "dtype": dtype, "impl": _torch_impl(dtype, compile),
          "batch": batch, "ms_per_step": None, "images_per_sec": None,
          "error": f"{type(e).__name__}: {e}"[:300]}


def _ratio(row, rows, impl):
  ref = [r for r in rows if r["impl"].split()[0] == impl and r["name"] == row["name"]
         and r["dtype"] == row["dtype"] and r["batch"] == row["batch"]]
  if not ref or not ref[0]["images_per_sec"] or not row["images_per_sec"]:
    return None
  return row["images_per_sec"] / ref[0]["images_per_sec"]


def markdown_table(rows) -> str:
  """One line per (arch, batch, implementation); ratios against eager
  PyTorch and torch.compile in the same precision, from the same run."""
  lines = ["| arch | batch | impl | ms/step | images/s | vs torch | vs compile | compile s | "
           "GFLOP/step | GFLOP/s | of peak | peak MB | input ms/step |", "|" + " --- |" * 13]
  for r in rows:
    ours = r["impl"].startswith("gan_jax")
    frac = format(r["peak_fraction"], ".0%") if ours else "-"
    if r.get("error"):
      lines.append(f"| {r['name']} | {r['batch']} | {r['impl']} | failed: "
                   f"{r['error'].splitlines()[0][:120]} |" + " - |" * 9)
      continue
    lines.append(
        f"| {r['name']} | {r['batch']} | {r['impl']} | {_fmt(r['ms_per_step'], 2)} | "
        f"{_fmt(r['images_per_sec'], 0)} | {_fmt(_ratio(r, rows, 'torch'), 2)} | "
        f"{_fmt(_ratio(r, rows, 'torch.compile'), 2)} | {_fmt(r.get('compile_s'))} | "
        f"{_fmt(r.get('gflop_per_step'), 2)} | {_fmt(r.get('achieved_gflops'), 0)} | {frac} | "
        f"{_fmt(r.get('peak_memory_mb'), 0)} | {_fmt(r.get('input_ms_per_step'))} |")
  return "\n".join(lines)


def _fmt(v, digits=1):
  return "-" if v is None else f"{v:,.{digits}f}"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("targets", nargs="*", default=list(SEEDS),
                      help="seed architecture names or experiment config files")
  parser.add_argument("--batch", type=int, nargs="+", default=[64],
                      help="batch sizes to run; 0 = each config's own")
  parser.add_argument("--dtype", nargs="+", default=["float32"],
                      choices=["float32", "bfloat16"], help="model.dtype values to run")
  parser.add_argument("--steps-per-call", type=int, default=0,
                      help="steps fused per call; 0 = the config's own steps_per_call")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--against", nargs="+", choices=["torch", "torch_compile"], default=[],
                      help="PyTorch references run in the same process (seed names only)")
  parser.add_argument("--input", type=int, default=0, metavar="STEPS",
                      help="also time STEPS steps of the TFDS input pipeline")
  parser.add_argument("--json", default="", help="write the rows to this file")
  parser.add_argument("--markdown", default="", help="write the table to this file")
  args, extra = parser.parse_known_args(argv)
  overrides = cli._split_overrides(extra, parser)

  fp32, bf16 = matmul_peak(jnp.float32), matmul_peak(jnp.bfloat16)
  malloc = " ".join(f"{k}={os.environ[k]}" for k in KEEP_FREED_MEMORY if k in os.environ)
  header = (f"device: {jax.devices()[0].device_kind} x{jax.device_count()} "
            f"({jax.default_backend()}); measured matmul peak {fp32 / 1e9:,.0f} GFLOP/s fp32, "
            f"{bf16 / 1e9:,.0f} GFLOP/s bf16; malloc: {malloc or 'glibc defaults'}")
  print(header, flush=True)
  rows = []
  for target in args.targets:
    for batch in args.batch:
      for dtype in args.dtype:
        cfg, _ = load_target(target, batch, dtype, overrides)
        found = bench_target(cfg, target, args, dtype)
        for row in found:
          if row["impl"].startswith("gan_jax"):
            row["peak_fraction"] = row["achieved_gflops"] * 1e9 / (
                bf16 if dtype == "bfloat16" else fp32)
          rows.append(row)
          print(json.dumps(row), flush=True)
        save(args.json, rows, fp32, bf16)
  table = markdown_table(rows)
  print("\n" + table)
  if args.markdown:
    with open(args.markdown, "w") as f:
      f.write(header + "\n\n" + table + "\n")


def bench_target(cfg, target, args, dtype) -> list[dict]:
  """gan_jax's row and, for a seed, each `--against` reference's, timed in
  turns (`take_turns`) after all of them compiled and warmed up."""
  k = args.steps_per_call or cfg.steps_per_call
  row, run = prepare_jax(cfg, target, k, args.input)
  runs, refs = {"gan_jax": run}, {}
  for ref in args.against if target in SEEDS else ():
    compile = ref == "torch_compile"
    try:
      refs[ref], runs[ref] = prepare_torch(target, cfg.batch_size, dtype, compile, cfg)
    except Exception as e:  # noqa: BLE001  (any failure of the optional reference)
      refs[ref] = torch_error(target, cfg.batch_size, dtype, compile, e)
  times, errors = take_turns(runs, args.repeats, required=("gan_jax",))
  if "gan_jax" in errors:
    raise errors["gan_jax"]
  found = [{**jax_timing(row, times["gan_jax"]), "impl": f"gan_jax {dtype}"}]
  for ref, info in refs.items():
    if ref in errors:
      info = torch_error(target, cfg.batch_size, dtype, ref == "torch_compile", errors[ref])
    elif ref in runs:
      info = torch_timing(info, times[ref])
    found.append(info)
  return found


def save(path, rows, fp32, bf16) -> None:
  """The rows so far (rewritten after each: a later failure keeps them)."""
  if path:
    with open(path, "w") as f:
      json.dump({"device": jax.devices()[0].device_kind, "matmul_peak_gflops":
                 {"float32": fp32 / 1e9, "bfloat16": bf16 / 1e9}, "rows": rows}, f, indent=1)


if __name__ == "__main__":
  sys.exit(main())
