"""The one place gan_jax imports TensorFlow (and TFDS, which imports it).

Imported lazily, on first use: `import gan_jax.data` and in-memory sources
must work where TensorFlow is not installed (e.g. a JAX+CUDA machine).
"""
from __future__ import annotations

from absl import logging

from gan_jax.errors import DataError

_TF = None
_HINT = ("the tf.data sources ('tfds', 'folder') need TensorFlow and TensorFlow Datasets "
         "(pip install tensorflow-cpu tensorflow-datasets); an in-memory source "
         "(a registered numpy one) does not")


def tf():
  """The `tensorflow` module, kept off the GPUs (they are JAX's)."""
  global _TF
  if _TF is None:
    try:
      import tensorflow  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise DataError(f"{e}: {_HINT}") from e
    try:
      tensorflow.config.set_visible_devices([], "GPU")
    except RuntimeError as e:  # something else started TF first
      logging.warning("TensorFlow was initialised before gan_jax could hide the GPUs "
                      "from it; it may take GPU memory from JAX (%s)", e)
    _TF = tensorflow
  return _TF


def tfds():
  """The `tensorflow_datasets` module (TensorFlow set up first)."""
  tf()
  try:
    import tensorflow_datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(f"{e}: {_HINT}") from e
  return tensorflow_datasets
