"""Configs as code: load `get_config()` from a file and apply
`--config.KEY=VALUE` overrides, with clear errors for unknown keys and bad values."""
from __future__ import annotations

import ast
import importlib.util
import json
import os

import ml_collections

from gan_jax.errors import ConfigError, failed_at  # noqa: F401  (re-exported: config.ConfigError)

LATENT_DISTS = ("normal", "uniform")


def common_model_keys() -> set[str]:
  """The model keys every model shares; a model's own arguments are `model.kwargs`."""
  return set(base_config().model.keys())


def load_config(path: str, lock: bool = True) -> ml_collections.ConfigDict:
  """Runs `get_config()` from a Python file, or reads a saved config.json;
  locked (no new keys) unless an experiment file builds on it (`lock=False`)."""
  if not os.path.isfile(path):
    raise ConfigError(f"config file not found: {path}")
  if path.endswith(".json"):
    with open(path) as f:
      try:
        config = ml_collections.ConfigDict(json.load(f))
      except ValueError as e:
        raise ConfigError(f"{path} is not a config.json gan_jax can read: {e}") from e
  else:
    config = _run_get_config(path)
  if lock:
    config.lock()
  return config


def _run_get_config(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of an experiment file; any failure is one ConfigError
  naming the file and line."""
  spec = importlib.util.spec_from_file_location("_gan_jax_config", path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ConfigError(f"{path} defines no get_config()")
    config = module.get_config()
  except ConfigError:
    raise
  except SyntaxError as e:
    raise ConfigError(f"syntax error in {e.filename}, line {e.lineno}: {e.msg}") from e
  except Exception as e:  # noqa: BLE001 - the experiment file failed: say where, in one line
    raise ConfigError(f"{path}: get_config() failed at {failed_at(e)}") from e
  if not isinstance(config, ml_collections.ConfigDict):
    raise ConfigError(f"{path}: get_config() returned a {type(config).__name__}, not an "
                      f"ml_collections.ConfigDict")
  return config


def with_defaults(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the keys it lacks taken from base_config() (a config.json
  saved before a key existed, e.g. the eval section)."""
  merged = base_config()
  def fill(dst, src):
    for k, v in src.items():
      if isinstance(v, ml_collections.ConfigDict) and k in dst:
        fill(dst[k], v)
      else:
        with dst.ignore_type():   # json gives lists where the code has tuples
          dst[k] = v
  fill(merged, config)
  merged.lock()
  return merged


def flat_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  keys = []
  for k, v in config.items():
    if isinstance(v, ml_collections.ConfigDict):
      keys += flat_keys(v, f"{prefix}{k}.")
    else:
      keys.append(f"{prefix}{k}")
  return keys


def _parse(key: str, current, text: str):
  def bad(expected):
    return ConfigError(f"bad value for config key '{key}': {text!r} is not {expected}")
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise bad("a bool (true/false)")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise bad("an int") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise bad("a float") from None
  if isinstance(current, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise bad("a tuple, e.g. (-1.0, 1.0)") from None
    if not isinstance(value, (tuple, list)) or (current and len(value) != len(current)):
      raise bad(f"a tuple of {len(current)} values" if current else "a tuple, e.g. (1.0, 2.0)")
    return type(current)(value)
  if current is None:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  return text


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: dict[str, str]) -> ml_collections.ConfigDict:
  """Sets each dotted KEY to VALUE (a string parsed as the current value's type)."""
  valid = flat_keys(config)
  for key, text in overrides.items():
    if key not in valid:
      raise ConfigError(f"unknown config key '{key}'. Valid keys:\n  " + "\n  ".join(valid))
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
      node = node[p]
    with node.unlocked():
      node[leaf] = _parse(key, node[leaf], text)
  return config


def base_config() -> ml_collections.ConfigDict:
  """Every key the trainer reads, with its default; experiments start from it
  and set what they reproduce, so any key can be overridden on any experiment."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.imports = ()                     # user modules that register components: module
                                     # names on sys.path or .py file paths

  c.data = ml_collections.ConfigDict()
  c.data.source = "tfds"             # 'tfds' (a TFDS name) or 'folder' (an image folder)
  c.data.name = "fashion_mnist"      # TFDS name
  c.data.split = "train"
  c.data.data_dir = ""               # TFDS data_dir; "" = $TFDS_DATA_DIR or ~/tensorflow_datasets
  c.data.idx_dir = ""                # folder of the 4 IDX .gz files for offline preparation;
                                     # "" = $GAN_JAX_IDX_DIR or Debian's dataset-fashion-mnist
  c.data.folder = ""                 # image folder (source 'folder'): searched recursively
  c.data.image_size = 0              # resize to this square size; 0 = keep the dataset's size
  c.data.crop = 0                    # centre crop side before resizing; 0 = none (TFDS)
                                     # or the largest centred square (folder)
  c.data.pixel_range = (-1.0, 1.0)   # images are scaled to this range
  c.data.shuffle_buffer = 60_000
  c.data.on_device = False           # keep the split on the device(s); the step gathers
                                     # its batch by index (datasets that fit in memory)
  c.data.num_examples = 0            # train on the first N examples of data.split only
                                     # (limited-data experiments); 0 = all of it
  c.data.class_names = ()            # the data's class names (conditional models):
                                     # recorded by training from the source

  c.model = ml_collections.ConfigDict()
  c.model.name = "dcgan28"           # a registered model (gan_jax.models.MODELS)
  c.model.image_size = 28
  c.model.channels = 1
  c.model.latent_dim = 100
  c.model.latent_dist = "normal"     # 'normal' N(0, 1) or 'uniform' U(-1, 1)
  c.model.num_classes = 0            # > 0: class-conditional G and D (the data's labels;
                                     # generated labels uniform over the classes)
  c.model.dtype = "float32"          # convs/matmuls in 'float32' or 'bfloat16' (mixed
                                     # precision: fp32 weights, BatchNorm and losses), or
                                     # 'auto': bfloat16 where the hardware multiplies it
                                     # natively (training records the choice)
  c.model.lowering = "auto"          # layers' implementation: 'auto' per backend compiled
                                     # for, 'native' (XLA's convs) or 'cpu' everywhere
  c.model.kwargs = ml_collections.ConfigDict()  # the model's own keyword arguments;
                                     # those not given take the model's defaults

  c.loss = "non_saturating"          # a name in gan_jax.losses.LOSSES
  c.penalty = ml_collections.ConfigDict()  # NAME: weight of each registered penalty
                                     # (gan_jax.penalties); 0 = off, several may be on
  c.d_weight_clip = 0.0              # WGAN weight clipping bound; 0 = off
  c.d_steps = 1                      # D (critic) updates per G update, each on a fresh batch
  c.real_label = 1.0                 # D's target for real data (0.9: one-sided smoothing)
  c.real_label_noise = 0.0           # + noise * U(0, 1) per example (noisy labels)
  c.class_loss_weight = 1.0          # ACGAN head (model.kwargs.d_head): weight of the
                                     # class loss, D's on reals and G's on fakes
  c.augment = ml_collections.ConfigDict()  # DiffAugment (gan_jax.augment) before D, on
  c.augment.policy = ""              # reals and fakes in both updates: 'color,translation,
                                     # cutout' (registered names); "" = off
  c.augment.p = 1.0                  # each augmentation's probability per image (the start
                                     # value when adaptive)
  c.augment.ada_target = 0.0         # > 0: adapt p (ADA) so E[sign(D(real))] -> this
                                     # (0.6 in ADA); 0 = p fixed
  c.augment.ada_images = 500_000     # images for the adaptive p to go from 0 to 1
  c.ema_decay = 0.0                  # EMA of G's params, used for samples; 0 = off
  c.ema_start = 0                    # steps before the EMA starts averaging
  c.divergence = ml_collections.ConfigDict()  # when training stops as diverged (besides
  c.divergence.max_abs_loss = 1e6    # any NaN/Inf): a loss beyond this; 0 = no bound

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adam"              # 'adam' or 'rmsprop'
  c.optim.g_lr = 2e-4
  c.optim.d_lr = 2e-4                # TTUR: a different D learning rate
  c.optim.b1 = 0.5                   # adam
  c.optim.b2 = 0.999                 # adam
  c.optim.decay = 0.99               # rmsprop (PyTorch's alpha)
  c.optim.eps = 1e-8

  c.batch_size = 64                  # global, split over devices
  c.num_epochs = 3
  c.num_steps = -1                   # > 0 overrides num_epochs; -1 = unset
  c.steps_per_call = 1               # training steps fused into one compiled call (lax.scan)

  c.log_every = 100
  c.sample_every = 500               # steps; 0 = off
  c.sample_every_epochs = 0          # epochs; 0 = off
  c.num_grid_samples = 64
  c.checkpoint_every = 1000
  c.keep_checkpoints = 3
  c.export_generator_every_epochs = 0  # G params to generator/; 0 = at the end only
  c.progress_bar = True

  c.sweep = ml_collections.ConfigDict()  # K GANs in one program (gan_jax.sweep)
  c.sweep.seeds = 0                  # K members with seeds seed .. seed+K-1; 0 = off
  c.sweep.param = ""                 # a learning rate or loss weight (gan_jax.sweep.SWEEPABLE)
  c.sweep.param_values = ()          # its values, one member each (x seeds)

  c.eval = ml_collections.ConfigDict()   # scores of G (gan_jax.evaluation)
  c.eval.every = 0                   # steps between evaluations in training (and at the end);
                                     # 0 = off
  c.eval.num_samples = 10_000        # generated images per evaluation
  c.eval.num_real = 10_000           # real images: the first N of eval.split; 0 = all of it
  c.eval.split = "test"              # the real reference split
  c.eval.extractor = "domain"        # 'domain' (classifier trained here) or 'inception' (FID)
  c.eval.metrics = "fd,kid,is,pr"    # comma-separated subset of fd, kid, is, pr
  c.eval.best_metric = "fd"          # keeps checkpoints_best/ by this score; "" = none
  c.eval.batch_size = 500
  c.eval.inception_weights = ""      # converted FID Inception weights (.msgpack)
  c.eval.cache_dir = ""              # "" = $GAN_JAX_CACHE or ~/.cache/gan_jax
  c.eval.allow_few_samples = False   # FD with fewer samples than feature dimensions
  c.eval.kid_subsets = 100
  c.eval.kid_subset_size = 1000
  c.eval.is_splits = 10
  c.eval.pr_k = 3                    # k of the k-NN manifolds of precision/recall
  c.eval.seed = 0                    # generated latents and KID subsets
  c.eval.classifier_seed = 0         # the domain classifier's training seed
  return c
