r"""Class-conditional SNGAN on CIFAR-10 (32x32x3): conditional BatchNorm in G,
the projection discriminator.

Reproduces Miyato & Koyama (2018), "cGANs with Projection Discriminator", on
the SNGAN CIFAR-10 ResNet (experiments/sngan_cifar10.py): every BatchNorm in
G's residual blocks has a per-class gain and bias (the last one stays plain,
as in the authors' code); D's logit is dense(phi(x)) + <embed(y), phi(x)>,
the class embedding spectrally normalised with D's other layers. Labels are
the data's; generated labels are drawn uniformly over the 10 classes. The
SNGAN recipe otherwise: hinge loss, Adam(2e-4, b1=0.0, b2=0.9), 5 D updates
per G update, batch 64, 50,000 G updates, z(128) ~ N(0, I).

Run (from the repository root):

  python -m gan_jax train --config experiments/sngan_projection_cifar10.py \
      --workdir workdirs/sngan_projection_cifar10

Sample grids have one row per class (label 0 = airplane at the top). Score
with --config.eval.every=5000 (add --config.eval.extractor=inception and
--config.eval.inception_weights=PATH for the paper's FID/Inception score).
"""
import os

from gan_jax.config import load_config


def get_config():
  c = load_config(os.path.join(os.path.dirname(__file__), "sngan_cifar10.py"), lock=False)
  c.model.num_classes = 10
  c.model.kwargs.g_cond = "bn"
  c.model.kwargs.d_head = "projection"
  c.num_grid_samples = 100           # 10 classes x 10
  return c
