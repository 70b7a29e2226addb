"""A folder of image files (JPEG, PNG, WebP) as a tf.data dataset.

Files are found recursively in a fixed (sorted) order, decoded once at
construction into an in-memory cache, centre-cropped to a square and resized.
Unreadable files are skipped and reported in one warning instead of failing
an epoch halfway through.
"""
from __future__ import annotations

import numbers
import os
from typing import TYPE_CHECKING

import numpy as np
from absl import logging

from gan_jax.data import _tf
from gan_jax.errors import DataError

if TYPE_CHECKING:
  import tensorflow as tf

# TensorFlow is imported on first use (`_tf.tf()`, which keeps it off the
# GPUs), not with this module.

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")

# Skipped files named in the warning; the rest are only counted.
_NAMED_SKIPS = 5


def crop_and_resize(image: tf.Tensor, size: int, crop: int = 0) -> tf.Tensor:
  """A uint8 (H, W, C) image -> its centre square, resized to (size, size, C).

  The square has side `crop` (or less where the image is smaller), or
  min(H, W) where crop is 0, so non-square images are cropped, not distorted.
  An image already at the size comes back unchanged. Works in graph mode.
  """
  tf = _tf.tf()
  image = tf.convert_to_tensor(image)
  shape = tf.shape(image)
  height, width = shape[0], shape[1]
  side = tf.minimum(height, width)
  if crop > 0:
    side = tf.minimum(side, crop)
  top, left = (height - side) // 2, (width - side) // 2
  square = image[top:top + side, left:left + side]

  def resized():
    # Antialiased bilinear: averages when shrinking, interpolates when growing.
    out = tf.image.resize(square, [size, size], method="bilinear", antialias=True)
    return tf.cast(tf.clip_by_value(tf.round(out), 0.0, 255.0), tf.uint8)

  out = tf.cond(tf.equal(side, size), lambda: tf.cast(square, tf.uint8), resized)
  out.set_shape([size, size, image.shape[-1]])
  return out


def _decode(contents: tf.Tensor, channels: int) -> tf.Tensor:
  """Encoded bytes -> uint8 (H, W, channels); dispatches on content, not name."""
  tf = _tf.tf()
  if channels == 3:
    return tf.io.decode_image(contents, channels=3, expand_animations=False)
  # WebP has no grayscale mode: decode_image(channels=1) rejects it, so
  # decode WebP as RGB and convert.
  is_webp = tf.strings.regex_full_match(tf.strings.substr(contents, 0, 12), "(?s)RIFF.{4}WEBP")

  def webp():
    rgb = tf.io.decode_image(contents, channels=3, expand_animations=False)
    return tf.image.rgb_to_grayscale(rgb)

  def other():
    return tf.io.decode_image(contents, channels=1, expand_animations=False)

  image = tf.cond(is_webp, webp, other)
  image.set_shape([None, None, 1])
  return image


def _list_files(folder: str) -> tuple[list[str], list[str]]:
  """(image candidates, other files) under `folder`, sorted; hidden ones left out."""
  images, others = [], []
  for root, dirs, files in os.walk(folder):
    dirs[:] = [d for d in dirs if not d.startswith(".")]
    for name in files:
      if name.startswith("."):
        continue
      path = os.path.join(root, name)
      if os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
        images.append(path)
      else:
        others.append(path)
  return sorted(images), sorted(others)


def class_folders(folder: str) -> tuple[str, ...]:
  """The class names of a labelled image folder: its first-level
  subfolders, sorted (label i is the i-th); DataError where there are none."""
  if not os.path.isdir(folder):
    raise DataError(f"image folder {folder} does not exist or is not a directory")
  names = tuple(sorted(d for d in os.listdir(folder)
                       if not d.startswith(".") and os.path.isdir(os.path.join(folder, d))))
  if not names:
    raise DataError(f"image folder {folder} has no class subfolders; a class-conditional "
                    f"model (model.num_classes > 0) reads the classes from them "
                    f"(FOLDER/CLASS/image.png)")
  return names


def _labels_of(folder: str, paths: list[str]) -> np.ndarray:
  """Each file's class: the index of its first-level subfolder."""
  index = {name: i for i, name in enumerate(class_folders(folder))}
  outside = [p for p in paths if os.path.dirname(os.path.relpath(p, folder)) == ""]
  if outside:
    raise DataError(f"image folder {folder}: {len(outside)} image(s) are not in a class "
                    f"subfolder (e.g. {os.path.basename(outside[0])}); a labelled folder "
                    f"holds FOLDER/CLASS/image files only")
  return np.asarray([index[os.path.relpath(p, folder).split(os.sep)[0]] for p in paths],
                    np.int32)


def load_image_folder(folder: str, size: int, channels: int, crop: int = 0,
                      labels: bool = False) -> tuple[tf.data.Dataset, int]:
  """The readable images under `folder` and their count.

  The dataset yields uint8 (size, size, channels) images in sorted file order
  (the caller shuffles); with `labels`, (image, class) pairs, the class the
  index of the image's first-level subfolder (`class_folders`). All files are decoded once here; every iteration,
  this one included, reads them from memory, so later epochs neither re-decode
  nor see files that changed or vanished since.
  """
  tf = _tf.tf()
  if not isinstance(size, numbers.Integral) or size <= 0:
    raise DataError(f"image size must be a positive integer, got {size!r}")
  if channels not in (1, 3):
    raise DataError(f"image channels must be 1 or 3, got {channels!r}")
  if not isinstance(crop, numbers.Integral) or crop < 0:
    raise DataError(f"crop must be a non-negative integer (0: no crop), got {crop!r}")
  if not os.path.exists(folder):
    raise DataError(f"image folder {folder} does not exist")
  if not os.path.isdir(folder):
    raise DataError(f"image folder {folder} is not a directory")

  paths, not_images = _list_files(folder)
  supported = " ".join(IMAGE_EXTENSIONS)

  def load(index, path):
    image = _decode(tf.io.read_file(path), channels)
    return index, crop_and_resize(image, size, crop)

  # Errors (unreadable, corrupt or empty files) drop the element, not the
  # epoch; the index says which files made it.
  pairs = tf.data.Dataset.from_tensor_slices(tf.constant(paths, tf.string)).enumerate()
  pairs = pairs.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  pairs = pairs.ignore_errors().cache()
  # This full pass fills the memory cache; the returned dataset shares it.
  read = np.zeros(len(paths), dtype=bool)
  for indices in pairs.map(lambda index, _: index).batch(4096).as_numpy_iterator():
    read[indices] = True
  num_images = int(read.sum())
  undecodable = [p for p, ok in zip(paths, read) if not ok]

  if num_images == 0:
    total = len(paths) + len(not_images)
    raise DataError(f"no readable images in {folder} ({total} files: "
                    f"{len(undecodable)} undecodable, {len(not_images)} not images; "
                    f"supported: {supported})")
  if undecodable or not_images:
    skipped = undecodable + not_images
    named = ", ".join(os.path.relpath(p, folder) for p in skipped[:_NAMED_SKIPS])
    more = f" and {len(skipped) - _NAMED_SKIPS} more" if len(skipped) > _NAMED_SKIPS else ""
    logging.warning("image folder %s: read %d images, skipped %d undecodable files and "
                    "%d not images (supported: %s): %s%s", folder, num_images,
                    len(undecodable), len(not_images), supported, named, more)

  if labels:
    classes = tf.constant(_labels_of(folder, paths))
    return pairs.map(lambda index, image: (image, tf.gather(classes, index))), num_images
  images = pairs.map(lambda _, image: image)
  return images, num_images
