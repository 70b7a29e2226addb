r"""SNGAN on Fashion-MNIST, padded to 32x32x1: the spectrally normalised
ResNet, with widths reduced to train on a CPU.

The SNGAN recipe of Miyato et al. (2018) (experiments/sngan_cifar10.py) on
Fashion-MNIST at its own 28x28, padded to the ResNet's 32x32 (model
'sngan_resnet' at model.image_size 28: G draws 32x32 and keeps the centre
28x28, D pads its input with the black background), so samples are scored
by the same 28x28 domain classifier as the DCGAN's: G z(128) ~ N(0, I) ->
Dense 4x4xCh -> 3 residual up-blocks -> BN ReLU -> conv3x3 1 -> tanh; D an
optimised block and 3 residual blocks (32 -> 16 -> 8 -> 8 -> 8), global sum
pooling, dense 1, spectral normalisation on every D layer.
Hinge loss; Adam(2e-4, b1=0.0, b2=0.9); 5 D updates per G update, each on a
fresh batch of 64. The widths are reduced so a step runs in about a second on
a 2-core CPU (G Ch 16, D Ch 16); the paper's (G 256, D 128) are the model's
defaults, which experiments/sngan_cifar10.py uses:
--config.model.kwargs.g_channels=256 --config.model.kwargs.d_channels=128.

Run (from the repository root):

  python -m gan_jax train --config experiments/sngan_fashion_mnist.py \
      --workdir workdirs/sngan_fashion_mnist

Every 937 steps (5 epochs: an epoch is 60000 / (5 * 64) = 187 G updates) and
at the end G is scored against the test split with the domain
classifier (FD, KID, IS, precision/recall on 10k samples: metrics.jsonl,
eval/, the best state by FD in checkpoints_best/).
"""
from gan_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "fashion_mnist"
  c.data.on_device = True
  c.model.name = "sngan_resnet"
  c.model.image_size, c.model.channels = 28, 1   # padded to 32x32 inside the model
  c.model.latent_dim = 128
  c.model.num_classes = 0
  c.model.kwargs.g_channels = 16     # reduced for CPU (paper: 256)
  c.model.kwargs.d_channels = 16     # reduced for CPU (paper: 128)
  c.loss = "hinge"
  c.d_steps = 5
  c.optim.g_lr = c.optim.d_lr = 2e-4
  c.optim.b1, c.optim.b2 = 0.0, 0.9
  c.batch_size = 64
  c.steps_per_call = 1               # 5 D updates per step already fill a call
  c.num_epochs = 10                  # 1870 G updates
  c.sample_every = 200
  c.checkpoint_every = 500
  c.eval.every = 937                 # every 5 epochs
  return c
