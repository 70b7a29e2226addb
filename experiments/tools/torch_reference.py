"""PyTorch reference implementations of the four seed GANs, for benchmarking.

The same layer shapes, parameter counts, losses and optimiser settings as the
gan_jax seed architectures of bench.py (the experiments fc_gan_mnist,
dcgan_fashion_mnist with TensorFlow's 256-wide DCGAN G, dcgan_color64 and
lsgan_cifar10), written the ordinary PyTorch way (eager nn.Modules,
torch.optim.Adam, nn.BCEWithLogitsLoss / nn.MSELoss), so that their training
throughput can be compared with gan_jax's side by side. Images are NCHW.

torch is an optional dependency of the benchmark only (gan_jax never imports
it): pip install torch --index-url https://download.pytorch.org/whl/cpu

`time_steps` runs on the CPU or a CUDA GPU, eager or `torch.compile`d, in
float32 or under bfloat16 autocast (torch's mixed precision: fp32 weights).
"""
import contextlib
import statistics
import time

import torch
from torch import nn

from bench import SEEDS, seed_config  # name -> gan_jax experiment, its config

ARCHITECTURES = tuple(SEEDS)


def experiment_config(name):
  """The gan_jax seed's config: latents, loss, optimiser and label noise
  are read from it, so both sides train the same setting."""
  return seed_config(name)


def _up(cin, cout, k, s, bias=False):
  """ConvTranspose2d whose output is exactly s x its input (JAX's 'SAME')."""
  p = (k - 1) // 2
  return nn.ConvTranspose2d(cin, cout, k, s, p, output_padding=s + 2 * p - k, bias=bias)


def build(name):
  """(G, D) for `name`: G maps (B, latent) to (B, C, H, W) in [-1, 1], D maps
  images to (B,) logits."""
  lrelu = nn.LeakyReLU
  if name == "fc_gan":
    g = nn.Sequential(
        nn.Linear(128, 1024), nn.ReLU(), nn.Linear(1024, 2048), nn.ReLU(),
        nn.Linear(2048, 784), nn.Tanh(), nn.Unflatten(1, (1, 28, 28)))
    d = nn.Sequential(nn.Flatten(), nn.Linear(784, 512), lrelu(0.1), nn.Linear(512, 1))
  elif name == "dcgan28":
    g = nn.Sequential(
        nn.Linear(100, 256 * 7 * 7, bias=False), nn.Unflatten(1, (256, 7, 7)),
        nn.BatchNorm2d(256), nn.ReLU(),
        _up(256, 128, 4, 2), nn.BatchNorm2d(128), nn.ReLU(),
        _up(128, 1, 4, 2, bias=True), nn.Tanh())
    d = nn.Sequential(
        nn.Conv2d(1, 64, 4, 2, 1), lrelu(0.2),
        nn.Conv2d(64, 128, 4, 2, 1, bias=False), nn.BatchNorm2d(128), lrelu(0.2),
        nn.Flatten(), nn.Linear(128 * 7 * 7, 1))
  elif name == "dcgan64":
    g = nn.Sequential(
        nn.Linear(100, 512 * 8 * 8), nn.Unflatten(1, (512, 8, 8)),
        _up(512, 256, 4, 2, bias=True), nn.ReLU(),
        _up(256, 128, 4, 2, bias=True), nn.ReLU(),
        _up(128, 64, 4, 2, bias=True), nn.ReLU(),
        nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(64, 3, 4), nn.Tanh())  # k4 s1 'SAME'
    d = nn.Sequential(
        nn.Conv2d(3, 64, 5, 2, 2, bias=False), nn.BatchNorm2d(64), lrelu(0.2),
        nn.Conv2d(64, 128, 5, 2, 2, bias=False), nn.BatchNorm2d(128), lrelu(0.2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(128 * 16 * 16, 1))
  elif name == "lsgan32":
    g = nn.Sequential(
        nn.Linear(100, 256 * 8 * 8, bias=False), nn.Unflatten(1, (256, 8, 8)),
        nn.BatchNorm2d(256), lrelu(0.3),
        _up(256, 128, 5, 1), nn.BatchNorm2d(128), lrelu(0.3),
        _up(128, 64, 5, 2), nn.BatchNorm2d(64), lrelu(0.3),
        _up(64, 3, 5, 2), nn.Tanh())
    d = nn.Sequential(
        nn.Conv2d(3, 64, 5, 2, 2), lrelu(0.3), nn.Dropout(0.3),
        nn.Conv2d(64, 128, 5, 2, 2), lrelu(0.3), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(128 * 8 * 8, 1))
  else:
    raise ValueError(f"unknown architecture {name!r}; valid: {ARCHITECTURES}")
  d.append(nn.Flatten(0))  # (B, 1) -> (B,)
  if name != "fc_gan":  # DCGAN init, as gan_jax's conv models
    g.apply(_dcgan_init)
    d.apply(_dcgan_init)
  return g, d


def _dcgan_init(m):
  if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
    nn.init.normal_(m.weight, 0.0, 0.02)
    if m.bias is not None:
      nn.init.zeros_(m.bias)
  elif isinstance(m, nn.BatchNorm2d):
    nn.init.normal_(m.weight, 1.0, 0.02)
    nn.init.zeros_(m.bias)


def _count(module):
  return sum(p.numel() for p in module.parameters())


def param_counts(name):
  g, d = build(name)
  return _count(g), _count(d)


class TorchGAN:
  """G, D, their Adam optimisers and the loss of one architecture; `step`
  is one training step as in PyTorch's DCGAN example (and gan_jax's
  `train_step`): one G forward, a D update on real and fake.detach(), then a
  G update through D(fake) with the updated D."""

  def __init__(self, name, batch=64, device="cpu", compile=False, bf16=False):
    cfg = experiment_config(name)
    self.device = torch.device(device)
    self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16
                     else contextlib.nullcontext())
    mc, opt = cfg.model, cfg.optim
    self.shape = (mc.channels, mc.image_size, mc.image_size)
    self.latent_dim, self.latent_dist, self.loss = mc.latent_dim, mc.latent_dist, cfg.loss
    self.real_noise = cfg.real_label_noise
    betas = (opt.b1, opt.b2)
    g, d = build(name)
    self.g, self.d = g.to(self.device), d.to(self.device)
    self.g_opt = torch.optim.Adam(self.g.parameters(), lr=opt.g_lr, betas=betas)
    self.d_opt = torch.optim.Adam(self.d.parameters(), lr=opt.d_lr, betas=betas)
    self.crit = nn.MSELoss() if self.loss == "least_squares" else nn.BCEWithLogitsLoss()
    self.scale = 0.5 if self.loss == "least_squares" else 1.0
    if compile:  # the modules, after the optimisers took their parameters; static
      # shapes (D sees 2B rows in the joint loss and B otherwise). Every
      # compiled module shares one wrapper whose recompile limit (8) counts
      # the variants of all models so far: without the reset, the third
      # model of a process quietly ran eager.
      torch._dynamo.reset()
      self.g = torch.compile(self.g, dynamic=False)
      self.d = torch.compile(self.d, dynamic=False)

  def latents(self, n):
    if self.latent_dist == "uniform":
      return torch.rand(n, self.latent_dim, device=self.device) * 2 - 1
    return torch.randn(n, self.latent_dim, device=self.device)

  def step(self, real):
    with self.autocast:
      return self._step(real)

  def _step(self, real):
    b = real.shape[0]
    ones = torch.ones(b, device=self.device)
    zeros = torch.zeros(b, device=self.device)
    fake = self.g(self.latents(b))
    # D update on real and detached fake.
    self.d_opt.zero_grad(set_to_none=True)
    if self.loss == "non_saturating_joint":  # one BCE over the 2B logits
      logits = self.d(torch.cat([real, fake.detach()]))
      d_loss = self.crit(logits, torch.cat([ones, zeros]))
    else:
      real_target = (ones + self.real_noise * torch.rand(b, device=self.device)
                     if self.real_noise else ones)
      d_loss = self.scale * (self.crit(self.d(real), real_target)
                             + self.crit(self.d(fake.detach()), zeros))
    d_loss.backward()
    self.d_opt.step()
    # G update through the updated D.
    self.g_opt.zero_grad(set_to_none=True)
    g_loss = self.scale * self.crit(self.d(fake), ones)
    g_loss.backward()
    self.g_opt.step()
    return d_loss.detach(), g_loss.detach()


def prepare(name, batch=64, warmup=3, steps=5, device="cpu", compile=False, bf16=False):
  """(info, run) for `name`'s PyTorch training: `run()` trains `steps` steps
  on uniform [-1, 1] 'real' data and returns the seconds per step, after
  `warmup` steps (their time: info's `compile_s`, the first compiles), with
  torch's default thread count."""
  if torch.device(device).type == "cuda":
    # TF32 for fp32 matmuls and convolutions, as XLA:GPU's default precision uses.
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
  gan = TorchGAN(name, batch, device, compile, bf16)
  real = torch.rand(batch, *gan.shape, device=gan.device) * 2 - 1
  sync = torch.cuda.synchronize if gan.device.type == "cuda" else (lambda: None)

  def run():
    t = time.perf_counter()
    for _ in range(steps):
      gan.step(real)
    sync()
    return (time.perf_counter() - t) / steps
  t = time.perf_counter()
  for _ in range(warmup):
    gan.step(real)
  sync()
  info = {"name": name, "config": SEEDS[name], "batch": batch, "device": str(gan.device),
          "compiled": compile, "autocast_bf16": bf16, "compile_s": time.perf_counter() - t,
          "threads": torch.get_num_threads(), "g_params": _count(gan.g), "d_params": _count(gan.d)}
  return info, run


def summary(info, seconds) -> dict:
  """`info` with the median, fastest and slowest of the per-step `seconds`."""
  ms = 1e3 * statistics.median(seconds)
  return {**info, "ms_per_step": ms, "ms_min": 1e3 * min(seconds),
          "ms_max": 1e3 * max(seconds), "images_per_sec": info["batch"] / (ms / 1e3)}


def time_steps(name, batch=64, warmup=3, repeats=5, steps=5, device="cpu", compile=False,
               bf16=False):
  """Median ms/step over `repeats` timings of `steps` training steps each
  (see `prepare`); also the fastest and slowest repeat and the models' sizes."""
  info, run = prepare(name, batch, warmup, steps, device, compile, bf16)
  return summary(info, [run() for _ in range(repeats)])


if __name__ == "__main__":
  for arch in ARCHITECTURES:
    print(time_steps(arch))
