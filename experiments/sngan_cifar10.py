r"""SNGAN on CIFAR-10 (32x32x3): the ResNet with spectral normalisation.

Reproduces Miyato et al. (2018), "Spectral Normalization for Generative
Adversarial Networks", the unconditional CIFAR-10 ResNet: G z(128) ~ N(0, I)
-> Dense 4x4x256 -> 3 residual up-blocks (BN ReLU, nearest x2, conv3x3,
256 channels) -> BN ReLU -> conv3x3 3 -> tanh; D an optimised first block
and 3 residual blocks (128 channels, 32 -> 16 -> 8 -> 8 -> 8), ReLU, global
sum pooling, dense 1, spectral normalisation on every layer (model
'sngan_resnet', gan_jax/models/resnet.py, whose defaults are the paper's
sizes). Hinge loss; Adam(2e-4, b1=0.0, b2=0.9) for both; 5 D updates per G
update, each on a fresh batch of 64; 50,000 G updates. (The authors' code,
pfnet-research/sngan_projection, also decays the learning rates linearly to
0 over the run and draws 128 fakes per G update; here the rates stay constant
and G's batch is 64 too.)

Run (from the repository root):

  python -m gan_jax train --config experiments/sngan_cifar10.py \
      --workdir workdirs/sngan_cifar10

The paper reports Inception score and FID: score with the FID Inception
network (see the README) by adding --config.eval.every=5000
--config.eval.extractor=inception --config.eval.inception_weights=PATH.
The class-conditional version (projection discriminator) is
experiments/sngan_projection_cifar10.py.
"""
from gan_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "cifar10"
  c.data.shuffle_buffer = 50_000
  c.data.on_device = True            # CIFAR-10 (150 MB as uint8) fits in device memory
  c.model.name = "sngan_resnet"
  c.model.image_size, c.model.channels = 32, 3
  c.model.latent_dim = 128
  c.model.num_classes = 0
  c.model.kwargs.g_channels = 256
  c.model.kwargs.d_channels = 128
  c.model.kwargs.d_spectral_norm = True
  c.loss = "hinge"
  c.d_steps = 5
  c.optim.g_lr = c.optim.d_lr = 2e-4
  c.optim.b1, c.optim.b2 = 0.0, 0.9
  c.batch_size = 64
  c.steps_per_call = 1               # 5 D updates per step already fill a call
  c.num_steps = 50_000               # G updates (250,000 D updates)
  c.sample_every = 1000
  c.checkpoint_every = 2000
  return c
