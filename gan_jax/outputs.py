"""What a run leaves in its work directory: metrics (JSON lines and
TensorBoard events), sample grids, the loss curve and exported generators.

In a multi-process run only process 0 writes them (every writer here is a
no-op elsewhere); the checkpoints are Orbax's, saved by all processes."""
from __future__ import annotations

import functools
import json
import math
import os

import flax.serialization
import jax
import numpy as np

from gan_jax.errors import UserError


def main_process_only(fn):
  """`fn` runs in process 0 only (returns None elsewhere): one copy of each
  output however many processes train. `fn` must not run a collective."""
  @functools.wraps(fn)
  def wrapped(*args, **kwargs):
    if jax.process_index() == 0:
      return fn(*args, **kwargs)
    return None
  return wrapped


class MetricWriter:
  """Appends `{"step": s, **scalars}` to metrics.jsonl and to TensorBoard
  (in process 0; a no-op in the others)."""

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    if not self._active:
      return
    # tensorboardX writes TensorBoard event files without TensorFlow's
    # summary ops (tensorflow-cpu does not bring the tensorboard package).
    from tensorboardX import SummaryWriter
    self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, scalars: dict[str, float]) -> None:
    if not self._active:
      return
    self._jsonl.write(json.dumps({"step": step, **scalars}) + "\n")
    self._jsonl.flush()
    for k, v in scalars.items():
      self._tb.add_scalar(k, v, global_step=step)
    self._tb.flush()

  def close(self) -> None:
    if not self._active:
      return
    self._jsonl.close()
    self._tb.close()


class DivergenceError(UserError, FloatingPointError):
  """A loss, penalty or gradient norm is not finite."""


def check_finite(step: int, scalars: dict, member: str = "", saved_step: int | None = None,
                 max_abs_loss: float = 0.0) -> None:
  """Raises DivergenceError naming the step (and sweep member) and every
  non-finite metric, or every loss beyond `max_abs_loss` (0: no bound)."""
  bad = {k: float(v) for k, v in scalars.items() if not math.isfinite(float(v))}
  if not bad and max_abs_loss:
    bad = {k: float(v) for k, v in scalars.items()
           if "loss" in k and abs(float(v)) > max_abs_loss}
  if bad:
    where = f" in member {member}" if member else ""
    why = "" if all(not math.isfinite(v) for v in bad.values()) else (
        f" (beyond divergence.max_abs_loss={max_abs_loss:g})")
    kept = (f"the last checkpoint (step {saved_step}) is from before it" if saved_step
            else "no checkpoint was written")
    raise DivergenceError(f"training diverged at step {step}{where}: " + ", ".join(
        f"{k} = {v}" for k, v in bad.items()) + f"{why}; {kept}")


def image_grid(images: np.ndarray, pixel_range=(-1.0, 1.0), cols: int | None = None) -> np.ndarray:
  """(N, H, W, C) images in `pixel_range` -> one uint8 (rows*H, cols*W, C) grid."""
  lo, hi = pixel_range
  n, h, w, ch = images.shape
  cols = cols or math.ceil(math.sqrt(n))
  rows = math.ceil(n / cols)
  x = np.clip((np.asarray(images, np.float32) - lo) / (hi - lo), 0.0, 1.0)
  x = np.round(x * 255).astype(np.uint8)
  grid = np.zeros((rows * h, cols * w, ch), np.uint8)
  for i in range(n):
    r, c = divmod(i, cols)
    grid[r * h:(r + 1) * h, c * w:(c + 1) * w] = x[i]
  return grid


@main_process_only
def save_image_grid(images: np.ndarray, path: str, pixel_range=(-1.0, 1.0),
                    upscale: int = 2, cols: int | None = None) -> None:
  """A PNG grid of `images`, `cols` per row (default: a square)."""
  from PIL import Image
  grid = image_grid(images, pixel_range, cols)
  img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  if upscale > 1:
    img = img.resize((img.width * upscale, img.height * upscale), Image.NEAREST)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  img.save(path)


@main_process_only
def truncate_metrics(path: str, last_step: int) -> None:
  """Drops rows logged after `last_step`: on resume from that checkpoint the
  run logs those steps again, and the file must not hold them twice."""
  if not os.path.exists(path):
    return
  rows = [r for r in read_metrics(path) if r["step"] <= last_step]
  with open(path, "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)


def read_metrics(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


@main_process_only
def plot_losses(metrics_path: str, png_path: str) -> None:
  """D and G loss against step, from metrics.jsonl."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  rows = [r for r in read_metrics(metrics_path) if "d_loss" in r]   # not the eval rows
  steps = [r["step"] for r in rows]
  fig, ax = plt.subplots(figsize=(7, 4))
  for key in ("d_loss", "g_loss"):
    ax.plot(steps, [r[key] for r in rows], label=key)
  ax.set_xlabel("step")
  ax.set_ylabel("loss")
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(png_path, dpi=100)
  plt.close(fig)


@main_process_only
def export_generator(path: str, variables: dict) -> None:
  """G's variables alone (params + batch_stats) as a Flax msgpack file: the
  artefact to share or load without the training state; restore it with
  `flax.serialization.from_bytes(g.init(...), open(path, 'rb').read())`."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "wb") as f:
    f.write(flax.serialization.to_bytes(jax.device_get(variables)))
  os.replace(path + ".tmp", path)


@main_process_only
def write_report(path: str, report: dict) -> None:
  """A JSON evaluation report, written whole or not at all."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(report, f, indent=2)
  os.replace(path + ".tmp", path)
