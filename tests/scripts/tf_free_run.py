"""Run by test_tf_free.py in a subprocess where `import tensorflow` (and
TFDS) fails: trains a fused on-device run on an in-memory data source,
samples its checkpoint through the CLI, and runs the benchmark's
random-data path; prints the modules it imported as JSON."""
import json
import os
import runpy
import sys

BLOCKED = ("tensorflow", "tensorflow_datasets", "tensorboard")


# As if not installed: `import tensorflow` raises ModuleNotFoundError and
# importlib.util.find_spec("tensorflow") returns None.
for _name in BLOCKED:
  sys.modules[_name] = None
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from gan_jax import cli, data  # noqa: E402
from gan_jax.config import base_config  # noqa: E402


@data.register_source("noise_digits")
def noise_digits(data_config, image_shape):
  return np.random.default_rng(0).integers(0, 256, (96, *image_shape), dtype=np.uint8)


def main(workdir: str) -> None:
  from gan_jax import train
  config = base_config()
  config.data.source = "noise_digits"
  config.data.on_device = True
  config.model.latent_dim = 8
  config.model.kwargs.g_features = 16
  config.model.kwargs.d_features = 8
  config.batch_size, config.num_steps, config.steps_per_call = 16, 4, 2
  config.sample_every, config.checkpoint_every, config.num_grid_samples = 4, 4, 4
  config.progress_bar = False
  config.lock()
  state = train.train_and_evaluate(config, workdir)
  assert int(state.step) == 4
  assert cli.main(["sample", "--workdir", workdir, "--num", "4"]) == 0
  sys.argv = ["bench.py", "dcgan28", "--batch", "8", "--steps-per-call", "2", "--repeats", "1",
              "--config.model.kwargs.g_features=16", "--config.model.kwargs.d_features=8"]
  try:
    runpy.run_path(os.path.join(ROOT, "experiments", "tools", "bench.py"), run_name="__main__")
  except SystemExit as e:
    assert not e.code, e.code
  print(json.dumps(sorted(m for m, mod in sys.modules.items()
                          if mod is not None and m.split(".")[0] in BLOCKED + ("gan_jax",))))


if __name__ == "__main__":
  main(sys.argv[1])
