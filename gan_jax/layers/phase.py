"""How a transposed convolution splits into phases (see `gan_jax.layers`):
per spatial dimension, which kernel taps each output phase sees and where
its outputs start in the shared dense convolution, the channel order that
makes the phase interleave a transpose and a crop, and the stacked dense
kernel."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def transpose_padding(k: int, s: int, padding) -> tuple[int, int]:
  """Padding of the dilated input, as `jax.lax.conv_transpose` defines it."""
  if padding == "SAME":
    pad_len = k + s - 2
    pad_a = k - 1 if s > k - 1 else int(np.ceil(pad_len / 2))
  elif padding == "VALID":
    pad_len = k + s - 2 + max(k - s, 0)
    pad_a = k - 1
  else:  # explicit (lo, hi) pair, as lax.conv_transpose takes it
    pad_a, pad_b = padding
    return int(pad_a), int(pad_b)
  return pad_a, pad_len - pad_a


@dataclasses.dataclass(frozen=True)
class PhasePlan:
  """How one spatial dimension of a transposed conv splits into phases."""
  out_len: int          # length of the transposed-conv output
  per_phase: int        # outputs per phase (ceil(out_len / stride))
  window: int           # taps of the shared dense conv
  pad: tuple[int, int]  # padding of the undilated input for the dense conv
  shifts: tuple[int, ...]   # where each phase's outputs start in the dense conv output
  taps: np.ndarray      # [stride, window] kernel tap per (phase, window pos); k = zero tap


def plan(in_len: int, k: int, s: int, padding) -> PhasePlan:
  pad_a, pad_b = transpose_padding(k, s, padding)
  out_len = (in_len - 1) * s + 1 + pad_a + pad_b - k + 1
  if out_len <= 0:
    raise ValueError(f"ConvTranspose: input length {in_len} with kernel {k}, "
                     f"stride {s}, padding {padding!r} gives no output")
  per_phase = -(-out_len // s)
  # Input offsets read by each phase: d = (p + t - pad_a) / s for taps t.
  first = []
  count = []
  for p in range(s):
    offs = [(p + t - pad_a) // s for t in range(k) if (p + t - pad_a) % s == 0]
    first.append(min(offs) if offs else 0)
    count.append(len(offs))
  window = max(max(count), 1)
  g0 = min(first)
  shifts = tuple(f - g0 for f in first)
  taps = np.full((s, window), k, dtype=np.int32)
  for p in range(s):
    for j in range(window):
      t = s * (first[p] + j) - p + pad_a
      if 0 <= t < k and j < count[p]:
        taps[p, j] = t
  conv_len = per_phase + max(shifts)
  lo = -g0
  hi = conv_len + window - 1 - in_len - lo
  return PhasePlan(out_len, per_phase, window, (lo, hi), shifts, taps)


def slots(plan: PhasePlan, k: int, s: int) -> tuple[tuple[int, ...], int]:
  """(phase in each channel slot, offset) such that the shared conv's
  output, its phases stored in that slot order, is the transposed conv's
  output when flattened (grid row, slot) and started at the offset.

  Phase p's output o = s*(m - shift_p) + p sits at grid row m; in slot
  j_p = p - s*shift_p + offset its flat index s*m + j_p is o + offset. The
  slots differ (p differ mod s) and lie in [0, s): for a phase with taps,
  p - s*shift_p is in (pad_lo - s, pad_lo]. A phase with no taps (kernel
  narrower than the stride) is zeros: it takes the slot of its residue, and
  its outputs may fall outside the grid (a negative offset)."""
  keys = {p: p - s * plan.shifts[p] for p in range(s) if (plan.taps[p] < k).any()}
  offset = -min(keys.values())
  order = [0] * s
  for p, key in keys.items():
    order[key + offset] = p
  for p in range(s):
    if p not in keys:
      order[(p + offset) % s] = p
  return tuple(order), offset


def dense_kernel(kernel: Array, ph: PhasePlan, pw: PhasePlan, order_h, order_w) -> Array:
  """The shared dense conv's HWIO kernel: each phase's taps (a zero tap where
  it has none), its output channels stacked per phase in slot order."""
  kh, kw, cin, cout = kernel.shape
  kz = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0)))  # index kh / kw: the zero tap
  taps_h, taps_w = ph.taps[list(order_h)], pw.taps[list(order_w)]
  dense = kz[taps_h[:, :, None, None], taps_w[None, None, :, :]]  # sh,Wh,sw,Ww,cin,cout
  sh, sw = len(order_h), len(order_w)
  return dense.transpose(1, 3, 4, 0, 2, 5).reshape(ph.window, pw.window, cin, sh * sw * cout)
