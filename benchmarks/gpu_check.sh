#!/usr/bin/env bash
# Everything the GPU machine is needed for, in one call: the CuPy test session, the
# examples on CuPy, the benchmark (with its 5-epoch device-memory trace) and the call
# count. Each step runs even when an earlier one failed; the summary says which did.
#
# Here, first (the GPU machine has no package registry and no datasets):
#   ../shared/tools/device-wheels                       # array-api-compat/strict, nox -> .whl/
#   mkdir -p data/fashion-mnist && cp /usr/share/datasets/fashion-mnist/*.gz data/fashion-mnist/
# then with the device tool, carrying .whl and data (about 30 MiB):
#   bash benchmarks/gpu_check.sh                        # logs under $OUT (8 files)
# All steps may not fit one 10-minute call: ONLY="tests-cupy mlp cnn" and ONLY="bench bench-bare"
# split them in two.
#
# Usage: [ONLY="step ..."] benchmarks/gpu_check.sh [BACKEND]
#   BACKEND: cupy (default); numpy tries the script on a CPU.
#   steps: tests-cupy mlp cnn bench bench-bare (default: all).
set -uo pipefail
backend=${1:-cupy}
out=${OUT:-outputs/gpu-check}
keep=outputs/gpu-check-files  # checkpoints and plots: not brought back, the device tool returns 8 files
only=" ${ONLY:-tests-cupy mlp cnn bench bench-bare} "
mkdir -p "$out" "$keep"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=$PWD:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
[ -d data ] && export NNXP_DATA_DIR=$PWD/data
summary=()
step() {  # step NAME COMMAND...: run, keep the output in $out/NAME.txt, note the exit status
  local name=$1; shift
  [[ $only == *" $name "* ]] || return 0
  echo "== $name: $*"
  local t0=$SECONDS
  "$@" >"$out/$name.txt" 2>&1
  local rc=$?
  tail -n 4 "$out/$name.txt"
  summary+=("$name: exit $rc, $((SECONDS - t0)) s")
}

machine=$( (nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 || true)
  python3 -c "import cupy; print('cupy', cupy.__version__)" 2>&1 | tail -n 1)
if [ "$backend" = cupy ]; then
  step tests-cupy python3 -m nox -s tests-cupy
fi
step mlp python3 examples/mnist_mlp.py --backend "$backend" --dataset fashion-mnist --no-download \
  --verbose 2 --out "$keep"
step cnn python3 examples/mnist_cnn.py --backend "$backend" --dataset fashion-mnist --no-download \
  --verbose 2 --out "$keep"
step bench python3 benchmarks/bench.py --backend "$backend" --compile --repeats 5 --mem-epochs 5 \
  --json "$out/bench.json"
step bench-bare python3 benchmarks/bench.py --backend "$backend" --cases mlp64,mlp1024 --repeats 5 \
  --check-finite off --no-train-accuracy --no-calls --json "$out/bench-bare.json"
printf '%s\n' "$(date -u +%FT%TZ) backend $backend" "$machine" "${summary[@]}" | tee "$out/summary.txt"
