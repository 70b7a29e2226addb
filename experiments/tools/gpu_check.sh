#!/usr/bin/env bash
# The whole GPU check in one go (< 10 minutes on one H100/H200): gan_jax's
# training step against PyTorch (eager and torch.compile, fp32 and bf16
# autocast) at batch 64 on the four seed GANs and at a large batch on
# DCGAN-64, and an 8-member sweep against 8 sequential runs; writes one
# Markdown page with the tables and the targets (experiments/tools/gpu_report.py).
#
#   bash experiments/tools/gpu_check.sh [OUT.md]        # default: gpu_check.md
#
# Needs JAX with CUDA, Flax, Optax, Orbax, chex, ml_collections and PyTorch;
# no TensorFlow, TFDS or tensorboardX (random data on device). Pure-Python
# wheels that the machine lacks (ml_collections) may lie in .whl/ at the
# repository root: they are installed to a temporary folder first.
# GPU_CHECK_QUICK=1 runs every stage in seconds with tiny models (for CI on a CPU).
set -euo pipefail
out=$(realpath -m "${1:-gpu_check.md}")   # before the cd: relative to the caller
cd "$(dirname "$0")/../.."
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
# JAX and PyTorch share the GPU: no 75% up-front reservation by JAX.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d)
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
  export PYTHONPATH="$site:$PYTHONPATH"
fi
tmp=$(mktemp -d)
against=${GPU_CHECK_AGAINST-torch torch_compile}   # "" = gan_jax alone
against_args=(); [ -n "$against" ] && against_args=(--against $against)
if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
  archs="fc_gan"; big=fc_gan; sweep_archs=fc_gan; small=8; large=16; members=2
  quick=(--repeats 1 --steps-per-call 2 --config.model.kwargs.g_hidden="(32,32)"
         --config.model.kwargs.d_hidden="(16,)")
else
  archs="fc_gan dcgan28 dcgan64 lsgan32"; big=dcgan64; sweep_archs="fc_gan dcgan28"
  small=64; large=1024; members=8
  quick=(--steps-per-call 5)   # on the GPU 5 fused steps for every model (the configs' 1s are for CPU)
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda}   # fail at once if JAX cannot use the GPU
fi
"$py" -c 'import jax; print("jax", jax.__version__, jax.devices())'
"$py" experiments/tools/bench.py $archs --batch $small --dtype float32 bfloat16 \
  ${against_args[@]+"${against_args[@]}"} --json "$tmp/small.json" ${quick[@]+"${quick[@]}"}
"$py" experiments/tools/bench.py $big --batch $large --dtype bfloat16 float32 \
  ${against_args[@]+"${against_args[@]}"} --json "$tmp/large.json" ${quick[@]+"${quick[@]}"}
"$py" experiments/tools/bench_sweep.py $sweep_archs --members $members --batch $small \
  --json "$tmp/sweep.json" ${quick[@]+"${quick[@]}"}
"$py" experiments/tools/gpu_report.py "$tmp/small.json" "$tmp/large.json" \
  --sweep "$tmp/sweep.json" > "$out"
cat "$out"
echo "written: $out"
