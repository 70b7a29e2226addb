r"""DCGAN on Fashion-MNIST (28x28x1) — the default gan_jax experiment.

G: z(100) -> Dense 7x7x128 -> BN ReLU -> up 14x14x64 -> BN ReLU -> up 28x28x1
-> tanh: half the width of TensorFlow's DCGAN tutorial (whose 256 is the
dcgan28 model's default), chosen because it reaches a lower domain FD per
minute on a CPU (the README's "Measured" has the figures). D: conv 64 (k4 s2)
LReLU(0.2) -> conv 128 (k4 s2) BN LReLU(0.2) -> dense 1. Non-saturating BCE
loss, Adam(8e-4, b1=0.5) for both (4x the DCGAN paper's 2e-4: far fewer steps
to the same FD in a run this short; experiments/results/README.md), batch 64,
pixels in [-1, 1], DCGAN init N(0, 0.02).

Run (from the repository root):

  python -m gan_jax train --config experiments/dcgan_fashion_mnist.py \
      --workdir workdirs/dcgan_fashion_mnist

Override any value with --config.KEY=VALUE, e.g. --config.num_steps=1000.

Half-way and at the end G is scored against the test split with the
domain classifier (FD, KID, IS, precision/recall on 10k samples: scores in
metrics.jsonl and eval/, the best state by FD in checkpoints_best/). Score a
checkpoint later with:

  python -m gan_jax eval --workdir workdirs/dcgan_fashion_mnist
"""
from gan_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "fashion_mnist"
  c.model.name = "dcgan28"
  c.model.image_size = 28
  c.model.channels = 1
  c.model.latent_dim = 100
  c.model.kwargs.g_features = 128
  c.model.kwargs.d_features = 64
  c.loss = "non_saturating"
  c.optim.g_lr = c.optim.d_lr = 8e-4
  c.optim.b1, c.optim.b2 = 0.5, 0.999
  c.batch_size = 64
  # Fashion-MNIST (47 MB as uint8) lives on the device; 5 steps per call.
  c.data.on_device = True
  c.steps_per_call = 5
  c.num_steps = 1840   # just under 2 epochs (937 steps each)
  c.sample_every = 500
  c.eval.every = 920   # half-way and at the end
  return c
