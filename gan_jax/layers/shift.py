"""A stride-1 convolution with few output channels, as one matmul and a sum
of shifted slices, for XLA:CPU.

XLA:CPU's own convolution is slow for a wide input and a narrow output (the
RGB/grey output layer of a generator, or the phase convolution of its last
transposed convolution): its kernel gradient runs as a convolution whose
window is the whole image, after a transpose of the input. im2col would
build patches k*k times the size of the input for little work. Here one
matmul gives every tap's contribution at every input position,

  cols[t*cout + c, p] = sum_i kernel[t, i, c] * x[p, i]    (t = kernel tap),

and the output is the sum over taps of `cols_t` shifted by the tap's offset.
The backward pass is written out (custom VJP) so that both gradients are
matmuls with one array of shifted output gradients. `cols` is channel-major
(taps and channels first) so that each shifted slice is contiguous.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from gan_jax.layers.cotangent import like


def conv_padding(padding, kh: int, kw: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """(lo, hi) padding per spatial axis of a stride-1 convolution."""
  if padding == "SAME":
    return ((kh - 1) // 2, kh // 2), ((kw - 1) // 2, kw // 2)
  if padding == "VALID":
    return (0, 0), (0, 0)
  (a, b), (c, d) = padding
  return (int(a), int(b)), (int(c), int(d))


def _taps_matrix(kernel):
  """HWIO kernel -> (taps * cout, cin)."""
  kh, kw, cin, cout = kernel.shape
  return kernel.transpose(0, 1, 3, 2).reshape(kh * kw * cout, cin)


def _shift_sum(cols, pads, kh, kw, cout, oh, ow):
  """cols (taps*cout, N, H, W) -> (cout, N, oh, ow): y[o] = sum_t cols_t[o + t - pad_lo]."""
  padded = jnp.pad(cols, ((0, 0), (0, 0), *pads))
  n = cols.shape[1]
  y = None
  for i in range(kh):
    for j in range(kw):
      t = i * kw + j
      part = jax.lax.slice(padded, (t * cout, 0, i, j), ((t + 1) * cout, n, i + oh, j + ow))
      y = part if y is None else y + part
  return y


def _spread(dy, pads, kh, kw, h, w):
  """The transpose of `_shift_sum`: dy (cout, N, oh, ow) -> (taps*cout, N, h, w),
  entry t at p being dy[p - t + pad_lo] (zero outside)."""
  (lo_h, _), (lo_w, _) = pads
  c, n, oh, ow = dy.shape
  # Negative widths crop (padding wider than the kernel reads outside x).
  big = jax.lax.pad(dy, jnp.zeros((), dy.dtype), ((0, 0, 0), (0, 0, 0),
                    (kh - 1 - lo_h, h - oh + lo_h, 0), (kw - 1 - lo_w, w - ow + lo_w, 0)))
  parts = [jax.lax.slice(big, (0, 0, kh - 1 - i, kw - 1 - j), (c, n, kh - 1 - i + h, kw - 1 - j + w))
           for i in range(kh) for j in range(kw)]
  return jnp.concatenate(parts, axis=0)


def _geometry(x, kernel, padding):
  kh, kw, _, _ = kernel.shape
  _, h, w, _ = x.shape
  pads = conv_padding(padding, kh, kw)
  oh, ow = h + sum(pads[0]) - kh + 1, w + sum(pads[1]) - kw + 1
  if oh <= 0 or ow <= 0:
    raise ValueError(f"shift_conv: input {x.shape[1:3]} with kernel {(kh, kw)} and padding "
                     f"{padding!r} gives no output")
  return pads, oh, ow


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def shift_conv(x, kernel, padding="SAME"):
  """`lax.conv_general_dilated(x, kernel, (1, 1), padding)` (NHWC, HWIO,
  float32) as above. `padding`: 'SAME', 'VALID' or ((lo, hi), (lo, hi))."""
  return _forward(x, kernel, padding)[0]


def _forward(x, kernel, padding):
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  pads, oh, ow = _geometry(x, kernel, padding)
  cols = jax.lax.dot_general(_taps_matrix(kernel), x.reshape(n * h * w, cin),
                             (((1,), (1,)), ((), ())))
  y = _shift_sum(cols.reshape(kh * kw * cout, n, h, w), pads, kh, kw, cout, oh, ow)
  return y.transpose(1, 2, 3, 0), (x, kernel)


def _backward(padding, residuals, dy):
  x, kernel = residuals
  kh, kw, cin, cout = kernel.shape
  n, h, w, _ = x.shape
  pads, _, _ = _geometry(x, kernel, padding)
  dcols = _spread(dy.transpose(3, 0, 1, 2), pads, kh, kw, h, w).reshape(kh * kw * cout, n * h * w)
  dx = jax.lax.dot_general(dcols, _taps_matrix(kernel), (((0,), (0,)), ((), ())))
  dk = (dcols @ x.reshape(n * h * w, cin)).reshape(kh, kw, cout, cin).transpose(0, 1, 3, 2)
  # Under shard_map a replicated kernel (or input) gets its cotangent summed.
  return like(dx.reshape(x.shape), x), like(dk, kernel)


shift_conv.defvjp(_forward, _backward)
