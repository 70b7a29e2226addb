"""The commands besides `train`: samples from a work directory's checkpoint,
its evaluation (or a real split's), and data preparation."""
from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from gan_jax import checkpointing, configure, models, outputs
from gan_jax.components import build_components, evaluate_state, init_state, make_generate, sample_latents
from gan_jax.errors import ConfigError
from gan_jax.mesh import make_mesh


def _restore(config: ml_collections.ConfigDict, workdir: str, step: int | None, mesh=None):
  """(components, mesh, the checkpoint's state) of a work directory, read only."""
  configure.check_components(config)
  c = build_components(config)
  mesh = make_mesh() if mesh is None else mesh
  ckpt = checkpointing.Checkpointer(workdir, keep=1, read_only=True)
  return c, mesh, ckpt.restore(init_state(config, c, mesh), step=step)


def write_samples(config: ml_collections.ConfigDict, workdir: str, num: int,
                  step: int | None = None, seed: int = 0) -> list[str]:
  """`num` samples of the checkpoint (latest or `step`) as .npy and a PNG grid."""
  if num <= 0:
    raise ConfigError(f"number of samples must be positive, got {num}")
  c, _, state = _restore(config, workdir, step)
  step = int(state.step)
  z = sample_latents(jax.random.PRNGKey(seed), num, c)
  images = np.asarray(make_generate(c)(state, z))
  npy = os.path.join(workdir, "samples", f"samples_step{step}_n{num}_seed{seed}.npy")
  os.makedirs(os.path.dirname(npy), exist_ok=True)
  np.save(npy, images)
  outputs.save_image_grid(images, npy[:-4] + ".png", tuple(config.data.pixel_range))
  return [npy, npy[:-4] + ".png"]


def evaluate(config: ml_collections.ConfigDict, workdir: str | None, *,
             step: int | None = None, split: str | None = None,
             out: str | None = None) -> tuple[dict[str, Any], str]:
  """`gan-jax eval`: scores a work directory's checkpoint (latest or `step`),
  or the real `split`, against eval.split; writes the JSON report."""
  from gan_jax import evaluation
  mesh = make_mesh()
  evaluation.validate_eval_config(config, mesh.devices.size)
  if split is None:
    # The checkpoint before the (slow) statistics: a missing one fails at once.
    c, mesh, state = _restore(config, workdir, step, mesh)
    evaluator = evaluation.Evaluator(config, c.image_shape, mesh)
    latents = sample_latents(jax.random.PRNGKey(config.eval.seed), config.eval.num_samples, c)
    report = evaluate_state(evaluator, make_generate(c), state, latents)
    name = f"step_{report['step']:07d}.json"
  else:
    evaluator = evaluation.Evaluator(config, models.image_shape(config.model), mesh)
    report = {"step": None, **evaluator.score_split(split, config.eval.num_samples)}
    name = f"split_{split}.json"
  path = out or os.path.join(workdir or ".", "eval", name)
  outputs.write_report(path, report)
  return report, path


def prepare(config: ml_collections.ConfigDict) -> str:
  """Prepares the experiment's TFDS dataset; returns where it is."""
  from gan_jax.data import sources
  builder = sources.prepared_builder(config.data)
  return f"{config.data.name} is prepared in {builder.data_dir}"
