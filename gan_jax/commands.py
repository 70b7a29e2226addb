"""The commands besides `train`: samples from a work directory's checkpoint,
its evaluation (or a real split's), and data preparation."""
from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gan_jax import checkpointing, configure, models, outputs
from gan_jax.components import (build_components, class_rows, eval_labels, evaluate_state,
                                init_state, make_generate, sample_labels, sample_latents)
from gan_jax.errors import ConfigError
from gan_jax.mesh import make_mesh


def _restore(config: ml_collections.ConfigDict, workdir: str, step: int | None, mesh=None):
  """(components, mesh, the checkpoint's state) of a work directory, read only."""
  configure.check_components(config)
  c = build_components(config)
  mesh = make_mesh() if mesh is None else mesh
  ckpt = checkpointing.Checkpointer(workdir, keep=1, read_only=True)
  return c, mesh, ckpt.restore(init_state(config, c, mesh), step=step)


def _sample_labels(c, num: int, label: int | None, all_labels: bool, seed: int):
  """(labels, grid row length, file name part) of a `sample` command."""
  if (label is not None or all_labels) and not c.conditional:
    raise ConfigError("--label/--labels: this model is unconditional (model.num_classes=0)")
  if label is not None and not 0 <= label < c.num_classes:
    raise ConfigError(f"--label {label}: the model has classes 0..{c.num_classes - 1}")
  if label is not None:
    return np.full((num,), label, np.int32), None, f"_label{label}"
  if all_labels:
    labels, cols = class_rows(c, num)
    return labels, cols, "_all_labels"
  if c.conditional:   # uniform over the classes, as in training
    return np.asarray(sample_labels(jax.random.PRNGKey(seed + 1), num, c)), None, ""
  return None, None, ""


def write_samples(config: ml_collections.ConfigDict, workdir: str, num: int,
                  step: int | None = None, seed: int = 0, label: int | None = None,
                  all_labels: bool = False) -> list[str]:
  """`num` samples of the checkpoint (latest or `step`) as .npy and a PNG
  grid. A conditional G samples class `label`, or (`all_labels`) one grid
  row per class of num // classes images, or random classes (their labels
  saved beside the images as *_labels.npy)."""
  if num <= 0:
    raise ConfigError(f"number of samples must be positive, got {num}")
  c, _, state = _restore(config, workdir, step)
  labels, cols, tag = _sample_labels(c, num, label, all_labels, seed)
  num = num if labels is None else len(labels)
  step = int(state.step)
  z = sample_latents(jax.random.PRNGKey(seed), num, c)
  images = np.asarray(make_generate(c)(state, z, None if labels is None else jnp.asarray(labels)))
  npy = os.path.join(workdir, "samples", f"samples_step{step}_n{num}_seed{seed}{tag}.npy")
  os.makedirs(os.path.dirname(npy), exist_ok=True)
  np.save(npy, images)
  written = [npy]
  if labels is not None:
    np.save(npy[:-4] + "_labels.npy", labels)
    written.append(npy[:-4] + "_labels.npy")
  outputs.save_image_grid(images, npy[:-4] + ".png", tuple(config.data.pixel_range), cols=cols)
  return written + [npy[:-4] + ".png"]


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
    report = evaluate_state(evaluator, make_generate(c), state, latents,
                            eval_labels(config.eval.num_samples, c))
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
