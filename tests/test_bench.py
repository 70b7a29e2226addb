"""experiments/tools/bench.py runs and reports; the PyTorch reference models
it compares against have exactly gan_jax's architectures."""
import glob
import json
import os
import sys

import jax
import numpy as np
import pytest

from gan_jax import components, layers, mesh as mesh_lib

TOOLS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "experiments", "tools")
sys.path.insert(0, TOOLS)
import bench  # noqa: E402


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
def test_bench_reports_every_column(tmp_path, capsys):
  out = tmp_path / "bench.json"
  bench.main(["dcgan28", "--batch", "8", "--repeats", "1", "--steps-per-call", "2",
              "--dtype", "float32", "bfloat16", "--json", str(out),
              "--config.model.kwargs.g_features=16", "--config.model.kwargs.d_features=8"])
  rows = json.load(open(out))["rows"]
  assert [(r["name"], r["dtype"]) for r in rows] == [("dcgan28", "float32"), ("dcgan28", "bfloat16")]
  for r in rows:
    for key in ("ms_per_step", "images_per_sec", "compile_s", "gflop_per_step",
                "achieved_gflops", "peak_memory_mb", "peak_fraction"):
      assert np.isfinite(r[key]) and r[key] > 0, (r["name"], key, r[key])
    assert r["steps_per_call"] == 2 and r["batch"] == 8
  table = capsys.readouterr().out
  assert "| dcgan28 | 8 | gan_jax bfloat16 |" in table and "measured matmul peak" in table


@pytest.mark.slow   # keeps the default suite near 10 minutes (CI runs both)
def test_bench_sweep_reports_the_sweep_against_sequential_runs(tmp_path):
  import bench_sweep
  out = tmp_path / "sweep.json"
  bench_sweep.main(["fc_gan", "--members", "2", "--batch", "8", "--repeats", "1",
                    "--steps-per-call", "2", "--json", str(out)])
  (row,) = json.load(open(out))
  assert (row["name"], row["members"], row["batch"]) == ("fc_gan", 2, 8)
  for key in ("single_ms_per_step", "sweep_ms_per_step", "single_compile_s", "sweep_compile_s"):
    assert np.isfinite(row[key]) and row[key] > 0, (key, row[key])
  np.testing.assert_allclose(row["sweep_share_of_sequential"],
                             row["sweep_ms_per_step"] / (2 * row["single_ms_per_step"]))


@pytest.mark.slow   # two lowerings of the full-width DCGAN-28 and a PyTorch step
@pytest.mark.skipif(not layers.cpu_only_host(), reason="'auto' takes the CPU paths only on a CPU-only host")
def test_step_flops_are_counted_before_xla_hands_convolutions_to_cudnn():
  """bench's FLOPs per step come from the program before optimisation, so the
  DCGAN-28 step lowered for CUDA (where the compiled count would leave out
  cuDNN's convolutions) counts the model's work. On a GPU the layers take
  XLA's own convolutions (forced here with model.lowering='native': on a
  CPU-only host 'auto' takes the CPU paths whatever the target): XLA counts
  only the taps that meet the input, PyTorch's FlopCounterMode (matmuls and
  convolutions) every tap, padding included, so the CUDA count is 0.8-1.0x
  PyTorch's, and the CPU lowering's phase grids count more."""
  torch = pytest.importorskip("torch")
  from torch.utils.flop_counter import FlopCounterMode
  import torch_reference
  counts = {}
  for lowering in ("auto", "native"):
    cfg = bench.seed_config("dcgan28", {"batch_size": "8", "model.lowering": lowering})
    _, _, steps, args = bench.train_steps_program(cfg, 1)
    counts[lowering] = bench.program_flops(steps.trace(*args).lower(lowering_platforms=("cuda",)))
  gan = torch_reference.TorchGAN("dcgan28", 8)
  with FlopCounterMode(display=False) as counter:
    gan.step(torch.rand(8, *gan.shape) * 2 - 1)
  assert 0.8 <= counts["native"] / counter.get_total_flops() <= 1.0, (counts, counter.get_total_flops())
  assert counts["auto"] > 1.1 * counts["native"], counts


class _NoCount:
  """A lowered program as JAX gives it for a PJRT plugin backend (CUDA):
  `cost_analysis()` is None."""
  def __init__(self, lowered):
    self.lowered = lowered

  def cost_analysis(self):
    return None

  def compiler_ir(self, dialect):
    return self.lowered.compiler_ir(dialect)


def test_flops_of_a_program_jax_cannot_count_come_from_the_cpu_client(monkeypatch, capsys):
  """Where JAX has no count (XLA:GPU), bench counts the same unoptimised
  program with XLA's HLO analysis on the CPU client; without a CPU backend
  the count is NaN and says why."""
  import jax.numpy as jnp
  lowered = jax.jit(lambda a, b: jnp.tanh(a @ b)).lower(jnp.ones((64, 128)), jnp.ones((128, 32)))
  assert bench.program_flops(_NoCount(lowered)) == bench.program_flops(lowered) >= 2 * 64 * 128 * 32
  def no_cpu(platform=None):
    raise RuntimeError(f"Unknown backend {platform}")
  monkeypatch.setattr(bench.jax, "devices", no_cpu)
  assert np.isnan(bench.program_flops(_NoCount(lowered)))
  assert "no FLOP count for this program" in capsys.readouterr().err


NARROW = {"fc_gan": {"model.kwargs.g_hidden": "(32,48)", "model.kwargs.d_hidden": "(24,)",
                    "model.latent_dim": "20"},
          "dcgan28": {"model.kwargs.g_features": "32", "model.kwargs.d_features": "8"},
          "dcgan64": {"model.kwargs.g_features": "64", "model.kwargs.d_features": "16",
                      "model.latent_dim": "12"},
          "lsgan32": {"model.kwargs.g_features": "32", "model.kwargs.d_features": "8"}}


@pytest.mark.parametrize("narrow", [False, True], ids=["seed", "narrowed"])
@pytest.mark.parametrize("arch", ["fc_gan", "dcgan28", "dcgan64", "lsgan32"])
def test_torch_reference_has_the_same_architecture(arch, narrow):
  """Same parameter count per tensor (sorted sizes) and output shapes, for
  the seed and for a config that changes its widths and latent size (what
  `bench --against` passes on)."""
  torch = pytest.importorskip("torch")
  import torch_reference
  cfg = bench.seed_config(arch, NARROW[arch] if narrow else None)
  c = components.build_components(cfg)
  state = components.init_state(cfg, c, mesh_lib.make_mesh())
  g, d = torch_reference.build(arch, cfg)
  for jax_params, module in ((state.g_params, g), (state.d_params, d)):
    assert sorted(x.size for x in jax.tree.leaves(jax_params)) == sorted(
        p.numel() for p in module.parameters())
  z = torch.zeros(2, c.latent_dim)
  x = g.eval()(z)
  h, w, ch = c.image_shape
  assert tuple(x.shape) == (2, ch, h, w) and tuple(d.eval()(x).shape) == (2,)


def test_torch_reference_refuses_settings_it_does_not_follow():
  """A model option, loss or d_steps that the hand-written reference does not
  implement is one error naming each (bench turns it into a 'failed' row),
  not a silently different PyTorch model."""
  pytest.importorskip("torch")
  import torch_reference
  cfg = bench.seed_config("dcgan64", {"model.kwargs.g_norm": "batch", "loss": "hinge",
                                      "model.kwargs.g_features": "64", "model.num_classes": "10",
                                      "optim.name": "rmsprop", "optim.g_lr": "1e-3"})
  with pytest.raises(ValueError) as e:
    torch_reference.build("dcgan64", cfg)
  msg = str(e.value).split(";")[1]
  for named in ("model.kwargs.g_norm='batch' (seed: 'none')", "model.num_classes=10 (seed: 0)",
                "loss='hinge' (seed: 'non_saturating')", "optim.name='rmsprop' (seed: 'adam')"):
    assert named in msg, (named, msg)
  assert "g_features" not in msg and "g_lr" not in msg


@pytest.mark.slow
def test_gpu_check_script_runs_every_stage_without_tensorflow(tmp_path):
  """gpu_check.sh in its quick mode on the CPU, where TensorFlow, TFDS,
  tensorboard and tensorboardX cannot be imported (as on the GPU machine):
  every stage runs (with GPU_CHECK_ALL's fp32 rows) and the page has its
  tables and targets."""
  import importlib.util
  import subprocess
  blocked = tmp_path / "blocked"
  for name in ("tensorflow", "tensorflow_datasets", "tensorboard", "tensorboardX"):
    (blocked / name).mkdir(parents=True)
    (blocked / name / "__init__.py").write_text(
        f"raise ModuleNotFoundError('{name} is not installed on the GPU machine')\n")
  out = tmp_path / "gpu_check.md"
  env = {**os.environ, "GPU_CHECK_QUICK": "1", "GPU_CHECK_ALL": "1", "PYTHONPATH": str(blocked),
         "PYTHON": sys.executable,
         "GPU_CHECK_AGAINST": "torch" if importlib.util.find_spec("torch") else ""}
  proc = subprocess.run(["bash", os.path.join(TOOLS, "gpu_check.sh"), str(out)], env=env,
                        cwd=tmp_path, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  page = out.read_text()
  assert page.startswith("# gan_jax GPU check, ") and "measured matmul peak" in page
  for line in ("| fc_gan | 8 | gan_jax float32 |", "| fc_gan | 8 | gan_jax bfloat16 |",
               "| fc_gan | 16 | gan_jax bfloat16 |", "## K-member sweep",
               "| fc_gan | 8 | bfloat16 | 2 |", "| target | measured | bound | met |",
               "2-member sweep time / 2 sequential runs"):
    assert line in page, (line, page)
  if env["GPU_CHECK_AGAINST"]:
    assert "| fc_gan | 8 | torch bf16 |" in page
  for stage in ("targets", "large", "sweep"):   # each stage's rows kept beside the page
    assert json.loads((tmp_path / f"gpu_check.{stage}.json").read_text()), stage


@pytest.mark.skipif(bool(glob.glob("/dev/nvidia[0-9]*")), reason="this host has a GPU")
def test_gpu_check_stops_at_once_without_a_gpu(tmp_path):
  """The full check on a host where JAX has no GPU ends before any stage
  with one line saying so, instead of timing the CPU."""
  import subprocess
  env = {k: v for k, v in os.environ.items() if not k.startswith("GPU_CHECK_")}
  env.pop("JAX_PLATFORMS", None)
  out = tmp_path / "gpu_check.md"
  proc = subprocess.run(["bash", os.path.join(TOOLS, "gpu_check.sh"), str(out)],
                        env={**env, "PYTHON": sys.executable}, cwd=tmp_path,
                        capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "gpu_check: JAX sees no GPU (default backend 'cpu', JAX_PLATFORMS='cuda,cpu')" in proc.stderr, \
      proc.stderr[-2000:]
  assert "GPU_CHECK_QUICK=1" in proc.stderr
  assert not list(tmp_path.glob("gpu_check*")), list(tmp_path.iterdir())


def failed_reference(arch, batch, dtype, compile):
  """The row bench.py writes for a PyTorch reference that fails to set up."""
  try:
    bench.prepare_torch(arch, batch, dtype, compile)
  except Exception as e:  # noqa: BLE001  (whatever the failure, it becomes the row)
    return bench.torch_error(arch, batch, dtype, compile, e)
  raise AssertionError(f"{arch} set up")


def test_gpu_report_marks_failed_references_and_unmeasured_targets(tmp_path):
  """A PyTorch reference that failed is a row saying why; a target without
  its rows, or without a FLOP count, is 'not measured' and not met, never
  left out."""
  import gpu_report
  row = {"name": "fc_gan", "batch": 64, "dtype": "float32", "ms_per_step": 2.0,
         "images_per_sec": 32000.0, "compile_s": 1.0, "gflop_per_step": 1.0,
         "achieved_gflops": 500.0, "peak_memory_mb": 10.0, "peak_fraction": 0.5}
  rows = [{**row, "impl": "gan_jax float32"},
          {**row, "impl": "torch fp32", "images_per_sec": 8000.0},
          failed_reference("no_such_arch", 64, "float32", compile=True),
          {**row, "name": "dcgan64", "batch": 1024, "dtype": "bfloat16",   # no FLOP count
           "impl": "gan_jax bfloat16", "gflop_per_step": float("nan"),
           "achieved_gflops": float("nan"), "peak_fraction": float("nan")}]
  path = tmp_path / "small.json"
  path.write_text(json.dumps({"device": "test", "matmul_peak_gflops":
                              {"float32": 1000.0, "bfloat16": 2000.0}, "rows": rows}))
  page = gpu_report.report([str(path)])
  assert "| fc_gan batch 64 float32: images/s vs eager PyTorch | 4.00 | >= 2.0 | yes |" in page
  assert "| no_such_arch | 64 | torch.compile fp32 | failed: " in page
  assert "| dcgan28 batch 64: images/s vs eager PyTorch | not measured | >= 2.0 | NO |" in page
  assert "| K-member sweep time / K sequential runs | not measured | <= 0.5 | NO |" in page
  assert ("| dcgan64 batch 1024 bfloat16: fraction of bf16 matmul peak | not measured | >= 0.4 | NO |"
          in page), page


def test_implementations_take_turns_and_a_failing_one_drops_out():
  """`take_turns` times every run once per round, so that a slower or faster
  spell of the shared machine falls on all of them; a run that raises is
  reported and not called again."""
  order = []

  def run(name, fail_on=None):
    def f():
      order.append(name)
      if len(order) == fail_on:
        raise MemoryError("out of memory")
      return 0.5
    return f
  times, errors = bench.take_turns({"a": run("a"), "b": run("b", fail_on=4), "c": run("c")}, 3)
  assert order == ["a", "b", "c", "b", "c", "a", "c", "a"]   # each round starts one later
  assert times == {"a": [0.5] * 3, "b": [0.5], "c": [0.5] * 3}
  assert list(errors) == ["b"] and isinstance(errors["b"], MemoryError)
  order.clear()   # a required run that fails ends the rounds
  times, errors = bench.take_turns({"a": run("a", fail_on=4), "b": run("b")}, 3,
                                   required=("a",))
  assert order == ["a", "b", "b", "a"] and list(errors) == ["a"]


@pytest.mark.slow
def test_bench_against_torch_reports_both_rows_at_the_configs_steps_per_call(tmp_path):
  pytest.importorskip("torch")
  out = tmp_path / "bench.json"
  bench.main(["fc_gan", "--batch", "8", "--repeats", "2", "--against", "torch",
              "--json", str(out)])
  jax_row, torch_row = json.load(open(out))["rows"]
  assert (jax_row["impl"], torch_row["impl"]) == ("gan_jax float32", "torch fp32")
  assert jax_row["steps_per_call"] == 1   # fc_gan_mnist's own count
  for r in (jax_row, torch_row):
    assert np.isfinite(r["ms_per_step"]) and r["ms_per_step"] > 0 and r["batch"] == 8
