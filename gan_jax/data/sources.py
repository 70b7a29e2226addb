"""The built-in tf.data sources: a TFDS split ('tfds') and an image folder
('folder'). Both return `(tf.data.Dataset of uint8 images, size or None)`.

A TFDS source is optionally centre-cropped and resized (e.g. CelebA); an
image folder is described in `gan_jax.data.image_folder`. Where a dataset is
not prepared yet, MNIST-style datasets are prepared offline from local IDX
files when a folder is known (`data.idx_dir`, $GAN_JAX_IDX_DIR, or Debian's
dataset package); otherwise TFDS downloads them as usual.

TensorFlow and TFDS are imported inside the functions (`_tf`), so importing
this module (which `import gan_jax.data` does, to register them) is TF-free.
"""
from __future__ import annotations

import os
import socket
import urllib.parse
from typing import TYPE_CHECKING, Any

from absl import logging

from gan_jax.data import _tf, idx, image_folder, register_source
from gan_jax.errors import DataError

if TYPE_CHECKING:
  import tensorflow as tf
  import tensorflow_datasets as tfds


def resolve_data_dir(data_dir: str) -> str:
  return data_dir or os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def prepared_builder(data_config: Any) -> tfds.core.DatasetBuilder:
  """The TFDS builder for `data_config.name`, prepared (offline where possible)."""
  tfds = _tf.tfds()
  data_dir = resolve_data_dir(data_config.data_dir)
  builder = tfds.builder(data_config.name, data_dir=data_dir)
  if builder.is_prepared():
    return builder
  offline = data_config.name in idx.SUPPORTED_DATASETS
  folder = offline and (data_config.idx_dir or idx.default_idx_dir(data_config.name))
  if folder:
    logging.info("preparing %s in %s from IDX files in %s", data_config.name, data_dir, folder)
    return idx.prepare_from_idx(data_config.name, folder, data_dir, builder)
  try:
    if offline:  # fail in seconds, not after minutes of TFDS retries
      _check_reachable(type(builder).URL)
    builder.download_and_prepare()
  except Exception as e:  # no network, or the source moved
    hint = ""
    if offline:
      hint = ("\nOffline: put the four IDX files (train-images-idx3-ubyte.gz, ...) in a folder "
              "and pass --config.data.idx_dir=FOLDER or set GAN_JAX_IDX_DIR; on Debian, "
              "`apt-get install dataset-fashion-mnist` provides Fashion-MNIST.")
    raise DataError(f"could not download and prepare TFDS dataset "
                    f"'{data_config.name}' in {data_dir}: {e}{hint}") from e
  return builder


def _check_reachable(url: str, timeout: float = 5.0) -> None:
  parsed = urllib.parse.urlparse(url)
  port = parsed.port or (443 if parsed.scheme == "https" else 80)
  try:
    socket.create_connection((parsed.hostname, port), timeout=timeout).close()
  except OSError as e:
    raise ConnectionError(f"{parsed.hostname}:{port} is not reachable ({e})") from e


def _split_size(builder, split: str) -> int | None:
  """Examples in `split` as TFDS recorded them; None where nothing is recorded
  (e.g. under tfds.testing.mock_data)."""
  splits = builder.info.splits
  if not splits:
    return None
  try:
    return splits[split].num_examples
  except (KeyError, ValueError) as e:
    raise DataError(f"dataset '{builder.name}' has no split '{split}'; "
                    f"splits: {sorted(splits)}") from e


def _label_feature(builder, data_config: Any):
  features = builder.info.features
  feature = features["label"] if "label" in features.keys() else None
  if feature is None or not hasattr(feature, "num_classes"):
    raise DataError(f"dataset '{data_config.name}' has no class-label feature 'label' "
                    f"(features: {sorted(builder.info.features.keys())}), but the model is "
                    f"class-conditional (model.num_classes > 0)")
  return feature


@register_source("tfds")
def tfds_images(data_config: Any, image_shape,
                labels: bool = False) -> tuple[tf.data.Dataset, int | None]:
  """uint8 images of a TFDS split (and the split's size where TFDS records
  one); with `labels`, (image, label) pairs from its 'label' feature."""
  tf = _tf.tf()
  builder = prepared_builder(data_config)
  if labels:
    _label_feature(builder, data_config)
  shape = tuple(builder.info.features["image"].shape)
  size = _split_size(builder, data_config.split)
  # No TFDS auto-cache: this source caches (below), or TrainData caches its cut.
  ds = builder.as_dataset(split=data_config.split, shuffle_files=False,
                          read_config=_tf.tfds().ReadConfig(try_autocache=False))
  ds = ds.map((lambda ex: (ex["image"], tf.cast(ex["label"], tf.int32))) if labels else
              (lambda ex: ex["image"]), num_parallel_calls=tf.data.AUTOTUNE)
  resize = bool(data_config.image_size or data_config.crop)
  if resize:
    side = data_config.image_size or image_shape[0]
    fit = lambda x: image_folder.crop_and_resize(x, side, data_config.crop)
    ds = ds.map((lambda x, y: (fit(x), y)) if labels else fit,
                num_parallel_calls=tf.data.AUTOTUNE)
    shape = (side, side, shape[-1])
  if shape != tuple(image_shape):
    how = (f"cropped/resized to {shape} (data.image_size={data_config.image_size}, "
           f"data.crop={data_config.crop})" if resize else f"of shape {shape}")
    raise DataError(f"dataset '{data_config.name}' has images {how}, but the model "
                    f"takes {tuple(image_shape)} (model.image_size, model.channels)")
  # With data.num_examples, TrainData caches the cut instead: a cache read
  # only partly is dropped (with a warning) and refilled every epoch.
  return (ds if data_config.get("num_examples", 0) else ds.cache()), size


@register_source("folder")
def folder_images(data_config: Any, image_shape,
                  labels: bool = False) -> tuple[tf.data.Dataset, int]:
  """uint8 images of an image folder, resized to data.image_size; with
  `labels`, (image, class) pairs, the classes its first-level subfolders."""
  if not data_config.folder:
    raise DataError("data.source='folder' needs data.folder=PATH")
  side = data_config.image_size or image_shape[0]
  if (side, side, image_shape[2]) != tuple(image_shape):
    raise DataError(f"images from {data_config.folder} are resized to {side}x{side} "
                    f"(data.image_size), but the model takes {image_shape[0]}x{image_shape[1]} "
                    f"(model.image_size)")
  return image_folder.load_image_folder(data_config.folder, side, image_shape[2],
                                        crop=data_config.crop, labels=labels)


def class_names(data_config: Any) -> tuple[str, ...] | None:
  """The names of the data's classes, in label order, where the source
  names them: a TFDS 'label' feature's names, an image folder's class
  subfolders; None for other sources."""
  if data_config.source == "tfds":
    return tuple(_label_feature(prepared_builder(data_config), data_config).names)
  if data_config.source == "folder":
    return image_folder.class_folders(data_config.folder)
  return None
