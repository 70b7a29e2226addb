"""Layers that XLA runs well on every backend.

Each layer has two implementations with the same parameters and outputs and
picks one per backend it is compiled for (`lowering='auto'`, through
`jax.lax.platform_dependent`; on a CPU-only host directly): XLA's own
convolutions and bfloat16 dots on GPU and TPU, where cuDNN/cuBLAS are the
fast path, and the paths below on CPU. `lowering='native'` or `'cpu'` forces
one on every backend.

`Conv` is `flax.linen.Conv` computed, for wide inputs, as slices + one
matmul, whose higher derivatives (gradient penalties) stay fast on XLA:CPU;
a wide input into a narrow stride-1 output (an image layer) by `shift_conv`;
a wide stride-1 float32 conv with an odd window of 5x5 or more (whose patches
would be large) by XLA's own convolution, fast there to every order.

On CPU the im2col and phase matmuls (float32 with 256 rows or more, and
bfloat16) are custom VJPs from `dots`, whose backward passes take the forms
XLA:CPU runs fastest; like `shift_conv` and the phase interleave of every
CPU `ConvTranspose`, they support reverse-mode derivatives to any order but
not forward mode (`jax.jvp`, `jax.hessian`; `lowering='native'` has no such
limit).

`ConvTranspose` computes exactly what `flax.linen.ConvTranspose` computes
(same parameters, same output) but as one ordinary convolution followed by a
phase interleave ("depth-to-space"). On XLA:CPU the gradient of a transposed
convolution is ~20x slower than that of a plain convolution of the same size;
this layer never emits one.

How: output row `o = s*m + p` of a stride-`s` transposed convolution only sees
the kernel taps `t` with `(p + t - pad_lo) % s == 0`, applied to input rows
`m + (p + t - pad_lo) // s`. Each phase `p` is therefore a small dense
convolution of the undilated input. All `s*s` phases share one convolution
whose output channels are stacked per phase; a phase whose window starts one
row later reads its rows from one row further down the shared output. For the
DCGAN layer (kernel 4, stride 2, SAME) that is a single 2x2 convolution with
4x the output channels over an (H+1)x(W+1) grid: about 1.15-1.3x the FLOPs of
the transposed convolution, versus 2.25x for a 3x3 convolution + depth-to-space.
The interleave of the phases is `interleave.depth_to_space`, whose backward
pass is written out in the form XLA:CPU runs fast.
"""
from __future__ import annotations

import functools
import math
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from gan_jax.layers import phase
from gan_jax.layers.dots import bf16_matmul, f32_matmul, native_bf16_matmul
from gan_jax.layers.interleave import depth_to_space
from gan_jax.layers.shift import shift_conv

Array = jax.Array

LOWERINGS = ("auto", "native", "cpu")


def check_lowering(lowering: str) -> None:
  if lowering not in LOWERINGS:
    raise ValueError(f"lowering must be one of {LOWERINGS}, got {lowering!r}")


def cpu_only_host() -> bool:
  """Whether this process has CPU devices only (no GPU or TPU backend)."""
  return jax.default_backend() == "cpu"


def by_backend(name: str, lowering: str, cpu: Callable, native: Callable, *args):
  """`cpu(*args)` or `native(*args)`: as forced by `lowering`, or ('auto') by
  the platform compiled for, through `jax.lax.platform_dependent` (only the
  chosen one is lowered). A CPU-only process takes the CPU path directly:
  its programs stay free of the platform switch, which changes how XLA fuses
  a multi-process program. Each runs in a named scope, 'cpu_NAME' or
  'native_NAME', which the lowered program's locations show."""
  check_lowering(lowering)
  def scoped(kind, fn):
    def run(*a):
      with jax.named_scope(f"{kind}_{name}"):
        return fn(*a)
    return run
  cpu, native = scoped("cpu", cpu), scoped("native", native)
  if lowering == "cpu" or (lowering == "auto" and cpu_only_host()):
    return cpu(*args)
  if lowering == "native":
    return native(*args)
  return jax.lax.platform_dependent(*args, cpu=cpu, default=native)


def _compute_dtype(dtype):
  return jnp.float32 if dtype is None else jnp.dtype(dtype)


# Below this many rows Eigen computes the kernel gradient of `x @ w` as fast
# as `f32_matmul`'s transposed form, whose copies then cost more than they save.
_MIN_F32_MATMUL_ROWS = 256


def matmul(x: Array, w: Array, dtype=None, lowering: str = "auto") -> Array:
  """`x @ w` (w 2-D), computed in `dtype`; the result is float32. On CPU,
  float32 with 256 rows or more is `dots.f32_matmul` (its kernel gradient
  in the form YNNPACK takes); for bfloat16 the operands are rounded to
  bfloat16 and the products accumulate in float32, in the forward and in
  both backward matmuls: XLA:CPU runs only that form fast (a bfloat16 x
  bfloat16 -> bfloat16 dot, or one with a float32 operand, as JAX's own
  transpose rules make, is computed in float32). Elsewhere it is a plain
  dot in `dtype`."""
  dtype = _compute_dtype(dtype)
  if dtype not in (jnp.float32, jnp.bfloat16):
    raise ValueError(f"matmul: compute dtype must be float32 or bfloat16, got {dtype}")
  if dtype == jnp.float32:
    if math.prod(x.shape[:-1]) < _MIN_F32_MATMUL_ROWS or not x.dtype == w.dtype == jnp.float32:
      return x @ w
    return by_backend("f32_matmul", lowering, f32_matmul, jnp.matmul, x, w)
  x, w = x.astype(jnp.float32), w.astype(jnp.float32)
  return by_backend("bf16_matmul", lowering, bf16_matmul, native_bf16_matmul, x, w)


def dense_dot_general(dtype, lowering: str = "auto"):
  """A `dot_general` for `flax.linen.Dense(dot_general=...)` that multiplies
  with `matmul` in `dtype` (leave Dense's own `dtype` unset)."""
  def dot_general(x, kernel, dimension_numbers, precision=None, **kwargs):
    if dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())):
      raise ValueError(f"dense_dot_general: expected a Dense contraction, got {dimension_numbers}")
    return matmul(x, kernel, dtype, lowering)
  return dot_general


# Narrow dense convs (e.g. the RGB/grey output layer) would build im2col
# patches many times their input for little work: they run as `_narrow_conv`.
_MAX_CONV_FEATURES = 32

# im2col's patches grow with the window: a float32 stride-1 convolution with
# a 5x5 window or larger runs faster as XLA's own convolution (forward, both
# gradients and a gradient penalty's second order; smaller windows the other
# way, and even windows hit XLA:CPU's slow kernel gradient).
_MIN_NATIVE_TAPS = 25


def _native_is_faster(kh: int, kw: int, strides, dtype, *operands) -> bool:
  return (tuple(strides) == (1, 1) and kh * kw >= _MIN_NATIVE_TAPS and kh % 2 == kw % 2 == 1
          and _compute_dtype(dtype) == jnp.float32
          and all(a.dtype == jnp.float32 for a in operands))


def phase_conv_transpose(x: Array, kernel: Array, strides: Sequence[int],
                         padding="SAME", dtype=None) -> Array:
  """`lax.conv_transpose(x, kernel, strides, padding, ('NHWC','HWIO','NHWC'))`
  (transpose_kernel=False) computed as one dense conv + phase interleave; its
  im2col matmul runs in `dtype` (see `matmul`)."""
  kh, kw, _, cout = kernel.shape
  sh, sw = strides
  pads = padding if isinstance(padding, str) else list(padding)
  ph = phase.plan(x.shape[1], kh, sh, pads if isinstance(pads, str) else pads[0])
  pw = phase.plan(x.shape[2], kw, sw, pads if isinstance(pads, str) else pads[1])
  # Phases in slot order (see `phase.slots`) make the interleave a transpose
  # and a crop, not a stack of shifted slices (one copy of the output less).
  (order_h, off_h), (order_w, off_w) = phase.slots(ph, kh, sh), phase.slots(pw, kw, sw)
  dense = phase.dense_kernel(kernel, ph, pw, order_h, order_w)
  # Negative padding means the dense conv never reads those input rows: crop them.
  def crop(x, axis, lo, hi):
    start, stop = max(-lo, 0), x.shape[axis] - max(-hi, 0)
    return jax.lax.slice_in_dim(x, start, stop, axis=axis), (max(lo, 0), max(hi, 0))
  x, pad_h = crop(x, 1, *ph.pad)
  x, pad_w = crop(x, 2, *pw.pad)
  hc, wc = ph.per_phase + max(ph.shifts), pw.per_phase + max(pw.shifts)
  if dense.shape[-1] <= _MAX_CONV_FEATURES:
    y = _narrow_conv(x, dense, (1, 1), [pad_h, pad_w])
  elif _native_is_faster(ph.window, pw.window, (1, 1), dtype, x, dense):
    y = _xla_conv(x, dense, (1, 1), [pad_h, pad_w])
  else:
    # im2col + one matmul: XLA:CPU computes the kernel gradient of a wide,
    # small even-sized conv ~40x slower than the equivalent matmul.
    x = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    patches = jnp.concatenate([x[:, i:i + hc, j:j + wc] for i in range(ph.window)
                               for j in range(pw.window)], axis=-1)
    y = matmul(patches, dense.reshape(-1, dense.shape[-1]), dtype)
  # A crop, or zeros where an empty phase's outputs fall outside the grid.
  return depth_to_space(y.reshape(y.shape[0], hc, wc, sh * sw * cout), (sh, sw), (
      (-off_h, off_h + ph.out_len - hc * sh), (-off_w, off_w + pw.out_len - wc * sw)))


class _ConvLike(nn.Module):
  """The parameters and call of `flax.linen.Conv`/`ConvTranspose` on NHWC
  inputs (2-D, no dilation); subclasses say how to compute the convolution."""
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Any = "SAME"
  use_bias: bool = True
  dtype: Any = None   # compute dtype: of the im2col matmuls on CPU, of every conv elsewhere
  param_dtype: Any = jnp.float32
  lowering: str = "auto"   # see the module docstring: 'auto', 'native' or 'cpu'
  kernel_init: Any = nn.initializers.lecun_normal()
  bias_init: Any = nn.initializers.zeros_init()

  @nn.nowrap
  def cpu(self, x: Array, kernel: Array, strides: tuple[int, int]) -> Array:
    """The convolution on CPU: its im2col / phase matmuls run in
    `self.dtype`, the narrow layers (XLA's convolution, `shift_conv`) in
    float32 (XLA:CPU's bfloat16 convolutions are slower)."""
    raise NotImplementedError

  @nn.nowrap
  def native(self, x: Array, kernel: Array, strides: tuple[int, int]) -> Array:
    """The convolution as XLA's own op, in `self.dtype`, returned as float32."""
    raise NotImplementedError

  @nn.nowrap
  def _native_operands(self, x, kernel):
    dt = _compute_dtype(self.dtype)
    return x.astype(dt), kernel.astype(dt)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    ks = (self.kernel_size,) * 2 if isinstance(self.kernel_size, int) else tuple(self.kernel_size)
    st = (self.strides,) * 2 if isinstance(self.strides, int) else tuple(self.strides)
    if x.ndim != 4 or len(ks) != 2 or len(st) != 2:
      raise ValueError(f"{type(self).__name__} expects NHWC input and 2-D kernel/strides, got "
                       f"input shape {x.shape}, kernel_size {self.kernel_size}, strides {self.strides}")
    kernel = self.param("kernel", self.kernel_init, ks + (x.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.param_dtype)
    y = by_backend(type(self).__name__.lower(), self.lowering,
                   functools.partial(self.cpu, strides=st),
                   functools.partial(self.native, strides=st), x, kernel)
    return y + bias if bias is not None else y


class ConvTranspose(_ConvLike):
  """Drop-in for `flax.linen.ConvTranspose` on NHWC inputs (2-D, no dilation,
  transpose_kernel=False): same parameter names and shapes, same output."""

  @nn.nowrap
  def cpu(self, x, kernel, strides):
    return phase_conv_transpose(x, kernel, strides, self.padding, self.dtype)

  @nn.nowrap
  def native(self, x, kernel, strides):
    x, kernel = self._native_operands(x, kernel)
    return jax.lax.conv_transpose(x, kernel, strides, self.padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC")).astype(jnp.float32)


def im2col_conv(x: Array, kernel: Array, strides: Sequence[int], padding="SAME",
                dtype=None) -> Array:
  """`lax.conv_general_dilated(x, kernel, strides, padding)` (NHWC, HWIO) as
  strided slices + one matmul. Every derivative of it, to any order, is made
  of slices, pads and matmuls, so a gradient penalty (a gradient of an input
  gradient) never meets XLA:CPU's slow transposed-conv gradient."""
  kh, kw, cin, cout = kernel.shape
  sh, sw = strides
  _, h, w, _ = x.shape
  if padding == "SAME":
    oh, ow = -(-h // sh), -(-w // sw)
    pad_h = max((oh - 1) * sh + kh - h, 0)
    pad_w = max((ow - 1) * sw + kw - w, 0)
    pads = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2))
  elif padding == "VALID":
    pads = ((0, 0), (0, 0))
  else:
    pads = tuple(tuple(p) for p in padding)
  x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  oh = (x.shape[1] - kh) // sh + 1
  ow = (x.shape[2] - kw) // sw + 1
  patches = jnp.concatenate(
      [x[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw]
       for i in range(kh) for j in range(kw)], axis=-1)
  return matmul(patches, kernel.reshape(kh * kw * cin, cout), dtype)


# With few input or output channels im2col's patches would be large for
# little work (XLA's convolution, or `shift_conv` for a wide input into a
# narrow output); with many of both, im2col's derivatives are much faster
# (WGAN-GP step 1.6 s -> 0.6 s).
_MIN_IM2COL_CHANNELS = 32


class Conv(_ConvLike):
  """Drop-in for `flax.linen.Conv` on NHWC inputs (2-D, no dilation, one
  group): same parameter names and shapes, same output; wide layers (many
  input and output channels) are computed by `im2col_conv`, a wide input into
  a narrow output by `shift_conv`."""

  @nn.nowrap
  def cpu(self, x, kernel, strides):
    if x.shape[-1] >= _MIN_IM2COL_CHANNELS and kernel.shape[-1] > _MAX_CONV_FEATURES:
      if _native_is_faster(*kernel.shape[:2], strides, self.dtype, x, kernel):
        return _xla_conv(x, kernel, strides, self.padding)
      return im2col_conv(x, kernel, strides, self.padding, self.dtype)
    return _narrow_conv(x, kernel, strides, self.padding)

  @nn.nowrap
  def native(self, x, kernel, strides):
    x, kernel = self._native_operands(x, kernel)
    return _xla_conv(x, kernel, strides, self.padding).astype(jnp.float32)


def _xla_conv(x, kernel, strides, padding):
  return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _narrow_conv(x, kernel, strides, padding):
  """A convolution with few input or output channels on CPU: a float32 wide
  input into a narrow stride-1 output by `shift_conv`, XLA's own otherwise."""
  pads = _shift_conv_padding(padding)
  if (tuple(strides) == (1, 1) and x.shape[-1] >= _MIN_IM2COL_CHANNELS and pads is not None
      and x.dtype == kernel.dtype == jnp.float32):
    return shift_conv(x, kernel, pads)
  return _xla_conv(x, kernel, strides, padding)


def _shift_conv_padding(padding):
  """'SAME', 'VALID' or ((lo, hi), (lo, hi)) with no negative width as
  `shift_conv` takes it; None for anything else (left to XLA's convolution)."""
  if isinstance(padding, str):
    return padding if padding in ("SAME", "VALID") else None
  try:
    pads = tuple((int(lo), int(hi)) for lo, hi in padding)
  except (TypeError, ValueError):
    return None
  return pads if len(pads) == 2 and min(map(min, pads)) >= 0 else None
