"""Multi-host (multi-process) start-up and helpers.

One process per host (or per task) runs the same program; `initialize`
connects them through `jax.distributed` before anything touches a device,
after which `jax.devices()` lists every process's devices and the training
mesh spans them all. Each process feeds only its rows of every global batch
(`gan_jax.data.pipeline`), process 0 alone writes the run's outputs, and all processes
save the Orbax checkpoints together. What the training loop reads on the host
(metrics, sample grids, the state) is replicated, so every process reads its
own copy; nothing needs gathering.

  SLURM (`srun`, more than one task): everything is detected from SLURM's
  environment.
  Elsewhere: `gan-jax train --coordinator HOST:PORT --num-processes N
  --process-id I` on every host (or $GAN_JAX_COORDINATOR,
  $GAN_JAX_NUM_PROCESSES, $GAN_JAX_PROCESS_ID).
"""
from __future__ import annotations

import importlib.util
import os

import jax
from absl import logging

# What jax's own SLURM detection (jax._src.clusters.SlurmCluster) needs.
_SLURM_VARS = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID",
               "SLURM_LOCALID")
# Plugins that give jax a non-CPU platform.
_ACCELERATOR_PLUGINS = ("jax_cuda12_plugin", "jax_cuda13_plugin", "jax_rocm60_plugin",
                        "jax_rocm7_plugin", "libtpu")


def slurm_tasks() -> int:
  """Tasks of the current SLURM job step (1 outside SLURM or outside `srun`)."""
  if not all(v in os.environ for v in _SLURM_VARS):
    return 1
  return int(os.environ.get("SLURM_STEP_NUM_TASKS", os.environ["SLURM_NTASKS"]))


def _cpu_only() -> bool:
  """True where jax will run on the CPU alone; decided without starting a
  backend (that must wait until after `jax.distributed.initialize`)."""
  platforms = os.environ.get("JAX_PLATFORMS", "") or (jax.config.jax_platforms or "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  return not any(importlib.util.find_spec(p) for p in _ACCELERATOR_PLUGINS)


def _slurm_local_device_ids() -> list[int] | None:
  """With one task per node, every GPU of the node (jax's SLURM detection
  would otherwise drive only GPU number SLURM_LOCALID, i.e. GPU 0: it assumes
  one task per GPU); None (jax's default) with several tasks per node."""
  tasks, nodes = slurm_tasks(), int(os.environ.get("SLURM_STEP_NUM_NODES", "0"))
  if tasks != nodes:
    return None
  visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
  if visible:
    # CUDA numbers the visible GPUs 0..n-1 whatever their physical ids.
    return list(range(len(visible.split(","))))
  gpus = os.environ.get("SLURM_GPUS_ON_NODE", "")
  return list(range(int(gpus))) if gpus.isdigit() and int(gpus) > 0 else None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Joins this process to a multi-process run, if it is one; returns
  whether it did. Must run before the first use of a jax device.

  Explicit values (any of them) -> `jax.distributed.initialize` with them
  (the rest detected from the cluster's environment, as jax does); a SLURM
  job step with more than one task -> `jax.distributed.initialize()` with
  SLURM's values; otherwise nothing (one process)."""
  explicit = any(v is not None for v in (coordinator, num_processes, process_id))
  if not explicit and slurm_tasks() <= 1:
    return False
  if _cpu_only():
    # Cross-process collectives on CPU: gloo over TCP. jax 0.10's default,
    # set explicitly since older versions had none (a cross-process psum fails).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if not explicit and not _cpu_only():
    kwargs["local_device_ids"] = _slurm_local_device_ids()
  jax.distributed.initialize(coordinator, num_processes, process_id, **kwargs)
  logging.info("process %d of %d: %d local devices of %d", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True

