r"""DCGAN on Fashion-MNIST (28x28x1) — the default gan_jax experiment.

G: z(100) -> Dense 7x7x256 -> BN ReLU -> up 14x14x128 -> BN ReLU -> up 28x28x1
-> tanh; D: conv 64 (k4 s2) LReLU(0.2) -> conv 128 (k4 s2) BN LReLU(0.2) ->
dense 1. Non-saturating BCE loss, Adam(2e-4, b1=0.5) for both, batch 64,
pixels in [-1, 1], DCGAN init N(0, 0.02).

Run (from the repository root):

  python -m gan_jax train --config experiments/dcgan_fashion_mnist.py \
      --workdir workdirs/dcgan_fashion_mnist

Override any value with --config.KEY=VALUE, e.g. --config.num_epochs=1.
"""
import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.data = ml_collections.ConfigDict()
  c.data.name = "fashion_mnist"      # a TFDS name
  c.data.split = "train"
  c.data.data_dir = ""               # TFDS data_dir; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.data.idx_dir = ""                # folder of the 4 IDX .gz files for offline preparation;
                                     # "" = $GAN_JAX_IDX_DIR or Debian's dataset-fashion-mnist
  c.data.pixel_range = (-1.0, 1.0)   # images are scaled to this range
  c.data.shuffle_buffer = 60_000

  c.model = ml_collections.ConfigDict()
  c.model.name = "dcgan28"
  c.model.latent_dim = 100
  c.model.g_features = 256
  c.model.d_features = 64
  c.model.channels = 1
  c.model.upsample = "phase"         # 'phase' (fast exact) or 'transpose' (nn.ConvTranspose)

  c.loss = "non_saturating"
  c.optim = ml_collections.ConfigDict()
  c.optim.g_lr = 2e-4
  c.optim.d_lr = 2e-4
  c.optim.b1 = 0.5
  c.optim.b2 = 0.999

  c.batch_size = 64                  # global, split over devices
  c.num_epochs = 3
  c.num_steps = -1                   # > 0 overrides num_epochs

  c.log_every = 100
  c.sample_every = 500
  c.num_grid_samples = 64
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.progress_bar = True
  return c
