"""Prepare the real TFDS `mnist` / `fashion_mnist` datasets offline.

TFDS's MNIST builders download four gzipped IDX files and read the extracted
files in `_generate_examples`. Without a network we build the same dataset
from the four standard IDX files in a local folder (Debian's
`dataset-fashion-mnist` package ships them in
/usr/share/datasets/fashion-mnist):

  builder = prepare_from_idx("fashion_mnist", folder, data_dir)
  ds = tfds.load("fashion_mnist", split="train", data_dir=data_dir)

Every file is validated (magic number, dims, length, labels) before anything
is written, and every problem raises one `IDXError` that names the file.

IDX format (http://yann.lecun.com/exdb/mnist/): a big-endian magic number
`0x0000TTNN` (TT: data type code, 0x08 for uint8; NN: number of dims), then NN
big-endian uint32 dims, then the data in C order.
"""
from __future__ import annotations

import functools
import gzip
import math
import os
import shutil
import struct
import tempfile
import zlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gan_jax.data import _tf
from gan_jax.errors import UserError

if TYPE_CHECKING:
  import tensorflow_datasets as tfds

# tensorflow_datasets (and TensorFlow with it) is imported only inside the
# functions that need it (via gan_jax.data._tf): reading IDX files should not
# cost a TF import.

PathLike = str | os.PathLike

IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

SUPPORTED_DATASETS = ("mnist", "fashion_mnist")

# Where Debian packages install the IDX files. Debian (bookworm) ships only
# Fashion-MNIST (`dataset-fashion-mnist`); there is no MNIST data package.
DEBIAN_IDX_DIRS: dict[str, tuple[Path, ...]] = {
    "fashion_mnist": (Path("/usr/share/datasets/fashion-mnist"),),
    "mnist": (),
}

ENV_VAR = "GAN_JAX_IDX_DIR"

_IMAGE_SHAPE = (28, 28)
_NUM_CLASSES = 10
_UINT8 = 0x08
_GZIP_MAGIC = b"\x1f\x8b"
# IDX type codes, to say what an unsupported file holds.
_TYPE_NAMES = {
    0x08: "uint8", 0x09: "int8", 0x0B: "int16", 0x0C: "int32",
    0x0D: "float32", 0x0E: "float64",
}


class IDXError(UserError, ValueError):
  """A missing, corrupt or inconsistent IDX file; the message names it."""


def _expected_magic(expect_ndim: int | None) -> str:
  """Human-readable form of the magic number we accept."""
  if expect_ndim is None:
    return "0x000008NN (uint8, NN dims)"
  what = {1: "uint8 labels, 1 dim", 3: "uint8 images, 3 dims"}.get(
      expect_ndim, f"uint8, {expect_ndim} dims")
  return f"0x{(_UINT8 << 8) | expect_ndim:08x} ({what})"


def _read_bytes(path: Path) -> bytes:
  """The file's (decompressed) content; IDXError for missing/corrupt files."""
  if not path.is_file():
    if path.exists():
      raise IDXError(f"IDX file is not a regular file: {path}")
    raise IDXError(f"IDX file not found: {path}")
  try:
    data = path.read_bytes()
  except OSError as e:
    raise IDXError(f"cannot read IDX file {path}: {e}") from None
  if path.suffix == ".gz":
    try:
      data = gzip.decompress(data)
    # BadGzipFile (an OSError): not gzip; EOFError: cut short; zlib.error:
    # damaged deflate stream or CRC.
    except (OSError, EOFError, zlib.error) as e:
      raise IDXError(f"corrupt gzip stream in {path}: {e}") from None
  return data


def read_idx(path: PathLike, expect_ndim: int | None = None) -> np.ndarray:
  """Reads one uint8 IDX file, gzipped (name ends in `.gz`) or raw.

  Args:
    path: the file.
    expect_ndim: if given, the number of dims the file must have (3 for
      images, 1 for labels); a different magic number is an error.

  Returns:
    A writable uint8 array of the shape the header gives.

  Raises:
    IDXError: the file is missing, not valid gzip, has a wrong magic number,
      holds a type other than uint8, or holds fewer or more bytes than its
      header says.
  """
  path = Path(path)
  data = _read_bytes(path)
  if len(data) < 4:
    raise IDXError(
        f"truncated: {path} holds {len(data)} bytes, too few for the 4-byte "
        f"IDX magic number")
  magic = struct.unpack(">I", data[:4])[0]
  type_code, ndim = data[2], data[3]
  problem = None
  if data[0] or data[1]:
    problem = "the first two bytes must be zero"
    if data[:2] == _GZIP_MAGIC:
      problem += " (this looks gzip-compressed: name the file *.gz)"
  elif type_code != _UINT8:
    kind = _TYPE_NAMES.get(type_code, "unknown")
    problem = (f"data type code 0x{type_code:02x} ({kind}) is not supported, "
               f"only 0x08 (uint8)")
  elif expect_ndim is not None and ndim != expect_ndim:
    problem = f"{ndim} dims, expected {expect_ndim}"
  if problem:
    raise IDXError(
        f"wrong magic number 0x{magic:08x} in {path}: expected "
        f"{_expected_magic(expect_ndim)}; {problem}")

  header_len = 4 + 4 * ndim
  if len(data) < header_len:
    raise IDXError(
        f"truncated: {path} says {ndim} dims, which need a {header_len}-byte "
        f"header, but the file holds only {len(data)} bytes")
  shape = struct.unpack(f">{ndim}I", data[4:header_len])
  want = math.prod(shape)
  have = len(data) - header_len
  if have != want:
    if shape:
      says = f"{shape[0]} items of shape {tuple(shape[1:])} ({want} bytes)"
    else:
      says = f"a scalar ({want} byte)"
    if have < want:
      raise IDXError(
          f"truncated: header says {says}, file holds only {have} bytes of "
          f"data: {path}")
    raise IDXError(
        f"{have - want} unexpected trailing bytes: header says {says}, file "
        f"holds {have} bytes of data: {path}")
  # bytearray so the caller gets a writable array, not a view of `bytes`.
  return np.frombuffer(bytearray(data[header_len:]), np.uint8).reshape(shape)


def write_idx(path: PathLike, array: Any) -> Path:
  """Writes a uint8 array as an IDX file, gzipped if `path` ends in `.gz`.

  Returns the path. Raises TypeError for a non-uint8 array (no silent cast).
  """
  path = Path(path)
  array = np.asarray(array)
  if array.dtype != np.uint8:
    raise TypeError(f"write_idx writes uint8 arrays only, got {array.dtype}")
  if array.ndim > 255:
    raise ValueError(f"IDX holds at most 255 dims, got {array.ndim}")
  header = bytes((0, 0, _UINT8, array.ndim))
  header += struct.pack(f">{array.ndim}I", *array.shape)
  payload = header + np.ascontiguousarray(array).tobytes()
  if path.suffix == ".gz":
    # mtime=0: identical arrays give identical files.
    with open(path, "wb") as raw, gzip.GzipFile(
        filename="", mode="wb", fileobj=raw, mtime=0) as f:
      f.write(payload)
  else:
    path.write_bytes(payload)
  return path


def find_idx_files(folder: PathLike) -> dict[str, tuple[Path, Path]]:
  """Maps each split to its (images, labels) files in `folder`.

  Each file may be `NAME.gz` or uncompressed `NAME`; `.gz` wins if both are
  there. Raises one IDXError listing every missing file.
  """
  folder = Path(folder)
  if not folder.is_dir():
    names = ", ".join(n for pair in IDX_FILES.values() for n in pair)
    raise IDXError(
        f"IDX folder not found: {folder} (it should hold {names}, each "
        f"optionally gzipped as NAME.gz)")
  found: dict[str, tuple[Path, Path]] = {}
  missing = []
  for split, names in IDX_FILES.items():
    paths = []
    for name in names:
      for candidate in (folder / f"{name}.gz", folder / name):
        if candidate.is_file():
          paths.append(candidate)
          break
      else:
        missing.append(name)
    if len(paths) == 2:
      found[split] = (paths[0], paths[1])
  if missing:
    raise IDXError(
        f"missing IDX files in {folder}: "
        + ", ".join(f"{n}[.gz]" for n in missing))
  return found


def load_idx_folder(
    folder: PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads and validates the four MNIST-style IDX files in `folder`.

  Returns:
    split -> (images (N, 28, 28) uint8, labels (N,) uint8 in 0..9).

  Raises:
    IDXError: a file is missing or bad, images are not 28x28, a split is
      empty, a label is >= 10, or label and image counts differ.
  """
  out = {}
  for split, (image_path, label_path) in find_idx_files(folder).items():
    images = read_idx(image_path, expect_ndim=3)
    if images.shape[1:] != _IMAGE_SHAPE:
      raise IDXError(
          f"{image_path} holds images of shape {images.shape[1:]}, expected "
          f"{_IMAGE_SHAPE}")
    if not len(images):
      # TFDS refuses to write an empty split; say so here instead.
      raise IDXError(f"{image_path} holds no images")
    labels = read_idx(label_path, expect_ndim=1)
    if len(labels) != len(images):
      raise IDXError(
          f"label/image count mismatch: {label_path} holds {len(labels)} "
          f"labels but {image_path} holds {len(images)} images")
    bad = np.flatnonzero(labels >= _NUM_CLASSES)
    if bad.size:
      raise IDXError(
          f"{label_path}: {bad.size} labels out of range 0..9, e.g. "
          f"{int(labels[bad[0]])} at index {int(bad[0])}")
    out[split] = (images, labels)
  return out


def default_idx_dir(name: str) -> Path | None:
  """The IDX folder to use for dataset `name`, or None if there is none.

  `$GAN_JAX_IDX_DIR` wins if set, even if it does not exist (so the later
  error names it); note that it is used for whichever dataset is asked for.
  Otherwise a Debian package location (only Fashion-MNIST is packaged).
  """
  _check_name(name)
  env = os.environ.get(ENV_VAR)
  if env:
    return Path(env).expanduser()
  for folder in DEBIAN_IDX_DIRS[name]:
    if folder.is_dir():
      return folder
  return None


def _check_name(name: str) -> None:
  if name not in SUPPORTED_DATASETS:
    raise ValueError(
        f"unsupported dataset {name!r}: supported are "
        + ", ".join(SUPPORTED_DATASETS))


@functools.cache
def _offline_builder_cls(name: str) -> type[tfds.core.DatasetBuilder]:
  """The registered TFDS builder for `name`, reading local IDX files.

  Cached: TFDS records every builder subclass it sees in a module-level list,
  so one class per dataset rather than one per call.
  """
  tfds = _tf.tfds()

  base = tfds.builder_cls(name)

  class _Offline(base, skip_registration=True):
    """Same dataset; splits come from local raw IDX files, not downloads."""
    # Without `name` in the class dict TFDS names it after the class.
    name = base.name

    # {split: (num_examples, images path, labels path)}, set per instance.
    idx_splits: dict[str, tuple[int, str, str]] = {}

    def _split_generators(self, dl_manager):
      del dl_manager  # nothing to download
      return [
          tfds.core.SplitGenerator(
              name=split,
              gen_kwargs=dict(num_examples=n, data_path=data_path,
                              label_path=label_path),
          )
          for split, (n, data_path, label_path) in self.idx_splits.items()
      ]

  _Offline.__qualname__ = f"_Offline[{name}]"
  # dataset_info.json records the builder's module: write the upstream one,
  # as a download would. (Set after creation: TFDS indexes new builder
  # classes by module, and upstream's module must not list this one.)
  _Offline.__module__ = base.__module__
  return _Offline


def prepare_from_idx(name: str, folder: PathLike, data_dir: PathLike | None,
                     builder: tfds.core.DatasetBuilder | None = None
                     ) -> tfds.core.DatasetBuilder:
  """Prepares the real TFDS dataset `name` in `data_dir` from IDX files.

  Does nothing if it is already prepared there. Otherwise validates the four
  files in `folder` (see `load_idx_folder`) before writing anything, then
  runs the registered TFDS builder's own example generation on uncompressed
  copies; nothing touches the network.

  Args:
    name: "mnist" or "fashion_mnist".
    folder: folder with the four IDX files (`IDX_FILES`, raw or `.gz`).
    data_dir: TFDS data dir; None for TFDS's default.
    builder: `tfds.builder(name, data_dir=data_dir)`, already found
      unprepared, if the caller has it.

  Returns:
    `tfds.builder(name, data_dir=data_dir)`, ready for `as_dataset`.

  Raises:
    ValueError: unsupported `name`.
    IDXError: a bad or missing IDX file (nothing is written then).
    IDXError: `data_dir` holds a leftover, unprepared folder for this
      dataset version, which TFDS will not overwrite.
  """
  tfds = _tf.tfds()

  _check_name(name)
  data_dir = None if data_dir is None else os.fspath(data_dir)
  if builder is None:
    builder = tfds.builder(name, data_dir=data_dir)
    if builder.is_prepared():
      return builder
  # (A caller that passes its builder found it unprepared: TFDS warns at each
  # `is_prepared` over a leftover folder.)
  if os.path.isdir(builder.data_dir):
    # Another process may have finished preparing since the caller looked.
    # dataset_info.json first: TFDS warns at each builder made over a leftover.
    if os.path.exists(os.path.join(builder.data_dir, "dataset_info.json")):
      fresh = _prepared(name, data_dir)
      if fresh is not None:
        return fresh
    raise _leftover(builder)
  arrays = load_idx_folder(folder)

  offline = _offline_builder_cls(name)(data_dir=data_dir)
  downloads = Path(offline.data_dir_root) / "downloads"
  made_downloads = not downloads.exists()
  downloads.mkdir(parents=True, exist_ok=True)
  # Unique, so concurrent preparations do not share files.
  tmp = Path(tempfile.mkdtemp(prefix=f"idx_{name}_", dir=downloads))
  try:
    splits = {}
    for split, (images, labels) in arrays.items():
      image_name, label_name = IDX_FILES[split]
      # The upstream generator reads raw bytes after a fixed-size header:
      # rewrite the validated arrays uncompressed (same bytes as gunzip).
      image_path = write_idx(tmp / image_name, images)
      label_path = write_idx(tmp / label_name, labels)
      splits[split] = (len(images), os.fspath(image_path),
                       os.fspath(label_path))
    offline.idx_splits = splits
    try:
      offline.download_and_prepare(
          # The download manager only makes its (empty) folders, here in tmp.
          download_dir=tmp,
          download_config=tfds.download.DownloadConfig(try_download_gcs=False),
      )
    except FileExistsError:
      # Another process (runs started together, hosts on a shared disk)
      # finished first: TFDS's final rename found its folder. Theirs is the
      # same dataset; anything else is still an error.
      if _prepared(name, data_dir) is None:
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    if made_downloads:
      try:
        downloads.rmdir()  # only if empty
      except OSError:
        pass
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise _leftover(builder)
  return builder


def _prepared(name: str, data_dir):
  """A new builder for `name`, if another process has prepared it; else None."""
  builder = _tf.tfds().builder(name, data_dir=data_dir)
  return builder if builder.is_prepared() else None


def _leftover(builder) -> IDXError:
  # TFDS "reuses" any existing variant folder, even an empty one.
  return IDXError(f"{builder.data_dir} exists but holds no prepared dataset (an interrupted "
                  f"preparation?); delete it and run again")
