"""What the accelerator in use can do fast: native bfloat16 matmuls.

`model.dtype='auto'` trains in bfloat16 mixed precision where the hardware
multiplies bfloat16 natively (TPUs, NVIDIA GPUs from Ampere on, AMD GPUs,
x86 CPUs with AVX512-BF16 or AMX) and in float32 elsewhere, where bfloat16
would be emulated and slower than float32 (e.g. AVX2-only CPUs).
"""
from __future__ import annotations

import functools

import jax

_CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_flags() -> frozenset[str]:
  """The CPU's feature flags (Linux /proc/cpuinfo; empty where unreadable)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("flags"):
          return frozenset(line.partition(":")[2].split())
  except OSError:
    pass
  return frozenset()


def native_bf16(device: jax.Device | None = None) -> tuple[bool, str]:
  """(whether `device` multiplies bfloat16 natively, the reason in words);
  default: the first device."""
  device = device or jax.devices()[0]
  platform = device.platform
  if platform == "tpu":
    return True, "TPU"
  if platform == "gpu" or platform in ("cuda", "rocm"):
    capability = getattr(device, "compute_capability", None)
    try:
      major = float(capability)
    except (TypeError, ValueError):   # ROCm (a gfx name): its supported GPUs have bf16 units
      return True, device.device_kind
    ok = major >= 8.0
    return ok, f"{device.device_kind}, compute capability {capability}" + (
        "" if ok else " (bf16 tensor cores need 8.0)")
  if platform == "cpu":
    found = sorted(cpu_flags() & _CPU_BF16_FLAGS)
    return (True, f"CPU with {', '.join(found)}") if found else (
        False, f"CPU without {' or '.join(sorted(_CPU_BF16_FLAGS))}")
  return False, f"platform {platform!r}"


def auto_dtype(device: jax.Device | None = None) -> tuple[str, str]:
  """('bfloat16' or 'float32', why) for `model.dtype='auto'`."""
  native, why = native_bf16(device)
  return ("bfloat16" if native else "float32"), why
