"""Command line: `gan-jax train|sample ...` (also `python -m gan_jax`).

  gan-jax train  --config experiments/dcgan_fashion_mnist.py --workdir DIR [--config.KEY=VALUE ...]
                 [--coordinator HOST:PORT --num-processes N --process-id I]   (multi-host; SLURM: detected)
  gan-jax sample --workdir DIR [--num 64] [--step N] [--label K | --labels all]
  gan-jax eval   --workdir DIR [--step N] [--out FILE] [--config.eval.KEY=VALUE ...]
  gan-jax eval   --config experiments/dcgan_fashion_mnist.py --split train   (a real split vs eval.split)
  gan-jax prepare --config experiments/dcgan_fashion_mnist.py   (data only)
  gan-jax -v ...   (INFO logs of gan_jax, Orbax and TFDS)

SIGTERM or Ctrl-C (SIGINT) during `train` checkpoints the step reached and
exits with 128 + the signal number (143 / 130), as a process killed by it
would, after "stopped by SIGTERM at step N; checkpoint saved"; the same
command resumes. A finished run exits 0, a user error 1 (2: bad arguments).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from gan_jax.errors import UserError


def _split_overrides(extra: list[str], parser: argparse.ArgumentParser) -> dict[str, str]:
  """`--config.a.b=v` or `--config.a.b v` -> {'a.b': 'v'}; anything else is an error."""
  overrides, i = {}, 0
  while i < len(extra):
    arg = extra[i]
    if not arg.startswith("--config."):
      parser.error(f"unrecognised argument: {arg}")
    key, eq, value = arg[len("--config."):].partition("=")
    if not eq:
      if i + 1 >= len(extra):
        parser.error(f"{arg} needs a value")
      value, i = extra[i + 1], i + 1
    overrides[key] = value
    i += 1
  return overrides


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value else None


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="gan-jax", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("-v", "--verbose", action="store_true",
                      help="INFO logs (gan_jax, Orbax, TFDS); default: warnings only")
  sub = parser.add_subparsers(dest="command", required=True)
  train = sub.add_parser("train", help="train (or resume) an experiment in a work directory")
  train.add_argument("--config", required=True, help="experiment file with get_config()")
  train.add_argument("--workdir", required=True, help="where checkpoints, samples and metrics go")
  # Multi-host runs outside SLURM (under `srun` everything is detected).
  env = os.environ.get
  train.add_argument("--coordinator", default=env("GAN_JAX_COORDINATOR"), metavar="HOST:PORT",
                     help="multi-process: address of process 0's coordinator, the same for "
                     "every process ($GAN_JAX_COORDINATOR)")
  train.add_argument("--num-processes", type=int, default=_env_int("GAN_JAX_NUM_PROCESSES"),
                     metavar="N", help="multi-process: number of processes "
                     "($GAN_JAX_NUM_PROCESSES)")
  train.add_argument("--process-id", type=int, default=_env_int("GAN_JAX_PROCESS_ID"),
                     metavar="I", help="multi-process: this process, 0..N-1 ($GAN_JAX_PROCESS_ID)")
  prepare = sub.add_parser("prepare", help="prepare the experiment's TFDS dataset and exit")
  prepare.add_argument("--config", required=True, help="experiment file with get_config()")
  prepare.set_defaults(workdir=None)
  sample = sub.add_parser("sample", help="write samples from a work directory's checkpoint")
  sample.add_argument("--workdir", required=True)
  sample.add_argument("--config", default=None,
                      help="experiment file (default: the workdir's config.json)")
  sample.add_argument("--num", type=int, default=64, help="number of samples")
  sample.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  sample.add_argument("--seed", type=int, default=0, help="seed of the latent batch")
  which = sample.add_mutually_exclusive_group()
  which.add_argument("--label", type=int, default=None, metavar="K",
                     help="class-conditional G: samples of class K only")
  which.add_argument("--labels", choices=["all"], default=None,
                     help="class-conditional G: 'all' = a grid with one row per class "
                     "(--num // classes images each)")
  evaluate = sub.add_parser(
      "eval", help="score a work directory's checkpoint (FD, KID, IS, precision/recall) "
      "and write a JSON report")
  evaluate.add_argument("--workdir", default=None,
                        help="work directory (report: DIR/eval/step_N.json)")
  evaluate.add_argument("--config", default=None,
                        help="experiment file (default: the workdir's config.json)")
  evaluate.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  evaluate.add_argument("--split", default=None,
                        help="score this real split instead of a generator (the data's "
                        "own baseline against eval.split)")
  evaluate.add_argument("--out", default=None, help="report path (default: see --workdir)")
  return parser


def main(argv: list[str] | None = None) -> int:
  parser = build_parser()
  args, extra = parser.parse_known_args(argv)
  overrides = _split_overrides(extra, parser)
  if args.command == "eval" and not (args.workdir or (args.config and args.split)):
    parser.error("eval needs --workdir (a trained run), or --config and --split")
  config_path = args.config or os.path.join(args.workdir, "config.json")
  if not args.verbose:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # TensorFlow's C++ INFO lines
  from absl import logging
  logging.set_verbosity(logging.INFO if args.verbose else logging.WARNING)
  from gan_jax import configure
  try:
    # The user modules (config.imports) are imported here, before anything
    # is built, in every process of a multi-process run.
    config = configure.load(config_path, overrides)
  except UserError as e:
    print(f"gan-jax: error: {e}", file=sys.stderr)
    return 2
  if args.command == "train":
    # Before anything touches a jax device: on several processes the device
    # list is the whole cluster's.
    from gan_jax import distributed
    if distributed.initialize(args.coordinator, args.num_processes, args.process_id):
      import jax
      if jax.process_count() > 1:
        if config.eval.every:
          print("gan-jax: error: evaluation during training (eval.every) runs on one process "
                "only; train with --config.eval.every=0 and run `gan-jax eval` afterwards",
                file=sys.stderr)
          return 2
        if jax.process_index() != 0:
          config.progress_bar = False   # one progress bar, process 0's
  from gan_jax import checkpointing, commands, train
  try:
    if args.command == "prepare":
      print(commands.prepare(config))
    elif args.command == "train":
      stop = checkpointing.StopOnSignal()
      train.train_and_evaluate(config, args.workdir, stop=stop)
      if stop.stopped_at is not None:
        return 128 + stop.signum   # stopped early (saved): not a finished run
    elif args.command == "eval":
      report, path = commands.evaluate(config, args.workdir, step=args.step,
                                       split=args.split, out=args.out)
      print(json.dumps(report, indent=2))
      print(f"report written to {path}", file=sys.stderr)
    else:
      print("\n".join(commands.write_samples(config, args.workdir, args.num,
                                              step=args.step, seed=args.seed,
                                              label=args.label,
                                              all_labels=args.labels == "all")))
  except UserError as e:   # the user's input or environment: one line, no traceback
    print(f"gan-jax: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
