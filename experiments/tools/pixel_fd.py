r"""Pixel-space Frechet distance (H*W*C-dimensional) between sample arrays
and real Fashion-MNIST test images: a crude, download-free proxy for sample
quality, to compare runs of one model (not a substitute for FID).

  gan-jax sample --workdir DIR --num 5000      # writes DIR/samples/samples_*.npy
  python experiments/tools/pixel_fd.py DIR/samples/samples_step2811_n5000_seed0.npy ...

Samples are expected in [-1, 1] (the default pixel range). The distance is
gan_jax.evaluation.stats' (float64 moments, eigh square root); `gan-jax eval` gives the
feature-space scores.
"""
import argparse
import gzip
import os

import numpy as np

from gan_jax.evaluation import stats

IDX = "/usr/share/datasets/fashion-mnist"


def read_idx_images(path):
  with gzip.open(path) as f:
    return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 784)


def frechet(a, b):
  return stats.frechet_from_moments(stats.moments_of(a), stats.moments_of(b))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("samples", nargs="+", help=".npy sample arrays (N, 28, 28, 1)")
  parser.add_argument("--idx-dir", default=IDX)
  args = parser.parse_args()
  scale = lambda x: x / 127.5 - 1.0
  test = scale(read_idx_images(os.path.join(args.idx_dir, "t10k-images-idx3-ubyte.gz")))
  train = scale(read_idx_images(os.path.join(args.idx_dir, "train-images-idx3-ubyte.gz"))[:5000])
  print(f"5000 real train images: {frechet(train, test):.2f}")
  for path in args.samples:
    x = np.load(path).reshape(-1, 784).astype(np.float64)
    print(f"{path}: {frechet(x, test):.2f}")


if __name__ == "__main__":
  main()
