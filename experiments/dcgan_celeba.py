r"""DCGAN for faces: CelebA, centre-cropped to the face, 28x28 (or 64x64).

Reproduces the face-generation DCGAN: images centre-cropped to 108x108 (the
face in CelebA's aligned 178x218 photos) and resized to 28x28, pixels in
[-0.5, 0.5]; D three convs 64/128/256 (k5 s2) with LeakyReLU(0.2), BatchNorm
after the first, sigmoid/BCE head; G Dense 7x7x512 -> transposed convs
256/128 (k5 s2) -> 3 (k5 s1), BatchNorm + LeakyReLU(0.2) between, tanh
(scaled to the pixel range); one-sided label smoothing (real target 0.9);
Adam(2e-4, beta1 0.5); batch 64; a sample grid every 400 batches.

Run (from the repository root), TFDS 'celeb_a' (needs its manual download):

  python -m gan_jax train --config experiments/dcgan_celeba.py \
      --workdir workdirs/dcgan_celeba

Aligned images downloaded by hand (img_align_celeba/*.jpg):

  python -m gan_jax train --config experiments/dcgan_celeba.py \
      --workdir workdirs/dcgan_celeba --config.data.source=folder \
      --config.data.folder=PATH/img_align_celeba

The 64x64 variant: --config.model.image_size=64 --config.data.image_size=64
(G then starts at 4x4x512 and upsamples four times).
"""
from gan_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "celeb_a"
  c.data.crop = 108
  c.data.image_size = 28
  c.data.pixel_range = (-0.5, 0.5)
  c.data.shuffle_buffer = 20_000
  c.model.name = "dcgan_faces"
  c.model.image_size, c.model.channels = 28, 3
  c.model.latent_dim = 100
  c.model.kwargs.g_features = 512
  c.model.kwargs.d_features = 64
  c.loss = "non_saturating"
  c.real_label = 0.9
  c.optim.g_lr = c.optim.d_lr = 2e-4
  c.optim.b1 = 0.5                   # configurable beta1: --config.optim.b1=...
  c.batch_size = 64
  c.num_epochs = 1
  c.sample_every = 400
  c.num_grid_samples = 25
  c.checkpoint_every = 1000
  return c
