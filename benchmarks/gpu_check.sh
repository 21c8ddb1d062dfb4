#!/usr/bin/env bash
# The GPU check, first version: build the extension with its CUDA kernels for the local GPU, run the
# GPU tests, and measure host cost, kernel launches and the core ops on CUDA tensors. Each stage has
# a time limit and writes its log into OUTDIR; a stage that fails or runs out of time does not stop
# the next one, and its status is listed at the end.
#
#   bash benchmarks/gpu_check.sh OUTDIR
set -u
OUT=${1:?usage: gpu_check.sh OUTDIR}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
status=()

stage() {  # stage NAME SECONDS COMMAND...
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  status+=("$name: rc $rc in $((SECONDS - start)) s")
  echo "== $name: rc $rc in $((SECONDS - start)) s"
  tail -n 25 "$OUT/$name.log"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  $PY -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  nvcc --version | tail -n 2
} >"$OUT/environment.log" 2>&1
cat "$OUT/environment.log"

arch=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")
stage build 300 env TORCH_CUDA_ARCH_LIST="$arch" MAX_JOBS="$(nproc)" \
  $PY -m pip install --no-build-isolation --no-deps --no-index -e .
stage tests_gpu 150 $PY -m pytest -q -p no:cacheprovider -m "not slow" tests/test_gpu.py
stage tests_core 120 $PY -m pytest -q -p no:cacheprovider -x tests/test_engine.py tests/test_library.py tests/test_bad_input.py
stage overhead 90 $PY benchmarks/overhead.py --device cuda --calls 100
stage sweep 150 $PY benchmarks/sweep.py --device cuda --sweeps size shards k --repeats 3 --out-dir "$OUT/sweep"
printf '%s\n' "${status[@]}" | tee "$OUT/status.log"
