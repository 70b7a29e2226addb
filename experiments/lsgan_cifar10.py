r"""Least-squares GAN at 32x32x3 on CIFAR-10.

Reproduces: G Dense 8x8x256 (no bias) BN LeakyReLU -> transposed conv 128
(k5 s1) -> 64 (k5 s2) -> 3 (k5 s2, tanh), BN + LeakyReLU between, no biases
(TensorFlow's DCGAN-tutorial layers; LeakyReLU slope 0.3, Keras' default);
D conv 64 (k5 s2) LeakyReLU dropout 0.3 -> conv 128 (k5 s2) LeakyReLU dropout
0.3 -> dense 1 (linear); least-squares loss (a=0, b=c=1); Adam(2e-4, 0.5);
batch 64; TFDS 'cifar10'.

Run (from the repository root):

  python -m gan_jax train --config experiments/lsgan_cifar10.py \
      --workdir workdirs/lsgan_cifar10

Any folder of colour images works too: --config.data.source=folder
--config.data.folder=PATH --config.data.image_size=32.
"""
from gan_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "cifar10"
  c.data.shuffle_buffer = 50_000
  c.model.name = "lsgan32"
  c.model.image_size, c.model.channels = 32, 3
  c.model.latent_dim = 100
  c.model.kwargs.g_features = 256
  c.model.kwargs.d_features = 64
  c.model.kwargs.d_norm = "none"
  c.model.kwargs.d_dropout = 0.3
  c.loss = "least_squares"
  c.optim.g_lr = c.optim.d_lr = 2e-4
  c.optim.b1 = 0.5
  c.batch_size = 64
  c.data.on_device = True            # CIFAR-10 (150 MB as uint8) fits in device memory
  c.steps_per_call = 5
  c.num_epochs = 25
  c.sample_every = 1000
  c.checkpoint_every = 2000
  return c
