"""The training loop: `train_and_evaluate(config, workdir)`.

One loop for a single run and for a sweep (`gan_jax.sweep`: K members in one
program, the state with a leading member axis). Each member is one `Run`
record (work directory, checkpoints, metric writer, best checkpoint); each
periodic action (sync and check, log, samples, evaluation, checkpoint,
export) is a small function called with the runs.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time

import jax
import ml_collections
import numpy as np
from absl import logging
from tqdm import tqdm

from gan_jax import checkpointing, configure, outputs, sweep, workdir as workdir_lib
from gan_jax.components import (build_components, eval_labels, evaluate_state,
                                generator_variables, grid_inputs, init_state, make_generate,
                                sample_latents)
from gan_jax.data import pipeline
from gan_jax.errors import ConfigError
from gan_jax.mesh import make_mesh, replicate
from gan_jax.schedule import chunk_sizes, events_after, num_train_steps
from gan_jax.state import GANState
from gan_jax.step import make_sweep_steps, make_train_steps


@dataclasses.dataclass
class Run:
  """One trained model's outputs: the single run, or one sweep member."""
  member: sweep.Member
  ckpt: checkpointing.Checkpointer
  best: checkpointing.BestCheckpoint | None = None
  writer: outputs.MetricWriter | None = None   # opened just before the loop
  checked: list = dataclasses.field(default_factory=list)   # finite metric rows since the log

  @property
  def workdir(self) -> str:
    return self.member.workdir

  def path(self, *parts: str) -> str:
    return os.path.join(self.member.workdir, *parts)

  def close(self) -> None:
    for closable in (self.ckpt, self.best, self.writer):
      if closable is not None:
        closable.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       stop: checkpointing.StopOnSignal | None = None) -> GANState:
  """Trains (or resumes) the experiment in `workdir`; returns the final state
  (a sweep's member states stacked on a leading axis).

  SIGTERM or SIGINT during the loop stops it after the current compiled
  call: that step's metrics are checked, it is checkpointed (the save
  finished), and its state returned; `stop` (made here if not given) then
  says which signal and at which step. Running again resumes from there.

  The work directory is held by this trainer alone while it runs (a second
  one fails at once, naming the holder) and checked for writing first."""
  with workdir_lib.WorkdirLock(workdir) as lock:   # released however training ends
    return _train(config, workdir, lock, stop)


def _train(config, workdir: str, lock: workdir_lib.WorkdirLock,
           stop: checkpointing.StopOnSignal | None) -> GANState:
  config = configure.resolve_auto_dtype(config)   # config.json records the choice
  members, swept, mesh = sweep.members(config, workdir), sweep.is_sweep(config), make_mesh()
  configure.validate(config, mesh.devices.size, [m.config for m in members])
  workdir_lib.check_writable(workdir)
  if os.path.isdir(workdir):
    lock.acquire()   # before the (slow) data: a second trainer fails at once
  c = build_components(sweep.static_config(config, members))
  # The data first: a bad dataset fails before the work directory is touched.
  # One source per seed: the epoch order depends only on the seed.
  sources = {}
  for seed in dict.fromkeys(m.config.seed for m in members):
    sources[seed] = pipeline.TrainData(config.data, config.batch_size, seed, mesh,
                                       image_shape=c.image_shape, batches_per_step=c.d_steps,
                                       num_classes=c.num_classes)
  if c.conditional:   # config.json records the classes
    configure.record_class_names(config, members)
  source = sources[config.seed]
  lock.acquire()   # (creating the work directory)
  evaluator = _make_evaluator(config, c, mesh)
  runs = [_open_run(m, config) for m in members]
  state, start = _restore(runs, c, mesh, swept, workdir)
  _write_configs(config, workdir, runs, swept)
  total = num_train_steps(config, source.steps_per_epoch)
  if start:
    logging.info("resuming from step %d of %d", start, total)
  events = functools.partial(events_after, total=total, config=config,
                             steps_per_epoch=source.steps_per_epoch)
  sizes = list(chunk_sizes(start, total, config.steps_per_call, lambda n: events(n).any()))
  inputs = pipeline.member_chunks([sources[m.config.seed] for m in members], start, iter(sizes),
                                  indices=config.data.on_device, member_axis=swept)
  images = (source.device_images(),) if config.data.on_device else ()
  steps_fn = (make_sweep_steps(c, mesh, config.optim, sweep.stacked_hparams(members),
                               config.data.pixel_range, config.data.on_device) if swept else
              make_train_steps(c, mesh, config.data.pixel_range, config.data.on_device))
  act = _Actions(runs, config, swept, make_generate(c), evaluator, eval_latents=(
      sample_latents(jax.random.PRNGKey(config.eval.seed), config.eval.num_samples, c)
      if evaluator else None), eval_labels=eval_labels(config.eval.num_samples, c),
                 grid=grid_inputs(config, c, config.num_grid_samples),
                 rows_per_step=config.batch_size * c.d_steps,
                 steps_per_epoch=source.steps_per_epoch, step_last=start,
                 saved_step=start or None)
  bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True,
             disable=not config.progress_bar)
  stop = checkpointing.StopOnSignal() if stop is None else stop
  stop.install()   # until the last save is committed: a signal only sets a flag
  done, pending = start, []
  try:
    for call, k in enumerate(sizes):
      state, metrics = steps_fn(state, next(inputs), *images)
      pending.append(metrics)
      done += k
      bar.update(k)
      event = events(done)
      stopping = stop.should_stop(call) and done < total
      if event.log or event.save or event.export or event.eval or stopping:
        act.check(pending, done)   # the only host syncs: nothing diverged is saved
        pending = []
      if event.log:
        bar.set_postfix(act.log(done))
      if event.sample:
        act.samples(state, done)
      if event.eval:
        act.evaluate(state, done)
      if event.save or stopping:
        act.save(state, done)
      if event.export:
        act.export(state, "final" if done == total else f"epoch_{event.epoch:04d}")
      if stopping:
        act.wait()
        bar.close()
        stop.stopped(done)
        break
  finally:
    try:
      bar.close()
      for run in runs:
        run.close()
    finally:
      stop.uninstall()
  for run in runs:
    outputs.plot_losses(run.path("metrics.jsonl"), run.path("losses.png"))
  if swept:
    logging.info("sweep of %d members done: %s", len(runs), [r.workdir for r in runs])
  return state


def _make_evaluator(config, c, mesh):
  """The evaluator, built before training so a bad eval setting fails now
  and the extractor and real statistics are ready; None when eval is off."""
  if not config.eval.every:
    return None
  from gan_jax import evaluation
  return evaluation.Evaluator(config, c.image_shape, mesh)


def _open_run(member: sweep.Member, config) -> Run:
  os.makedirs(member.workdir, exist_ok=True)
  best = None
  if config.eval.every and config.eval.best_metric:
    from gan_jax.evaluation import metrics
    best = checkpointing.BestCheckpoint(member.workdir, config.eval.best_metric,
                                        metrics.higher_is_better(config.eval.best_metric))
  return Run(member, checkpointing.Checkpointer(member.workdir, keep=config.keep_checkpoints),
             best)


def _restore(runs: list[Run], c, mesh, swept: bool, workdir: str) -> tuple[GANState, int]:
  """Every run's latest checkpoint (or a fresh state), stacked for a sweep;
  metrics rows logged after that step are dropped."""
  states = [r.ckpt.restore_latest(init_state(r.member.config, c, mesh)) for r in runs]
  starts = sorted({int(s.step) for s in states})
  if len(starts) != 1:
    at = {step: [r.member.name for r, s in zip(runs, states) if int(s.step) == step]
          for step in starts}
    raise ConfigError(
        f"the members in {workdir}/members are at different steps ("
        + "; ".join(f"step {k}: {', '.join(v)}" for k, v in at.items())
        + "): a sweep resumes only with the members it was started with. Resume it with "
          "its own sweep settings, and train new members in a new work directory")
  for r in runs:
    outputs.truncate_metrics(r.path("metrics.jsonl"), starts[0])
  return (replicate(sweep.stack(states), mesh) if swept else states[0]), starts[0]


def _write_configs(config, workdir: str, runs: list[Run], swept: bool) -> None:
  """config.json of every run (and the sweep's own), after the restore: a
  config that does not fit the checkpoint leaves the old one in place."""
  if jax.process_index() != 0:  # multi-process: one writer (see gan_jax.outputs)
    return
  pairs = [(r.member.config, r.workdir) for r in runs] + ([(config, workdir)] if swept else [])
  for cfg, d in pairs:
    with open(os.path.join(d, "config.json"), "w") as f:
      f.write(cfg.to_json_best_effort(indent=2))


@dataclasses.dataclass
class _Actions:
  """The periodic actions of the loop, for every run at once."""
  runs: list[Run]
  config: ml_collections.ConfigDict
  swept: bool
  generate: object     # jitted (state, z) -> images
  evaluator: object    # gan_jax.evaluation.Evaluator, or None
  eval_latents: jax.Array | None
  eval_labels: np.ndarray | None   # a conditional G's classes for the eval latents
  grid: tuple   # (latents, labels or None, row length or None) of the sample grids
  rows_per_step: int
  steps_per_epoch: int
  step_last: int       # the step of the last log line (or the start)
  saved_step: int | None   # the last checkpoint's step (None: none yet)

  def __post_init__(self):
    for run in self.runs:   # after the restore dropped newer rows; closed with the run
      run.writer = outputs.MetricWriter(run.workdir)
    self.t_last = time.perf_counter()
    self.grids = (jax.jit(jax.vmap(self.generate, in_axes=(0, None, None))) if self.swept
                  else lambda s, z, y: self.generate(s, z, y)[None])

  def at(self, state, i: int):
    """Run i's state."""
    return sweep.member(state, i) if self.swept else state

  def check(self, pending: list, done: int) -> None:
    """Fetches the pending metrics and checks every step's values (a
    non-finite one is reported at its own step and member)."""
    synced = [m if self.swept else {n: v[None] for n, v in m.items()}
              for m in jax.device_get(pending)]   # each name -> (members, steps)
    step = done - sum(next(iter(m.values())).shape[1] for m in synced)
    for m in synced:
      for j in range(next(iter(m.values())).shape[1]):
        step += 1
        for i, run in enumerate(self.runs):
          row = {n: v[i][j] for n, v in m.items()}
          outputs.check_finite(step, row, run.member.name if self.swept else "",
                               self.saved_step, self.config.divergence.max_abs_loss)
          run.checked.append(row)

  def log(self, done: int) -> dict:
    """Writes each run's mean metrics since the last log line; returns the
    first run's losses for the progress bar."""
    now = time.perf_counter()
    rate = (done - self.step_last) / (now - self.t_last)
    rows = []
    for run in self.runs:
      row = {n: float(np.mean([m[n] for m in run.checked])) for n in run.checked[0]}
      row.update(steps_per_sec=rate, images_per_sec=rate * self.rows_per_step,
                 epoch=done / self.steps_per_epoch)
      run.writer.write(done, row)
      run.checked = []
      rows.append(row)
    self.t_last, self.step_last = now, done
    return {"d_loss": f"{rows[0]['d_loss']:.3f}", "g_loss": f"{rows[0]['g_loss']:.3f}"}

  def samples(self, state, done: int) -> None:
    z, labels, cols = self.grid
    for run, grid in zip(self.runs, np.asarray(self.grids(state, z, labels))):
      outputs.save_image_grid(grid, run.path("samples", f"step_{done:07d}.png"),
                              tuple(self.config.data.pixel_range), cols=cols)

  def evaluate(self, state, done: int) -> None:
    for i, run in enumerate(self.runs):
      member_state = self.at(state, i)
      report = evaluate_state(self.evaluator, self.generate, member_state, self.eval_latents,
                              self.eval_labels)
      outputs.write_report(run.path("eval", f"step_{done:07d}.json"), report)
      run.writer.write(done, {f"eval/{k}": v for k, v in report["scores"].items()})
      if run.best is not None:
        run.best.update(done, member_state, report)

  def save(self, state, done: int) -> None:
    for i, run in enumerate(self.runs):
      run.ckpt.save(done, self.at(state, i))
    self.saved_step = done

  def wait(self) -> None:
    for run in self.runs:
      run.ckpt.wait()

  def export(self, state, name: str) -> None:
    for i, run in enumerate(self.runs):
      outputs.export_generator(run.path("generator", f"{name}.msgpack"),
                               generator_variables(self.at(state, i)))
