r"""The GPU check's Markdown report (gpu_check.sh): bench.py's and
bench_sweep.py's JSON files -> one page with the device, the tables and the
README's GPU targets, each marked met or not.

  python experiments/tools/gpu_report.py gpu_check.targets.json gpu_check.large.json \
      --sweep gpu_check.sweep.json > gpu_check.md
"""
import argparse
import datetime
import json
import math
import os
import sys

sys.path.insert(0, __file__.rsplit("/", 1)[0])
import bench  # noqa: E402  (same folder: the table)

# (what, arch, batch, measure, bound): the targets of the GPU check.
TARGETS = (
    ("images/s vs eager PyTorch", "fc_gan", 64, "torch", 2.0),
    ("images/s vs eager PyTorch", "dcgan28", 64, "torch", 2.0),
    ("images/s vs torch.compile", "fc_gan", 64, "torch.compile", 1.0),
    ("images/s vs torch.compile", "dcgan28", 64, "torch.compile", 1.0),
    ("fraction of bf16 matmul peak", "dcgan64", "large", "peak", 0.40),
)


def _target_rows(rows, sweeps):
  large = max(r["batch"] for r in rows)
  out = []
  for what, arch, batch, measure, bound in TARGETS:
    batch = large if batch == "large" else batch
    ours = [r for r in rows if r["impl"].startswith("gan_jax") and r["name"] == arch
            and r["batch"] == batch and (measure != "peak" or r["dtype"] == "bfloat16")]
    if not ours:
      out.append((f"{arch} batch {batch}: {what}", None, bound, False))
    for r in ours:
      value = (r["peak_fraction"] if measure == "peak" else bench._ratio(r, rows, measure))
      value = value if value is not None and math.isfinite(value) else None   # no FLOP count
      out.append((f"{arch} batch {batch} {r['dtype']}: {what}", value, bound,
                  value is not None and value >= bound))
  if not sweeps:
    out.append(("K-member sweep time / K sequential runs", None, 0.5, False))
  for s in sweeps:
    share = s["sweep_share_of_sequential"]
    out.append((f"{s['name']} batch {s['batch']}: {s['members']}-member sweep time / "
                f"{s['members']} sequential runs", share, 0.5, share <= 0.5))
  return out


def report(bench_files, sweep_file=None) -> str:
  runs = [json.load(open(f)) for f in bench_files]
  rows = [r for run in runs for r in run["rows"]]
  sweeps = json.load(open(sweep_file)) if sweep_file else []
  peaks = [(os.path.basename(f), run["matmul_peak_gflops"]) for f, run in zip(bench_files, runs)]
  shown = lambda p: f"{p['float32']:,.0f} GFLOP/s fp32, {p['bfloat16']:,.0f} GFLOP/s bf16"
  if len({shown(p) for _, p in peaks}) == 1:
    peak = f"measured matmul peak {shown(peaks[0][1])}"
  else:   # each bench process measures its own; each row's "of peak" uses its process's
    peak = "measured matmul peak per run (each row's \"of peak\" uses its own): " + "; ".join(
        f"{name}: {shown(p)}" for name, p in peaks)
  lines = [f"# gan_jax GPU check, {datetime.date.today().isoformat()}", "",
           f"Device: {runs[0]['device']}; {peak} (operands bf16, fp32 accumulation).",
           "", "## Training steps", "", bench.markdown_table(rows), ""]
  if sweeps:
    lines += ["## K-member sweep against K sequential runs", "",
              "| arch | batch | dtype | members | 1 member ms/step | sweep ms/step |"
              " sweep / sequential | sweep compile s |", "|" + " --- |" * 8]
    lines += [f"| {s['name']} | {s['batch']} | {s.get('dtype', 'float32')} | {s['members']} | "
              f"{s['single_ms_per_step']:.2f} | "
              f"{s['sweep_ms_per_step']:.2f} | {s['sweep_share_of_sequential']:.2f} | "
              f"{s['sweep_compile_s']:.1f} |" for s in sweeps]
    lines.append("")
  lines += ["## Targets", "", "| target | measured | bound | met |", "| --- | --- | --- | --- |"]
  for what, value, bound, met in _target_rows(rows, sweeps):
    op = ">=" if "sweep" not in what else "<="
    shown = "not measured" if value is None else f"{value:.2f}"
    lines.append(f"| {what} | {shown} | {op} {bound} | {'yes' if met else 'NO'} |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("bench", nargs="+", help="bench.py --json files")
  parser.add_argument("--sweep", default=None, help="a bench_sweep.py --json file")
  args = parser.parse_args(argv)
  print(report(args.bench, args.sweep), end="")


if __name__ == "__main__":
  main()
