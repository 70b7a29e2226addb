"""The CPU matmuls of the layers, with backward passes written out (custom
VJPs) in the forms XLA:CPU runs fastest.

XLA:CPU hands a dot to YNNPACK, its fast matmul library, only when the left
operand contracts its last axis. Autodiff's kernel gradient of `x @ w`,
x^T g, contracts the rows of both operands and runs in Eigen instead, 1.2-2x
slower at convolution sizes (the README's speed section has the figures).
`f32_matmul` computes it as (g^T x)^T with g^T laid out in memory; the
optimisation barriers keep XLA from folding the transposes back into the
dot. `bf16_matmul` rounds the operands to bfloat16 and accumulates in
float32, forward and backward: XLA:CPU runs only that bfloat16 form fast.
Being custom VJPs, both take reverse-mode derivatives to any order, not
forward mode.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from gan_jax.layers.cotangent import like

Array = jax.Array


def _contract_last(a: Array, b: Array, b_axis: int) -> Array:
  """a's last axis against b's axis `b_axis` (b 2-D), float32."""
  return jax.lax.dot_general(a, b, (((a.ndim - 1,), (b_axis,)), ((), ())))


def _kernel_grad(x: Array, g: Array) -> Array:
  """sum over rows of x^T g (x: (..., K), g: (..., N)) as (g^T x)^T."""
  x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
  gt = jax.lax.optimization_barrier(g2.T)
  return jax.lax.optimization_barrier(gt @ x2).T


@jax.custom_vjp
def f32_matmul(x: Array, w: Array) -> Array:
  """`x @ w` (float32, w 2-D) whose kernel gradient YNNPACK computes."""
  return x @ w


def _f32_matmul_fwd(x, w):
  return x @ w, (x, w)


def _f32_matmul_bwd(res, g):
  x, w = res
  return like(_contract_last(g, w, 1), x), like(_kernel_grad(x, g), w)


f32_matmul.defvjp(_f32_matmul_fwd, _f32_matmul_bwd)


def _mixed(a: Array, b: Array, dims) -> Array:
  return jax.lax.dot_general(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16), (dims, ((), ())),
                             preferred_element_type=jnp.float32)


@jax.custom_vjp
def bf16_matmul(x: Array, w: Array) -> Array:
  """`x @ w` (float32 in and out) with bfloat16 operands, float32 sums."""
  return _mixed(x, w, ((x.ndim - 1,), (0,)))


def _bf16_matmul_fwd(x, w):  # x, w: float32
  return bf16_matmul(x, w), (x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))


def _bf16_matmul_bwd(res, g):
  x, w = res
  lead = tuple(range(x.ndim - 1))
  return (like(_mixed(g, w, ((g.ndim - 1,), (1,))), x),
          like(_mixed(x, g, (lead, lead)), w))


bf16_matmul.defvjp(_bf16_matmul_fwd, _bf16_matmul_bwd)


def native_bf16_matmul(x: Array, w: Array) -> Array:
  """bfloat16 in and out (GPU/TPU matmul units accumulate in float32); its
  autodiff transposes are bfloat16 dots too."""
  return (x.astype(jnp.bfloat16) @ w.astype(jnp.bfloat16)).astype(jnp.float32)
