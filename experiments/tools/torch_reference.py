"""PyTorch reference implementations of the four seed GANs, for benchmarking.

The same layer shapes, parameter counts, losses and optimiser settings as the
gan_jax seed architectures of bench.py (the experiments fc_gan_mnist,
dcgan_fashion_mnist with TensorFlow's 256-wide DCGAN G, dcgan_color64 and
lsgan_cifar10), written the ordinary PyTorch way (eager nn.Modules,
torch.optim.Adam, nn.BCEWithLogitsLoss / nn.MSELoss), so that their training
throughput can be compared with gan_jax's side by side. Given a config, they
take its widths (`FOLLOWED`), latent size and Adam settings and refuse a
change to anything else they implement or lack (`FIXED`). Images are NCHW.

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


# The model kwargs a reference follows from the config it is given (besides
# latent_dim and latent_dist, the loss's real_label_noise and Adam's settings);
# any other kwarg, and each setting of FIXED, must stay the seed's: these
# references are not a port of every gan_jax option.
FOLLOWED = {"fc_gan": ("g_hidden", "d_hidden"), "dcgan28": ("g_features", "d_features"),
            "dcgan64": ("g_features", "d_features"), "lsgan32": ("g_features", "d_features")}
FIXED = ("model.name", "model.image_size", "model.channels", "model.num_classes", "loss",
         "penalty", "d_weight_clip", "d_steps", "real_label", "augment", "ema_decay",
         "optim.name")


def _setting(cfg, dotted):
  value = cfg
  for key in dotted.split("."):
    value = value[key]
  return value.to_dict() if hasattr(value, "to_dict") else value


def _model_settings(name, cfg):
  """{kwarg: value} of `cfg`'s model and its latent_dim, after checking that
  every other kwarg and each FIXED setting is the seed's (one ValueError
  naming each that is not)."""
  if name not in FOLLOWED:
    raise ValueError(f"unknown architecture {name!r}; valid: {ARCHITECTURES}")
  seed = experiment_config(name)
  cfg = cfg if cfg is not None else seed
  got, want = cfg.model.kwargs.to_dict(), seed.model.kwargs.to_dict()
  changed = {f"model.kwargs.{k}": (got.get(k), want.get(k)) for k in set(got) | set(want)
             if k not in FOLLOWED[name] and got.get(k) != want.get(k)}
  for k in FIXED:
    if (value := _setting(cfg, k)) != (seed_value := _setting(seed, k)):
      changed[k] = (value, seed_value)
  if changed:
    raise ValueError(
        f"the PyTorch {name} reference follows only the model's latent size and "
        f"{', '.join(FOLLOWED[name])}, and Adam's settings; these differ from the seed's: "
        + ", ".join(f"{k}={v!r} (seed: {w!r})" for k, (v, w) in sorted(changed.items())))
  return {**got, "latent_dim": cfg.model.latent_dim}


def build(name, cfg=None):
  """(G, D) for `name`, with the widths and latent size of `cfg` (default:
  the seed's config): G maps (B, latent) to (B, C, H, W) in [-1, 1], D maps
  images to (B,) logits."""
  m = _model_settings(name, cfg)
  lrelu, z = nn.LeakyReLU, m["latent_dim"]
  if name == "fc_gan":
    g_sizes, d_sizes = (z, *m["g_hidden"]), (784, *m["d_hidden"])
    g = nn.Sequential(*[layer for a, b in zip(g_sizes, g_sizes[1:])
                        for layer in (nn.Linear(a, b), nn.ReLU())],
                      nn.Linear(g_sizes[-1], 784), nn.Tanh(), nn.Unflatten(1, (1, 28, 28)))
    d = nn.Sequential(nn.Flatten(), *[layer for a, b in zip(d_sizes, d_sizes[1:])
                                      for layer in (nn.Linear(a, b), lrelu(m["d_slope"]))],
                      nn.Linear(d_sizes[-1], 1))
  elif name == "dcgan28":
    f, fd = m["g_features"], m["d_features"]
    g = nn.Sequential(
        nn.Linear(z, f * 7 * 7, bias=False), nn.Unflatten(1, (f, 7, 7)),
        nn.BatchNorm2d(f), nn.ReLU(),
        _up(f, f // 2, 4, 2), nn.BatchNorm2d(f // 2), nn.ReLU(),
        _up(f // 2, 1, 4, 2, bias=True), nn.Tanh())
    d = nn.Sequential(
        nn.Conv2d(1, fd, 4, 2, 1), lrelu(0.2),
        nn.Conv2d(fd, 2 * fd, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * fd), lrelu(0.2),
        nn.Flatten(), nn.Linear(2 * fd * 7 * 7, 1))
  elif name == "dcgan64":
    f, fd = m["g_features"], m["d_features"]
    g = nn.Sequential(
        nn.Linear(z, f * 8 * 8), nn.Unflatten(1, (f, 8, 8)),
        _up(f, f // 2, 4, 2, bias=True), nn.ReLU(),
        _up(f // 2, f // 4, 4, 2, bias=True), nn.ReLU(),
        _up(f // 4, f // 8, 4, 2, bias=True), nn.ReLU(),
        nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(f // 8, 3, 4), nn.Tanh())  # k4 s1 'SAME'
    d = nn.Sequential(
        nn.Conv2d(3, fd, 5, 2, 2, bias=False), nn.BatchNorm2d(fd), lrelu(0.2),
        nn.Conv2d(fd, 2 * fd, 5, 2, 2, bias=False), nn.BatchNorm2d(2 * fd), lrelu(0.2),
        nn.Flatten(), nn.Dropout(0.3), nn.Linear(2 * fd * 16 * 16, 1))
  else:  # lsgan32
    f, fd = m["g_features"], m["d_features"]
    g = nn.Sequential(
        nn.Linear(z, f * 8 * 8, bias=False), nn.Unflatten(1, (f, 8, 8)),
        nn.BatchNorm2d(f), lrelu(0.3),
        _up(f, f // 2, 5, 1), nn.BatchNorm2d(f // 2), lrelu(0.3),
        _up(f // 2, f // 4, 5, 2), nn.BatchNorm2d(f // 4), lrelu(0.3),
        _up(f // 4, 3, 5, 2), nn.Tanh())
    d = nn.Sequential(
        nn.Conv2d(3, fd, 5, 2, 2), lrelu(0.3), nn.Dropout(0.3),
        nn.Conv2d(fd, 2 * fd, 5, 2, 2), lrelu(0.3), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(2 * fd * 8 * 8, 1))
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

  def __init__(self, name, batch=64, device="cpu", compile=False, bf16=False, cfg=None):
    cfg = cfg if cfg is not None else experiment_config(name)
    self.device = torch.device(device)
    self.autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if bf16
                     else contextlib.nullcontext())
    mc, opt = cfg.model, cfg.optim
    self.shape = (mc.channels, mc.image_size, mc.image_size)
    self.latent_dim, self.latent_dist, self.loss = mc.latent_dim, mc.latent_dist, cfg.loss
    self.real_noise = cfg.real_label_noise
    betas = (opt.b1, opt.b2)
    g, d = build(name, cfg)
    self.g, self.d = g.to(self.device), d.to(self.device)
    self.g_opt = torch.optim.Adam(self.g.parameters(), lr=opt.g_lr, betas=betas, eps=opt.eps)
    self.d_opt = torch.optim.Adam(self.d.parameters(), lr=opt.d_lr, betas=betas, eps=opt.eps)
    self.crit = nn.MSELoss() if self.loss == "least_squares" else nn.BCEWithLogitsLoss()
    self.scale = 0.5 if self.loss == "least_squares" else 1.0
    if compile:  # the modules, after the optimisers took their parameters; static
      # shapes (D sees 2B rows in the joint loss and B otherwise). Every
      # compiled module shares one wrapper whose recompile limit (8) counts
      # the variants of all models so far: without the reset, the later
      # models of a process ran eager (or failed).
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


def prepare(name, batch=64, warmup=3, steps=5, device="cpu", compile=False, bf16=False,
            cfg=None):
  """(info, run) for `name`'s PyTorch training: `run()` trains `steps` steps
  on uniform [-1, 1] 'real' data and returns the seconds per step, after
  `warmup` steps (their time: info's `compile_s`, the first compiles), with
  torch's default thread count."""
  if torch.device(device).type == "cuda":
    # TF32 for fp32 matmuls and convolutions, as XLA:GPU's default precision uses.
    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
  gan = TorchGAN(name, batch, device, compile, bf16, cfg)
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
