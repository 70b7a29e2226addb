#!/usr/bin/env bash
# Fresh machine -> the default DCGAN trained on Fashion-MNIST in
# workdirs/dcgan_fashion_mnist (samples/, metrics.jsonl, tensorboard/,
# losses.png, checkpoints/). Run from anywhere: bash experiments/quickstart.sh
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=experiments/dcgan_fashion_mnist.py
WORKDIR=${WORKDIR:-workdirs/dcgan_fashion_mnist}

python -m pip install -q -e .

# Fashion-MNIST: TFDS downloads it where the network allows. Offline, gan_jax
# prepares the same TFDS dataset from the IDX files of Debian's
# dataset-fashion-mnist package, installed here when we are root with apt.
if ! python -m gan_jax prepare --config "$CONFIG"; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "Installing Debian's dataset-fashion-mnist for offline preparation ..."
    apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist
    python -m gan_jax prepare --config "$CONFIG"
  else
    exit 1
  fi
fi

python -m gan_jax train --config "$CONFIG" --workdir "$WORKDIR" "$@"
