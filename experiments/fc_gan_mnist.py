r"""Fully connected GAN on MNIST (28x28x1).

Reproduces the classic fully connected MNIST GAN: D 784 -> 512 (LeakyReLU
0.1) -> 1 logit; G 128 -> 1024 -> 2048 -> 784 (ReLU, tanh output); latent
noise uniform in [-1, 1]; D's BCE averaged over the concatenated real+fake
batch (`non_saturating_joint`), G non-saturating; Adam(2e-4, b1=0.5); batch
64; a log line every 100 iterations; the generator exported every 10 epochs
(workdir/generator/epoch_XXXX.msgpack, plus final.msgpack).

Run (from the repository root):

  python -m gan_jax train --config experiments/fc_gan_mnist.py \
      --workdir workdirs/fc_gan_mnist

TFDS 'mnist' needs a download or its four IDX files
(--config.data.idx_dir=FOLDER); `--config.data.name=fashion_mnist` runs it
on Fashion-MNIST offline.
"""
from gan_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "mnist"
  c.model.name = "mlp"
  c.model.image_size, c.model.channels = 28, 1
  c.model.latent_dim = 128
  c.model.latent_dist = "uniform"
  c.model.kwargs.g_hidden = (1024, 2048)
  c.model.kwargs.d_hidden = (512,)
  c.model.kwargs.d_slope = 0.1
  c.loss = "non_saturating_joint"
  c.optim.g_lr = c.optim.d_lr = 2e-4
  c.optim.b1 = 0.5
  c.batch_size = 64
  c.data.on_device = True            # MNIST fits in device memory
  # XLA:CPU runs its Adam updates ~2x slower in fused calls; on a GPU, where a
  # step this small is dispatch-bound, fuse 5-10 (--config.steps_per_call).
  c.steps_per_call = 1
  c.num_epochs = 50
  c.log_every = 100
  c.sample_every = 0
  c.sample_every_epochs = 1
  c.checkpoint_every = 5000
  c.export_generator_every_epochs = 10
  return c
