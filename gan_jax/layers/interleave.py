"""The phase interleave ("depth-to-space") that ends `phase_conv_transpose`,
with its backward pass written out (custom VJP).

Autodiff's transpose of the interleave is a single transpose that moves the
phase axes and the channel axis at once. XLA:CPU fuses it with the transpose
of the gradient that `dots.f32_matmul` lays out for the kernel gradient
(g^T), and runs the fused copy element by element, far below memory speed.
Written as strided slices and a concatenate, the gradient reaches the matmul
in [rows, phases x channels] order, and g^T is a plain 2-D transpose, which
XLA:CPU runs as fast as a copy. Reverse-mode derivatives to any order, not
forward mode (like the other CPU paths of `gan_jax.layers`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

Array = jax.Array


def _pad(x: Array, pads) -> Array:
  """lax.pad of the spatial axes of an NHWC array; negative widths crop."""
  (lo_h, hi_h), (lo_w, hi_w) = pads
  return jax.lax.pad(x, jnp.zeros((), x.dtype),
                     ((0, 0, 0), (lo_h, hi_h, 0), (lo_w, hi_w, 0), (0, 0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def depth_to_space(y: Array, strides: tuple[int, int], pads) -> Array:
  """y [N, Hc, Wc, sh*sw*C], channels phase-major (slot (p, q) holds output
  rows sh*m + p and columns sw*n + q) -> [N, Hc*sh, Wc*sw, C], then padded
  by `pads` ((lo, hi) per spatial axis; negative widths crop)."""
  return _forward(y, strides, pads)[0]


def _forward(y, strides, pads):
  (sh, sw), (b, hc, wc, c) = strides, y.shape
  cout = c // (sh * sw)
  out = y.reshape(b, hc, wc, sh, sw, cout).transpose(0, 1, 3, 2, 4, 5)
  return _pad(out.reshape(b, hc * sh, wc * sw, cout), pads), None


def _backward(strides, pads, _, g):
  sh, sw = strides
  g = _pad(g, tuple((-lo, -hi) for lo, hi in pads))
  b, h, w, cout = g.shape
  g = g.reshape(b, h // sh, sh, w // sw, sw, cout)
  dy = jnp.concatenate([g[:, :, p, :, q, :] for p in range(sh) for q in range(sw)], axis=-1)
  return (dy,)


depth_to_space.defvjp(_forward, _backward)
