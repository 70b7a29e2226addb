r"""WGAN with weight clipping on Fashion-MNIST (28x28x1).

Reproduces Arjovsky et al. (2017), Algorithm 1, on DCGAN-28 at
TensorFlow's tutorial width (G 256 wide; the default experiment halves it)
with BatchNorm in the critic, as in the paper's DCGAN critic:
Wasserstein loss; critic weights clipped to [-0.01, 0.01] after every
update; 5 critic updates per G update, each on a fresh batch, inside one
compiled step; RMSProp (lr 5e-5) for both; batch 64.

Run (from the repository root):

  python -m gan_jax train --config experiments/wgan_fashion_mnist.py \
      --workdir workdirs/wgan_fashion_mnist
"""
import os

from gan_jax.config import load_config


def get_config():
  # The default DCGAN-28 experiment with its G at 256 wide, and the WGAN
  # objective and optimiser.
  c = load_config(os.path.join(os.path.dirname(__file__), "dcgan_fashion_mnist.py"),
                  lock=False)
  c.model.kwargs.g_features = 256    # TensorFlow's DCGAN-tutorial G, as these runs were made
  c.num_steps = -1                   # num_epochs below decides
  c.loss = "wasserstein"
  c.d_weight_clip = 0.01
  c.d_steps = 5
  c.steps_per_call = 1               # 5 critic updates per step already fill a call
  c.optim.name = "rmsprop"
  c.optim.g_lr = c.optim.d_lr = 5e-5
  c.num_epochs = 10                  # an epoch = 60000 / (5 * 64) = 187 G updates
  c.sample_every = 200
  c.eval.every = 937                 # about every 5 epochs, and at the end
  c.checkpoint_every = 500
  return c
