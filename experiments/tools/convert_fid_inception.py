"""Converts pytorch-fid's FID Inception weights to a Flax msgpack file.

  python experiments/tools/convert_fid_inception.py \\
      --pth PATH/pt_inception-2015-12-05-6726825d.pth --out PATH/fid_inception.msgpack

Get the .pth from pytorch-fid's release (gan_jax.evaluation.inception.WEIGHTS_URL):
  https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth
The `6726825d` in its name is the start of the file's SHA-256 (torch.hub's
check_hash compares that prefix); this tool prints the full digest of the input
and of the output, so both can be recorded next to FID numbers.

torch is needed only here, for reading the .pth (torch.load with
weights_only=True); gan_jax reads the converted file with
gan_jax.evaluation.inception.load_variables and never imports torch.
"""
from __future__ import annotations

import argparse
import os
import sys

from gan_jax.evaluation import inception


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--pth", required=True, help=f"pytorch-fid's {inception.WEIGHTS_FILE}")
  parser.add_argument("--out", required=True, help="the Flax msgpack file to write")
  args = parser.parse_args(argv)

  if not os.path.isfile(args.pth):
    print(f"error: no such file: {args.pth} (download it from {inception.WEIGHTS_URL})",
          file=sys.stderr)
    return 2
  try:
    import torch
  except ImportError:
    print("error: reading the .pth needs torch: "
          "pip install torch --index-url https://download.pytorch.org/whl/cpu", file=sys.stderr)
    return 2

  state_dict = torch.load(args.pth, map_location="cpu", weights_only=True)
  if not isinstance(state_dict, dict):
    print(f"error: {args.pth} holds a {type(state_dict).__name__}, not a state_dict",
          file=sys.stderr)
    return 2
  arrays = {k: v.detach().float().numpy() for k, v in state_dict.items()
            if not k.endswith(".num_batches_tracked")}
  try:
    variables = inception.convert_torch_state_dict(arrays)
  except ValueError as e:
    print(f"error: {args.pth}: {e}", file=sys.stderr)
    return 2
  out_dir = os.path.dirname(os.path.abspath(args.out))
  os.makedirs(out_dir, exist_ok=True)
  inception.save_variables(args.out, variables)
  inception.load_variables(args.out)  # re-read: the file is complete and well-formed
  print(f"input  {args.pth}  sha256 {inception.file_sha256(args.pth)}")
  print(f"output {args.out}  sha256 {inception.file_sha256(args.out)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
