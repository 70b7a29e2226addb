"""The FID Inception v3 network in Flax: pool3 features (2048) and logits (1008).

A port of the network that pytorch-fid (mseitzer/pytorch-fid,
`src/pytorch_fid/inception.py`: `fid_inception_v3()` inside `InceptionV3` with
resize_input=True, normalize_input=True) uses to compute FID, itself the
TensorFlow 2015-12-05 Inception graph of the original TTUR FID code. It keeps
pytorch-fid's quirks: avg pools in Mixed_5b..7b exclude the padding
(count_include_pad=False), Mixed_7c pools with max instead of avg, and inputs
are bilinearly resized to 299x299 without antialiasing.

The weights are pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`
(WEIGHTS_URL), converted once to a Flax msgpack file with
`experiments/tools/convert_fid_inception.py`, then read with `load_variables`.
Module and variable names follow the PyTorch state_dict keys
(`Mixed_5b.branch1x1.conv.weight` -> params['Mixed_5b']['branch1x1']['conv']
['kernel']), so the conversion is a rename plus transposition.
"""
from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from flax import traverse_util

from gan_jax.errors import ConfigError

FEATURE_DIM = 2048
NUM_LOGITS = 1008
INPUT_SIZE = 299
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth")

# Full float32 convs and matmuls: on GPU/TPU the default may drop to TF32/bf16,
# and FID is sensitive to small feature shifts.
_PRECISION = jax.lax.Precision.HIGHEST

Pad = int | tuple[int, int]


def _pad(p: Pad) -> tuple[tuple[int, int], tuple[int, int]]:
  """torch's symmetric (ph, pw) padding in Flax's ((lo, hi), (lo, hi)) form."""
  ph, pw = (p, p) if isinstance(p, int) else p
  return ((ph, ph), (pw, pw))


class BasicConv2d(nn.Module):
  """torchvision's BasicConv2d: conv without bias, BatchNorm(eps=1e-3), ReLU."""
  features: int
  kernel: int | tuple[int, int]
  stride: int = 1
  padding: Pad = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = (self.kernel, self.kernel) if isinstance(self.kernel, int) else self.kernel
    x = nn.Conv(self.features, k, strides=(self.stride, self.stride),
                padding=_pad(self.padding), use_bias=False, precision=_PRECISION,
                name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  # TensorFlow's avg pool (and so pytorch-fid's patch) leaves the padded zeros
  # out of the average.
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  # torch MaxPool2d(3, stride=2): no padding, floor mode.
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(64, 1, name="branch1x1")(x)
    b5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
    b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
    bd = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionC(nn.Module):
  channels_7x7: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, 1, name="branch1x1")(x)
    b7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
    b3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """Mixed_7b (avg pool without padding, FIDInceptionE_1) and Mixed_7c
  (max_pool=True: pytorch-fid's FIDInceptionE_2 max-pools, as the TF graph does)."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(320, 1, name="branch1x1")(x)
    b3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
    bd = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
        BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
    if self.max_pool:
      # torch max_pool2d pads with -inf, as Flax's max_pool does.
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = BasicConv2d(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
  """Inference-only FID Inception v3. __call__(x): x (N, 299, 299, 3) float32
  in [-1, 1] (see `preprocess`) -> (pool3 (N, 2048), logits (N, 1008))."""

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    x = jnp.asarray(x, jnp.float32)
    x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)    # 149x149
    x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)              # 147x147
    x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)   # 147x147
    x = _max_pool_3x3_s2(x)                                      # 73x73
    x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)              # 73x73
    x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)             # 71x71
    x = _max_pool_3x3_s2(x)                                      # 35x35
    x = FIDInceptionA(32, name="Mixed_5b")(x)                    # 256
    x = FIDInceptionA(64, name="Mixed_5c")(x)                    # 288
    x = FIDInceptionA(64, name="Mixed_5d")(x)                    # 288
    x = InceptionB(name="Mixed_6a")(x)                           # 17x17x768
    x = FIDInceptionC(128, name="Mixed_6b")(x)
    x = FIDInceptionC(160, name="Mixed_6c")(x)
    x = FIDInceptionC(160, name="Mixed_6d")(x)
    x = FIDInceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)                           # 8x8x1280
    x = FIDInceptionE(name="Mixed_7b")(x)                        # 2048
    x = FIDInceptionE(max_pool=True, name="Mixed_7c")(x)         # 2048
    pool3 = jnp.mean(x, axis=(1, 2))
    # torchvision's dropout before fc is the identity at inference.
    logits = nn.Dense(NUM_LOGITS, precision=_PRECISION, name="fc")(pool3)
    return pool3, logits


_MODEL = FIDInceptionV3()


# --- Preprocessing ------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """(n_out, n_in) weights of torch F.interpolate(mode='bilinear',
  align_corners=False) along one axis; two taps per row and no antialiasing,
  also when downsampling."""
  # torch's CPU kernel: float32 scale, source index scale * (i + 0.5) - 0.5 in
  # one fused multiply-add (exact in float64, then one rounding to float32);
  # this reproduces its weights bit for bit.
  f32 = np.float32
  scale = np.float64(f32(n_in) / f32(n_out))
  src = f32(np.maximum(scale * (np.arange(n_out) + 0.5) - 0.5, 0.0))  # clamped below at 0
  i0 = np.minimum(src.astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  w1 = src - i0.astype(f32)
  m = np.zeros((n_out, n_in), f32)
  rows = np.arange(n_out)
  np.add.at(m, (rows, i0), f32(1) - w1)
  np.add.at(m, (rows, i1), w1)
  return m


def preprocess(images: jax.Array | np.ndarray) -> jax.Array:
  """(N, H, W, C) floats in [0, 1], C in {1, 3} -> (N, 299, 299, 3) in [-1, 1]:
  pytorch-fid's bilinear resize (align_corners=False, no antialiasing) then
  2x - 1; grey images are repeated to 3 channels."""
  x = jnp.asarray(images, jnp.float32)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"expected images of shape (N, H, W, 1 or 3), got {x.shape}")
  _, h, w, _ = x.shape
  if (h, w) != (INPUT_SIZE, INPUT_SIZE):
    rh = jnp.asarray(_resize_matrix(h, INPUT_SIZE))
    rw = jnp.asarray(_resize_matrix(w, INPUT_SIZE))
    # Separable: rows then columns, as two small matmuls.
    x = jnp.einsum("oh,nhwc->nowc", rh, x, precision=_PRECISION)
    x = jnp.einsum("pw,nowc->nopc", rw, x, precision=_PRECISION)
  x = jnp.broadcast_to(x, x.shape[:3] + (3,))
  return 2.0 * x - 1.0


_preprocess_jit = jax.jit(preprocess)
_apply_jit = jax.jit(_MODEL.apply)


def features(variables: Any, images: jax.Array | np.ndarray) -> tuple[jax.Array, jax.Array]:
  """(pool3 (N, 2048), logits (N, 1008)) of (N, H, W, C) images in [0, 1].
  The network is compiled once per batch size, whatever the image size; also
  callable inside jit."""
  return _apply_jit(variables, _preprocess_jit(images))


# --- Variables: conversion, saving, loading -----------------------------------

@functools.lru_cache(maxsize=1)
def _abstract_variables() -> dict:
  """Flattened {('params', ..., 'kernel'): ShapeDtypeStruct} of the model."""
  shapes = jax.eval_shape(_MODEL.init, jax.random.key(0),
                          jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  return traverse_util.flatten_dict(shapes)


# Flax leaf -> torch state_dict suffix, and how to turn the torch array into it.
_LEAF_TO_TORCH = {
    ("params", "kernel", 4): ("weight", (2, 3, 1, 0)),  # (out,in,kh,kw) -> (kh,kw,in,out)
    ("params", "kernel", 2): ("weight", (1, 0)),        # (out,in) -> (in,out)
    ("params", "bias", 1): ("bias", None),
    ("params", "scale", 1): ("weight", None),
    ("batch_stats", "mean", 1): ("running_mean", None),
    ("batch_stats", "var", 1): ("running_var", None),
}


@functools.lru_cache(maxsize=1)
def _torch_key_table() -> dict[str, tuple[tuple[str, ...], tuple[int, ...], tuple | None]]:
  """{torch key: (flax path, torch shape, transpose to flax or None)}."""
  table = {}
  for path, leaf in _abstract_variables().items():
    suffix, perm = _LEAF_TO_TORCH[(path[0], path[-1], len(leaf.shape))]
    key = ".".join(path[1:-1] + (suffix,))
    torch_shape = (tuple(leaf.shape[i] for i in np.argsort(perm)) if perm
                   else tuple(leaf.shape))
    table[key] = (path, torch_shape, perm)
  return table


def convert_torch_state_dict(state_dict: Mapping[str, Any]) -> dict:
  """pytorch-fid's `fid_inception_v3()` state_dict (arrays or CPU tensors) ->
  Flax variables {'params': ..., 'batch_stats': ...} of FIDInceptionV3.
  BatchNorm `num_batches_tracked` counters are ignored. Raises one ValueError
  listing every missing, unexpected or wrongly-shaped key."""
  table = _torch_key_table()
  given = {k: v for k, v in state_dict.items() if not k.endswith(".num_batches_tracked")}
  missing = sorted(set(table) - set(given))
  unexpected = sorted(set(given) - set(table))
  arrays, bad_shape = {}, []
  for key in sorted(set(table) & set(given)):
    path, torch_shape, perm = table[key]
    a = np.asarray(given[key], dtype=np.float32)
    if a.shape != torch_shape:
      bad_shape.append(f"{key}: {a.shape}, expected {torch_shape}")
      continue
    arrays[path] = np.ascontiguousarray(a.transpose(perm) if perm else a)
  problems = _problems(missing, unexpected, bad_shape)
  if problems:
    raise ValueError("not a pytorch-fid FID Inception state_dict: " + "; ".join(problems))
  return jax.tree.map(jnp.asarray, traverse_util.unflatten_dict(arrays))


def _problems(missing: Sequence[str], unexpected: Sequence[str],
              bad_shape: Sequence[str]) -> list[str]:
  out = []
  for label, items in (("missing", missing), ("unexpected", unexpected),
                       ("wrong shape", bad_shape)):
    if items:
      out.append(f"{len(items)} {label}: " + ", ".join(items))
  return out


def save_variables(path: str, variables: Any) -> None:
  """Writes the variables as a flax.serialization msgpack file."""
  state = jax.tree.map(lambda a: np.asarray(a, np.float32), serialization.to_state_dict(variables))
  with open(path, "wb") as f:
    f.write(serialization.msgpack_serialize(state))


def load_variables(path: str) -> dict:
  """Reads a `save_variables` file, checking every entry's name and shape
  against FIDInceptionV3; a mismatch raises one ValueError naming them all."""
  again = (f"convert {WEIGHTS_FILE} again with experiments/tools/convert_fid_inception.py "
           f"--pth {WEIGHTS_FILE} --out {path}")
  with open(path, "rb") as f:
    try:
      state = serialization.msgpack_restore(f.read())
    except Exception as e:  # noqa: BLE001 - msgpack's errors for a damaged or foreign file
      raise ConfigError(f"{path} is not a converted FID Inception weights file "
                        f"({type(e).__name__}: {e}); {again}") from e
  if not isinstance(state, dict):
    raise ConfigError(f"{path}: not a FID Inception variables file; {again}")
  flat = traverse_util.flatten_dict(state)
  expected = _abstract_variables()
  name = lambda p: "/".join(p)
  missing = sorted(name(p) for p in set(expected) - set(flat))
  unexpected = sorted(name(p) for p in set(flat) - set(expected))
  bad_shape = sorted(f"{name(p)}: {tuple(np.shape(flat[p]))}, expected {tuple(expected[p].shape)}"
                     for p in set(expected) & set(flat)
                     if tuple(np.shape(flat[p])) != tuple(expected[p].shape))
  problems = _problems(missing, unexpected, bad_shape)
  if problems:
    raise ConfigError(f"{path}: not FID Inception variables: " + "; ".join(problems)
                      + f"; {again}")
  return traverse_util.unflatten_dict(
      {p: jnp.asarray(a, jnp.float32) for p, a in flat.items()})


def file_sha256(path: str) -> str:
  """Hex SHA-256 of a file, read in chunks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()
