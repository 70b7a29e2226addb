#!/usr/bin/env bash
# The whole GPU check in one go (536 s on one H200, 2026-12-04): gan_jax's
# training step against PyTorch (eager and torch.compile) at batch 64 on FC
# GAN and DCGAN-28, an 8-member sweep against 8 sequential runs, and DCGAN-64
# at batch 1024, all in bf16 (what model.dtype='auto' picks on a GPU, against
# PyTorch's bf16 autocast); writes one Markdown page with the tables and the
# targets (experiments/tools/gpu_report.py). GPU_CHECK_ALL=1 adds fp32 rows
# to the bench stages and DCGAN-64 and LSGAN-32 at batch 64 (about twice as
# long: XLA:GPU's compiles dominate). The stages run in that order and each keeps
# its rows beside the page (OUT.targets.json, OUT.sweep.json, OUT.large.json,
# OUT.more.json), so a run cut short still leaves what it measured.
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
raw=${out%.md}
against=${GPU_CHECK_AGAINST-torch torch_compile}   # "" = gan_jax alone
against_args=(); [ -n "$against" ] && against_args=(--against $against)
dtypes="bfloat16"; [ "${GPU_CHECK_ALL:-0}" = 1 ] && dtypes="bfloat16 float32"
if [ "${GPU_CHECK_QUICK:-0}" = 1 ]; then
  archs="fc_gan"; more=""; big=fc_gan; sweep_archs=fc_gan; small=8; large=16; members=2
  quick=(--repeats 1 --steps-per-call 2 --config.model.kwargs.g_hidden="(32,32)"
         --config.model.kwargs.d_hidden="(16,)")
else
  archs="fc_gan dcgan28"; big=dcgan64; sweep_archs="fc_gan dcgan28"
  more=""; [ "${GPU_CHECK_ALL:-0}" = 1 ] && more="dcgan64 lsgan32"
  small=64; large=1024; members=8
  quick=(--steps-per-call 5)   # on the GPU 5 fused steps for every model (the configs' 1s are for CPU)
  # cpu beside cuda: bench.py counts FLOPs on the CPU client (JAX has no count
  # for the CUDA plugin). Where no GPU device exists JAX skips cuda without a
  # word, so the check below stops the run instead of timing the CPU.
  export JAX_PLATFORMS=${JAX_PLATFORMS:-cuda,cpu}
  need_gpu=1
fi
"$py" - "${need_gpu:-0}" <<'EOF'
import os, sys, jax
print("jax", jax.__version__, jax.devices())
if sys.argv[1] == "1" and jax.default_backend() != "gpu":
  sys.exit(f"gpu_check: JAX sees no GPU (default backend {jax.default_backend()!r}, "
           f"JAX_PLATFORMS={os.environ.get('JAX_PLATFORMS')!r}): install JAX with CUDA on a GPU "
           "machine, or set GPU_CHECK_QUICK=1 to try the script on a CPU")
EOF
if compgen -G ".whl/*.whl" >/dev/null; then
  site=$(mktemp -d)
  trap 'rm -rf "$site"' EXIT
  "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" .whl/*.whl
  export PYTHONPATH="$site:$PYTHONPATH"
fi
bench() {
  "$py" experiments/tools/bench.py "$@" --dtype $dtypes \
    ${against_args[@]+"${against_args[@]}"} ${quick[@]+"${quick[@]}"}
}
bench $archs --batch $small --json "$raw.targets.json"
"$py" experiments/tools/bench_sweep.py $sweep_archs --members $members --batch $small \
  --dtype ${dtypes%% *} --json "$raw.sweep.json" ${quick[@]+"${quick[@]}"}
bench $big --batch $large --json "$raw.large.json"
runs=("$raw.targets.json")
if [ -n "$more" ]; then
  bench $more --batch $small --json "$raw.more.json"
  runs+=("$raw.more.json")
fi
"$py" experiments/tools/gpu_report.py "${runs[@]}" "$raw.large.json" --sweep "$raw.sweep.json" \
  > "$out"
cat "$out"
echo "written: $out"
