#!/usr/bin/env bash
# Multi-node data-parallel training under SLURM: one process per node driving
# all of the node's GPUs; jax.distributed.initialize() finds the coordinator,
# the process count and this process's id in SLURM's environment (gan-jax
# calls it when a job step has more than one task).
#
#   sbatch experiments/slurm_train.sh                          # the default DCGAN
#   CONFIG=experiments/wgan_gp_fashion_mnist.py WORKDIR=/shared/runs/wgan_gp \
#     sbatch --nodes=4 experiments/slurm_train.sh --config.batch_size=256
#   DETERMINISTIC=1 sbatch experiments/slurm_train.sh          # run-to-run identical GPU results
#
# Arguments after the script name go to `gan-jax train` (--config.KEY=VALUE).
# The global batch (config.batch_size) is split over every GPU of every node:
# it must be divisible by nodes x GPUs per node. Resubmitting with the same
# WORKDIR resumes from its latest checkpoint.
#
#SBATCH --job-name=gan-jax
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one JAX process per node ...
#SBATCH --gpus-per-task=8            # ... with all its GPUs (set to the GPUs of a node)
#SBATCH --cpus-per-task=16           # tf.data input, Orbax writes
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail
cd "${SLURM_SUBMIT_DIR:-$(dirname "$0")/..}"

# Activate the environment with gan_jax installed (pip install -e '.[cuda]').
# source .venv/bin/activate

CONFIG=${CONFIG:-experiments/dcgan_fashion_mnist.py}
# Shared storage: every process writes its part of each checkpoint here, and
# process 0 writes metrics, samples and exported generators.
WORKDIR=${WORKDIR:-workdirs/$(basename "$CONFIG" .py)}
# Shared storage too: every process reads the dataset from it.
export TFDS_DATA_DIR=${TFDS_DATA_DIR:-$HOME/tensorflow_datasets}

if [ "${DETERMINISTIC:-0}" = 1 ]; then
  # Deterministic GPU kernels (no atomics-based reductions or scatters) and no
  # autotuning (the fastest kernel is timed afresh on every start, and may
  # differ between runs and nodes). Slower.
  export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_deterministic_ops=true --xla_gpu_autotune_level=0"
fi

# Prepare the dataset once, here on the first node, before the processes
# start: they would otherwise all prepare it into the same folder at once.
gan-jax prepare --config "$CONFIG"

# One `gan-jax train` per node. Evaluation during training runs on one
# process only: it is off here; score checkpoints afterwards with
# `gan-jax eval --workdir "$WORKDIR"` on one node.
srun --kill-on-bad-exit=1 gan-jax train --config "$CONFIG" --workdir "$WORKDIR" \
    --config.eval.every=0 "$@"
