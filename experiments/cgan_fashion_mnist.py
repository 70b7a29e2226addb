r"""Class-conditional DCGAN on Fashion-MNIST (28x28x1): DCGAN-28 (TensorFlow's
tutorial width, g_features=256) with class-conditional BatchNorm in G and a
projection discriminator.

G: z(100) -> Dense 7x7x256 -> conditional BN ReLU -> up 14x14x128 ->
conditional BN ReLU -> up 28x28x1 -> tanh; each BatchNorm's gain and bias
are per class, in BigGAN's form: 1 + W_g e(y) and W_b e(y) from a learnt
50-wide class embedding e. D: conv 64 (k4 s2) LReLU ->
conv 128 (k4 s2) BN LReLU -> logit = dense(phi(x)) + <embed(y), phi(x)>, the
projection discriminator (Miyato & Koyama 2018). Labels are the data's;
generated labels are drawn uniformly over the 10 classes each step. The
DCGAN recipe otherwise: non-saturating loss, Adam(2e-4, b1=0.5), batch 64.

Run (from the repository root):

  python -m gan_jax train --config experiments/cgan_fashion_mnist.py \
      --workdir workdirs/cgan_fashion_mnist

Sample grids have one row per class (label 0 = T-shirt/top at the top);
`gan-jax sample --workdir workdirs/cgan_fashion_mnist --labels all` writes
one, `--label 3` samples class 3 only.

Each evaluation scores, besides FD/KID/IS/PR, the conditional-sample
accuracy (the domain classifier's accuracy on samples against the labels
they were drawn for) and the intra-class FD (FD per class, averaged); see
experiments/results/README.md for what a 15-minute run reaches.
"""
from gan_jax.config import base_config


def get_config():
  c = base_config()
  c.data.name = "fashion_mnist"
  c.model.name = "dcgan28"
  c.model.image_size = 28
  c.model.channels = 1
  c.model.latent_dim = 100
  c.model.num_classes = 10
  c.model.kwargs.g_features = 256
  c.model.kwargs.d_features = 64
  # BigGAN's shared-embedding gains: a plain table per class ('bn') starts
  # at 1 and moves by Adam's step size, too slowly for a run this short;
  # 'concat' (an embedding beside z) is the other option
  # (experiments/results/README.md compares them).
  c.model.kwargs.g_cond = "bn_shared"
  c.model.kwargs.g_embed_dim = 50
  c.model.kwargs.d_head = "projection"
  c.loss = "non_saturating"
  c.optim.g_lr = c.optim.d_lr = 2e-4
  c.optim.b1, c.optim.b2 = 0.5, 0.999
  c.batch_size = 64
  c.data.on_device = True   # images and labels on the device, gathered by index
  c.steps_per_call = 5
  c.num_epochs = 4
  c.sample_every = 500
  c.num_grid_samples = 100   # 10 classes x 10
  c.eval.every = 937   # once per epoch (60000 // 64 steps)
  c.eval.metrics = "fd,kid,is,pr,class_acc,intra_fd"
  return c
