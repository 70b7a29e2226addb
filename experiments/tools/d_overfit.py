r"""D's overfitting signal of a run: its logits on the training images it saw
against a split it never saw (ADA's r_t = E[sign D(x)] on both, and the mean
logit). A D that memorises its training set scores those images higher than
held-out ones; DiffAugment and ADA exist to close that gap.

  python experiments/tools/d_overfit.py WORKDIR [WORKDIR ...] [--held-out test]

Training images: the first `data.num_examples` of the run's split (all when
0). D runs in training mode on batches of `batch_size` real images, as in
the step, so its batch statistics are those of real batches. One JSON line
per work directory. Unconditional models only (a projection D needs labels).
"""
from __future__ import annotations

import argparse
import json

import jax
import numpy as np

from gan_jax import configure
from gan_jax.commands import _restore
from gan_jax.data.pipeline import normalise_array
from gan_jax.evaluation.evaluator import real_images
from gan_jax.mesh import AXIS

P = jax.sharding.PartitionSpec


def d_logits(c, state, mesh, images: np.ndarray, batch: int, pixel_range) -> np.ndarray:
  """D's logits on `images` (uint8), whole batches only."""
  @jax.jit
  @jax.shard_map(mesh=mesh, in_specs=P(AXIS), out_specs=P(AXIS))
  def logits(x):
    out, _ = c.d.apply({"params": state.d_params, "batch_stats": state.d_batch_stats}, x,
                       train=True, mutable=["batch_stats"], rngs={"dropout": jax.random.key(0)})
    return (out[0] if isinstance(out, tuple) else out).reshape(-1)
  n = len(images) // batch * batch
  return np.concatenate([np.asarray(logits(normalise_array(images[i:i + batch], pixel_range)))
                         for i in range(0, n, batch)])


def overfit_report(workdir: str, held_out: str = "test", step: int | None = None) -> dict:
  config = configure.load(f"{workdir}/config.json")
  if config.model.get("num_classes", 0):
    raise SystemExit(f"{workdir}: a class-conditional D needs labels; this tool scores "
                     f"unconditional runs only")
  c, mesh, state = _restore(config, workdir, step)
  shape = (config.model.image_size, config.model.image_size, config.model.channels)
  seen, _, _ = real_images(config.data, config.data.split, shape,
                           limit=config.data.get("num_examples", 0))
  unseen, _, _ = real_images(config.data, held_out, shape, limit=0)
  report = {"workdir": workdir, "step": int(state.step)}
  for side, images in (("train", seen), (held_out, unseen)):
    z = d_logits(c, state, mesh, images, config.batch_size, config.data.pixel_range)
    report.update({f"{side}_images": len(z), f"{side}_mean_logit": float(z.mean()),
                   f"{side}_r_t": float(np.sign(z).mean())})
  report["r_t_gap"] = report["train_r_t"] - report[f"{held_out}_r_t"]
  return report


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--held-out", default="test", help="split D never saw (default: test)")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  args = parser.parse_args(argv)
  for workdir in args.workdirs:
    print(json.dumps(overfit_report(workdir, args.held_out, args.step)), flush=True)


if __name__ == "__main__":
  main()
