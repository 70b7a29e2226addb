import atexit
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Many tests compile the same small programs (in this process and in the CLI
# and pytest subprocesses they start, which inherit the environment): one JAX
# compilation cache for the session compiles each once. A new folder each
# session, so every run compiles from nothing, as on a fresh clone; a cache
# folder the caller sets is used as it is, and gets every program too. Set
# before any test imports jax.
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="gan_jax_tests_jax_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  if "jax" in sys.modules:   # imported by a plugin: its config has read the environment
    sys.modules["jax"].config.update("jax_compilation_cache_dir", _cache)
    sys.modules["jax"].config.update(
        "jax_persistent_cache_min_compile_time_secs",
        float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))

DEFAULT_EXPERIMENT = os.path.join(ROOT, "experiments", "dcgan_fashion_mnist.py")


def small_config(**overrides):
  """The default experiment, shrunk so a step compiles and runs in seconds."""
  from gan_jax import configure
  cfg = configure.load(DEFAULT_EXPERIMENT)   # completed as the CLI completes it
  with cfg.unlocked():
    cfg.model.kwargs.g_features = 32
    cfg.model.kwargs.d_features = 16
    cfg.model.latent_dim = 16
    # The equality tests' tolerances (8 devices vs 1, fused vs single steps)
    # hold at the DCGAN paper's lr; Adam amplifies last-bit differences in
    # proportion to lr, so the experiment's tuned lr must not move them.
    cfg.optim.g_lr = cfg.optim.d_lr = 2e-4
    cfg.batch_size = 16
    cfg.progress_bar = False
    cfg.log_every = 1
    cfg.sample_every = 2
    cfg.checkpoint_every = 2
    cfg.num_grid_samples = 16
    cfg.eval.every = 0   # tests that score G turn it on
    cfg.num_steps = -1   # num_epochs (3) decides, unless a test sets num_steps
    for key, value in overrides.items():
      node = cfg
      *parents, leaf = key.split(".")
      for p in parents:
        node = node[p]
      node[leaf] = value
  return cfg


def make_idx_data(sizes: dict, seed: int = 0) -> dict:
  """{split: (uint8 images (n, 28, 28), uint8 labels (n,))} of random MNIST-style data."""
  import numpy as np
  rng = np.random.default_rng(seed)
  return {split: (rng.integers(0, 256, (n, 28, 28), dtype=np.uint8),
                  rng.integers(0, 10, (n,), dtype=np.uint8))
          for split, n in sizes.items()}


def write_idx_folder(folder, data: dict, suffix: str = ".gz"):
  """Writes `data` as the four standard IDX files of an MNIST-style folder."""
  from gan_jax.data import idx
  folder.mkdir(parents=True, exist_ok=True)
  for split, (images, labels) in data.items():
    image_name, label_name = idx.IDX_FILES[split]
    idx.write_idx(folder / f"{image_name}{suffix}", images)
    idx.write_idx(folder / f"{label_name}{suffix}", labels)
  return folder


@pytest.fixture
def small_cfg():
  return small_config()


def hide_local_idx_files(monkeypatch):
  """Mocked TFDS stands in for the dataset and its download: hide any local IDX
  folder (such as Debian's) and skip the source-reachability check, so data
  preparation takes TFDS's own (mocked) download route."""
  from gan_jax.data import idx, sources
  monkeypatch.delenv(idx.ENV_VAR, raising=False)
  for name in idx.DEBIAN_IDX_DIRS:
    monkeypatch.setitem(idx.DEBIAN_IDX_DIRS, name, ())
  monkeypatch.setattr(sources, "_check_reachable", lambda url: None)


@pytest.fixture
def no_local_idx_files(monkeypatch):
  hide_local_idx_files(monkeypatch)


def write_image_folder(folder, n: int, seed: int = 0, bad: int = 0):
  """`n` random RGB photos of assorted sizes and formats in nested folders,
  plus `bad` corrupt files."""
  import numpy as np
  from PIL import Image
  rng = np.random.default_rng(seed)
  for i in range(n):
    sub = folder / f"part{i % 3}"
    sub.mkdir(parents=True, exist_ok=True)
    h, w = rng.integers(40, 120, 2)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
    image.save(sub / f"img{i}.{('jpg', 'png', 'webp')[i % 3]}")
  for i in range(bad):
    (folder / f"broken{i}.jpg").write_bytes(b"not a jpeg")
  return folder


def step_setup(cfg):
  """(components, mesh, initial state, jitted one-step function) of `cfg`."""
  from gan_jax import components, mesh as mesh_lib, step
  c = components.build_components(cfg)
  mesh = mesh_lib.make_mesh()
  return c, mesh, components.init_state(cfg, c, mesh), step.make_train_step(c, mesh)


def one_step(cfg, seed=0, start_step=0):
  """(state before, state after, metrics) of one training step of `cfg` on
  random images, from a fresh state whose step counter is `start_step`."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from gan_jax import data
  c, mesh, state, step = step_setup(cfg)
  if start_step:
    state = state.replace(step=jax.device_put(jnp.asarray(start_step, jnp.int32),
                                              state.step.sharding))
  before = jax.device_get(state)
  batch = np.random.default_rng(seed).uniform(
      -1, 1, (cfg.d_steps * cfg.batch_size, *c.image_shape)).astype(np.float32)
  state, metrics = step(state, data.shard_batch(batch, mesh))
  return before, jax.device_get(state), jax.device_get(metrics)


def on_devices(n: int):
  """Runs the decorated test on `n` devices: in this process when it has
  them, else in a pytest subprocess with `n` fake CPU devices (a shard_map
  test on one device cannot tell a summed cotangent from an unsummed one)."""
  def decorate(test):
    @functools.wraps(test)
    def run(*args, **kwargs):
      import jax
      if len(jax.devices()) >= n:
        return test(*args, **kwargs)
      assert not os.environ.get("GAN_JAX_TEST_CHILD"), f"the subprocess has fewer than {n} devices"
      env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(n), GAN_JAX_TEST_CHILD="1",
                 XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} "
                           f"--xla_force_host_platform_device_count={n}".strip())
      node = os.environ["PYTEST_CURRENT_TEST"].rsplit(" ", 1)[0]   # with its parameters
      proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
                            env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
      assert proc.returncode == 0 and re.search(r"(?<!\d)1 passed", proc.stdout), (
          proc.stdout[-3000:] + proc.stderr[-3000:])
    return run
  return decorate
