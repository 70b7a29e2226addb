"""Tests for gan_jax.data.idx: IDX validation and offline TFDS preparation."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from gan_jax.data import idx
from conftest import make_idx_data, write_idx_folder

tfds = pytest.importorskip("tensorflow_datasets")

SIZES = {"train": 12, "test": 5}
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


def _make_data(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  return make_idx_data(SIZES, seed)


def _pairs(images: np.ndarray, labels: np.ndarray) -> list[tuple[bytes, int]]:
  # TFDS shuffles examples by a hash of their key when writing (the real
  # datasets are stored that way too), so compare as multisets.
  return sorted((im.tobytes(), int(lb)) for im, lb in zip(images, labels))


def _assert_dataset_equals(name: str, data_dir: Path, data) -> None:
  builder = tfds.builder(name, data_dir=data_dir)
  assert builder.is_prepared()
  for split, (images, labels) in data.items():
    assert builder.info.splits[split].num_examples == len(images)
    got = tfds.as_numpy(tfds.load(
        name, split=split, data_dir=data_dir, batch_size=-1, download=False))
    assert got["image"].shape == (len(images), 28, 28, 1)
    assert got["image"].dtype == np.uint8
    assert _pairs(got["image"][..., 0], got["label"]) == _pairs(images, labels)


# --- read_idx / write_idx ---------------------------------------------------


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("shape", [(7,), (3, 28, 28), (2, 3, 4, 5)])
def test_read_write_round_trip(tmp_path, suffix, shape):
  array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
  path = idx.write_idx(tmp_path / f"a-idx{suffix}", array)
  raw = path.read_bytes()
  if suffix:
    assert raw[:2] == b"\x1f\x8b"
    raw = gzip.decompress(raw)
  assert raw[:4] == bytes((0, 0, 8, len(shape)))
  back = idx.read_idx(path, expect_ndim=len(shape))
  assert back.dtype == np.uint8
  np.testing.assert_array_equal(back, array)
  back[...] = 0  # the result must be writable


def test_write_idx_rejects_non_uint8(tmp_path):
  with pytest.raises(TypeError, match="uint8"):
    idx.write_idx(tmp_path / "x", np.zeros(3, np.int32))


def test_read_idx_missing(tmp_path):
  path = tmp_path / "nope-idx1-ubyte"
  with pytest.raises(idx.IDXError, match="not found") as e:
    idx.read_idx(path)
  assert str(path) in str(e.value)


@pytest.mark.parametrize("header, expect_ndim, match", [
    (bytes((0, 0, 8, 1)), 3, r"wrong magic number 0x00000801 .*0x00000803 "
                             r"\(uint8 images, 3 dims\)"),
    (bytes((0, 0, 8, 3)), 1, r"wrong magic number 0x00000803 .*0x00000801 "
                             r"\(uint8 labels, 1 dim\)"),
    (bytes((0, 0, 0x0D, 1)), None, r"0x0d \(float32\) is not supported"),
    (bytes((1, 2, 8, 1)), None, r"wrong magic number 0x01020801"),
    (b"\x1f\x8b\x08\x00", None, r"looks gzip-compressed"),
])
def test_read_idx_bad_magic(tmp_path, header, expect_ndim, match):
  path = tmp_path / "bad-ubyte"
  path.write_bytes(header + (3).to_bytes(4, "big") + bytes(3))
  with pytest.raises(idx.IDXError, match=match) as e:
    idx.read_idx(path, expect_ndim=expect_ndim)
  assert str(path) in str(e.value)


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_truncated_and_trailing(tmp_path, suffix):
  good = idx.write_idx(tmp_path / "good", np.zeros((4, 28, 28), np.uint8))
  raw = good.read_bytes()
  for name, content, match in [
      ("short", raw[:-10], r"truncated: header says 4 items of shape "
                           r"\(28, 28\).*only 3126 bytes"),
      ("header", raw[:9], r"truncated: .*16-byte header"),
      ("tiny", raw[:2], r"truncated"),
      ("long", raw + b"xy", r"2 unexpected trailing bytes"),
  ]:
    path = tmp_path / f"{name}-idx3-ubyte{suffix}"
    path.write_bytes(gzip.compress(content) if suffix else content)
    with pytest.raises(idx.IDXError, match=match) as e:
      idx.read_idx(path, expect_ndim=3)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("damage", ["cut", "not_gzip", "flipped"])
def test_read_idx_corrupt_gzip(tmp_path, damage):
  gz = gzip.compress(idx.write_idx(
      tmp_path / "raw", np.arange(200, dtype=np.uint8)).read_bytes())
  content = {
      "cut": gz[: len(gz) // 2],
      "not_gzip": b"plain bytes, not gzip",
      "flipped": gz[:-8] + bytes(8),  # wrong CRC32 and length
  }[damage]
  path = tmp_path / "x-idx1-ubyte.gz"
  path.write_bytes(content)
  with pytest.raises(idx.IDXError, match="corrupt gzip") as e:
    idx.read_idx(path)
  assert str(path) in str(e.value)


# --- folders ----------------------------------------------------------------


def test_find_idx_files_prefers_gz_and_lists_all_missing(tmp_path):
  data = _make_data()
  write_idx_folder(tmp_path, data, suffix="")
  write_idx_folder(tmp_path, {"train": data["train"]}, suffix=".gz")
  found = idx.find_idx_files(tmp_path)
  assert found["train"] == (tmp_path / "train-images-idx3-ubyte.gz",
                            tmp_path / "train-labels-idx1-ubyte.gz")
  assert found["test"] == (tmp_path / "t10k-images-idx3-ubyte",
                           tmp_path / "t10k-labels-idx1-ubyte")
  for p in [tmp_path / "t10k-images-idx3-ubyte",
            tmp_path / "train-labels-idx1-ubyte",
            tmp_path / "train-labels-idx1-ubyte.gz"]:
    p.unlink()
  with pytest.raises(idx.IDXError) as e:
    idx.find_idx_files(tmp_path)
  msg = str(e.value)
  assert str(tmp_path) in msg
  assert "t10k-images-idx3-ubyte" in msg and "train-labels-idx1-ubyte" in msg
  assert "train-images" not in msg and "t10k-labels" not in msg


def test_find_idx_files_missing_folder(tmp_path):
  with pytest.raises(idx.IDXError, match="not found") as e:
    idx.find_idx_files(tmp_path / "absent")
  assert str(tmp_path / "absent") in str(e.value)


def test_load_idx_folder(tmp_path):
  data = _make_data()
  loaded = idx.load_idx_folder(write_idx_folder(tmp_path, data))
  assert loaded.keys() == data.keys()
  for split in data:
    for got, want in zip(loaded[split], data[split]):
      np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("bad, match, names", [
    ("wrong_size", r"shape \(28, 27\)", ["train-images-idx3-ubyte"]),
    ("label_range", r"out of range 0\.\.9, e\.g\. 10 at index 3",
     ["t10k-labels-idx1-ubyte"]),
    ("empty", "holds no images", ["t10k-images-idx3-ubyte"]),
])
def test_load_idx_folder_content_errors(tmp_path, bad, match, names):
  data = _make_data()
  if bad == "wrong_size":
    data["train"] = (data["train"][0][:, :, :27], data["train"][1])
  elif bad == "label_range":
    data["test"][1][3] = 10
  else:
    data["test"] = (data["test"][0][:0], data["test"][1][:0])
  write_idx_folder(tmp_path, data)
  with pytest.raises(idx.IDXError, match=match) as e:
    idx.load_idx_folder(tmp_path)
  for name in names:
    assert name in str(e.value)


# --- default_idx_dir --------------------------------------------------------


def test_default_idx_dir_env(tmp_path, monkeypatch):
  target = tmp_path / "does-not-exist-yet"
  monkeypatch.setenv("GAN_JAX_IDX_DIR", str(target))
  assert idx.default_idx_dir("fashion_mnist") == target
  assert idx.default_idx_dir("mnist") == target
  with pytest.raises(ValueError, match="fashion_mnist"):
    idx.default_idx_dir("cifar10")


def test_default_idx_dir_without_env(monkeypatch):
  monkeypatch.delenv("GAN_JAX_IDX_DIR", raising=False)
  # Debian packages no MNIST data, only Fashion-MNIST.
  assert idx.default_idx_dir("mnist") is None
  expected = DEBIAN_FASHION if DEBIAN_FASHION.is_dir() else None
  assert idx.default_idx_dir("fashion_mnist") == expected


@pytest.mark.skipif(not DEBIAN_FASHION.is_dir(),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_debian_fashion_mnist_folder():
  loaded = idx.load_idx_folder(DEBIAN_FASHION)
  assert loaded["train"][0].shape == (60000, 28, 28)
  assert loaded["train"][1].shape == (60000,)
  assert loaded["test"][0].shape == (10000, 28, 28)
  assert loaded["test"][1].shape == (10000,)
  assert np.bincount(loaded["test"][1]).tolist() == [1000] * 10


# --- prepare_from_idx -------------------------------------------------------


def test_prepare_round_trip(tmp_path):
  data = _make_data()
  folder = write_idx_folder(tmp_path / "idx", data)
  data_dir = tmp_path / "tfds"
  builder = idx.prepare_from_idx("fashion_mnist", folder, data_dir)
  assert builder.is_prepared() and builder.name == "fashion_mnist"
  # The registered builder, not our private subclass.
  assert type(builder) is tfds.builder_cls("fashion_mnist")
  assert {s: builder.info.splits[s].num_examples for s in SIZES} == SIZES
  assert builder.info.features["label"].names[0] == "T-shirt/top"
  _assert_dataset_equals("fashion_mnist", data_dir, data)
  # The uncompressed scratch copies are gone; only the dataset remains.
  assert sorted(p.name for p in data_dir.iterdir()) == ["fashion_mnist"]

  # Already prepared: nothing is redone, even with the source files gone.
  for p in folder.iterdir():
    p.unlink()
  again = idx.prepare_from_idx("fashion_mnist", folder, data_dir)
  assert again.is_prepared()
  _assert_dataset_equals("fashion_mnist", data_dir, data)


def test_prepare_uncompressed_mnist(tmp_path):
  data = _make_data(seed=1)
  folder = write_idx_folder(tmp_path / "idx", data, suffix="")
  data_dir = tmp_path / "tfds"
  builder = idx.prepare_from_idx("mnist", folder, data_dir)
  assert type(builder) is tfds.builder_cls("mnist")
  _assert_dataset_equals("mnist", data_dir, data)
  assert not tfds.builder("fashion_mnist", data_dir=data_dir).is_prepared()


def test_prepare_unsupported_name(tmp_path):
  with pytest.raises(ValueError, match="mnist, fashion_mnist"):
    idx.prepare_from_idx("cifar10", tmp_path, tmp_path / "tfds")
  assert not (tmp_path / "tfds").exists()


def _break_missing(folder):
  (folder / "t10k-labels-idx1-ubyte.gz").unlink()
  return "t10k-labels-idx1-ubyte", "missing"


def _break_magic(folder):
  path = folder / "train-images-idx3-ubyte.gz"
  raw = bytearray(gzip.decompress(path.read_bytes()))
  raw[3] = 2  # 2 dims instead of 3
  path.write_bytes(gzip.compress(bytes(raw)))
  return path.name, "wrong magic number 0x00000802"


def _break_truncated(folder):
  path = folder / "t10k-images-idx3-ubyte.gz"
  raw = gzip.decompress(path.read_bytes())
  path.write_bytes(gzip.compress(raw[:-28 * 28]))
  return path.name, "truncated: header says 5 items"


def _break_count(folder):
  path = folder / "train-labels-idx1-ubyte.gz"
  idx.write_idx(path, np.zeros(11, np.uint8))
  return path.name, "holds 11 labels but .*train-images-idx3-ubyte.gz holds 12"


def _break_gzip(folder):
  path = folder / "train-labels-idx1-ubyte.gz"
  path.write_bytes(path.read_bytes()[:-6])
  return path.name, "corrupt gzip"


@pytest.mark.parametrize("breaker", [
    _break_missing, _break_magic, _break_truncated, _break_count, _break_gzip,
])
def test_prepare_bad_files_write_nothing(tmp_path, breaker):
  folder = write_idx_folder(tmp_path / "idx", _make_data())
  file_name, match = breaker(folder)
  data_dir = tmp_path / "tfds"
  with pytest.raises(idx.IDXError, match=match) as e:
    idx.prepare_from_idx("fashion_mnist", folder, data_dir)
  assert file_name in str(e.value)
  assert not tfds.builder("fashion_mnist", data_dir=data_dir).is_prepared()
  assert not data_dir.exists()


def test_a_leftover_folder_fails_before_preparing_with_one_tfds_warning(tmp_path, caplog):
  """Through `prepared_builder`, as `train` goes: the leftover is reported
  at once, and TFDS's warning about it appears once, not once per builder."""
  import ml_collections
  from gan_jax.data import sources
  folder = write_idx_folder(tmp_path / "idx", _make_data())
  data_dir = tmp_path / "tfds"
  Path(tfds.builder("fashion_mnist", data_dir=data_dir).data_dir).mkdir(parents=True)
  caplog.clear()
  cfg = ml_collections.ConfigDict(dict(name="fashion_mnist", data_dir=str(data_dir),
                                       idx_dir=str(folder)))
  with caplog.at_level("WARNING"), pytest.raises(idx.IDXError, match="delete it and run again"):
    sources.prepared_builder(cfg)
  notices = [r for r in caplog.records if "has no dataset_info.json" in r.getMessage()]
  assert len(notices) == 1


def test_prepare_leftover_variant_folder(tmp_path):
  # TFDS would silently "reuse" this empty folder; we must not report success.
  folder = write_idx_folder(tmp_path / "idx", _make_data())
  data_dir = tmp_path / "tfds"
  variant = Path(tfds.builder("fashion_mnist", data_dir=data_dir).data_dir)
  variant.mkdir(parents=True)
  with pytest.raises(idx.IDXError, match="holds no prepared dataset"):
    idx.prepare_from_idx("fashion_mnist", folder, data_dir)


def test_prepare_after_another_process_finished_since_the_caller_looked(tmp_path):
  """The caller found the dataset unprepared and passes that builder; by the
  time this runs, another process has prepared it: its dataset is returned,
  not reported as a leftover folder."""
  data = _make_data()
  folder = write_idx_folder(tmp_path / "idx", data)
  data_dir = tmp_path / "tfds"
  stale = tfds.builder("fashion_mnist", data_dir=data_dir)
  assert not stale.is_prepared()
  idx.prepare_from_idx("fashion_mnist", folder, data_dir)   # the other process
  builder = idx.prepare_from_idx("fashion_mnist", folder, data_dir, builder=stale)
  assert builder.is_prepared()
  _assert_dataset_equals("fashion_mnist", data_dir, data)


def test_prepare_concurrent_with_another_process(tmp_path, monkeypatch):
  """Two runs started together on a fresh disk both find the dataset
  unprepared and prepare it; the one that finishes second finds the final
  folder taken. Here the other process's whole preparation runs while this
  one is generating its splits, which is that order of events; this one
  must return the prepared dataset, not fail on TFDS's rename."""
  data = _make_data()
  folder = write_idx_folder(tmp_path / "idx", data)
  data_dir = tmp_path / "tfds"
  offline = idx._offline_builder_cls("fashion_mnist")
  own = offline._split_generators
  raced = []

  def split_generators(self, dl_manager):
    if not raced:
      raced.append(True)
      idx.prepare_from_idx("fashion_mnist", folder, data_dir)   # the other process
      assert tfds.builder("fashion_mnist", data_dir=data_dir).is_prepared()
    return own(self, dl_manager)

  monkeypatch.setattr(offline, "_split_generators", split_generators)
  builder = idx.prepare_from_idx("fashion_mnist", folder, data_dir)
  assert raced and builder.is_prepared()
  _assert_dataset_equals("fashion_mnist", data_dir, data)
  # Neither preparation left a folder behind.
  assert sorted(p.name for p in (data_dir / "fashion_mnist").iterdir()) == [str(builder.version)]
  assert sorted(p.name for p in data_dir.iterdir()) == ["fashion_mnist"]
