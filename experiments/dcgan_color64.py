r"""DCGAN for 64x64 colour photos from an image folder (the clothing-photo tutorial).

Reproduces: an image folder of arbitrary-size RGB photos (JPEG/PNG/WebP,
searched recursively), centre square resized to 64x64, batch 32; G Dense
8x8x512 -> transposed convs 256/128/64 (k4 s2, ReLU) -> conv 3 (k4, tanh);
D conv 64 (k5 s2) BN LeakyReLU(0.2) -> conv 128 (k5 s2) BN LeakyReLU(0.2) ->
flatten -> dropout 0.3 -> dense 1; non-saturating BCE with noisy one-sided
real labels 1 + 0.05*U(0, 1); TTUR Adam, D lr 1e-4, G lr 3e-4, beta1 0.5;
latent 100; a 4x4 sample grid every epoch; 50 epochs; the generator exported
at the end (workdir/generator/final.msgpack).

Run (from the repository root):

  python -m gan_jax train --config experiments/dcgan_color64.py \
      --workdir workdirs/dcgan_color64 --config.data.folder=PATH/TO/PHOTOS

Mode-collapse study (README): the same run with --config.model.latent_dim=10
and with --config.model.latent_dim=128, each in its own workdir.
"""
from gan_jax.config import base_config


def get_config():
  c = base_config()
  c.data.source = "folder"
  c.data.folder = ""                 # required: --config.data.folder=PATH
  c.data.image_size = 64
  c.data.shuffle_buffer = 10_000
  c.model.name = "dcgan64"
  c.model.image_size, c.model.channels = 64, 3
  c.model.latent_dim = 100
  c.model.kwargs.g_features = 512
  c.model.kwargs.d_features = 64
  c.model.kwargs.g_norm = "none"     # the tutorial's G has no BatchNorm
  c.model.kwargs.d_dropout = 0.3
  c.loss = "non_saturating"
  c.real_label = 1.0
  c.real_label_noise = 0.05
  c.optim.g_lr = 3e-4
  c.optim.d_lr = 1e-4
  c.optim.b1 = 0.5
  c.batch_size = 32
  c.num_epochs = 50
  c.sample_every = 0
  c.sample_every_epochs = 1
  c.num_grid_samples = 16
  c.checkpoint_every = 2000
  return c
