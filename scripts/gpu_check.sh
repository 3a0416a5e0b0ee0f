#!/usr/bin/env bash
# The prepared GPU check (issue 16): every CUDA path tested and measured in one call, <= 8 min on one H100/H200.
#
# On a lent GPU. The machine has python3 with a CUDA torch but neither our other dependencies nor a network, so
# those travel as wheels in .whl/ (ignored by git), fetched here beforehand with `make gpu-wheels`. The call of the
# device tool:
#     run(command='bash scripts/gpu_check.sh --out "$OUT"', carry=[".whl"], timeout_s=480)
# It leaves in $OUT: gpu_check.json (machine, one record per step and per CUDA test, figures, targets),
# gpu_check.log (every command's output), bench/results.json + bench/README.md (bench.run's rows and table) and
# train_log.csv. To rerun some steps in the time left: add `--steps bench,train` (tests, bench, train, extract).
#
# Here, on the CPU: `make gpu-check-dry` (tiny sizes, the CUDA tests with the CPU standing in, the same JSON shape);
# `make test` runs that dry run too (tests/scripts/test_gpu_check.py).
#
# Variables: PYTHON (default python3, the device's interpreter, which holds torch), SITE (where the wheels go,
# default /tmp/gpu-check-site), OUT (default runs/gpu-check; --out wins). Options: bench/gpu_check.py --help.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SITE=${SITE:-/tmp/gpu-check-site}

dry=0
for arg in "$@"; do
  if [[ $arg == --dry-run ]]; then dry=1; fi
done

# the project itself is not installed there: the repository root goes on the path
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
setup="no wheels in .whl/: the interpreter's own packages"
shopt -s nullglob
wheels=(.whl/*.whl)
if ((dry)); then
  setup="dry run: the interpreter's own packages (wheels in .whl/, if any, are for the device's Python)"
elif ((${#wheels[@]})); then
  t0=$SECONDS
  pip_log=$(mktemp)
  if "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "${wheels[@]}" >"$pip_log" 2>&1; then
    setup="installed ${#wheels[@]} wheels from .whl/ into $SITE in $((SECONDS - t0)) s"
  else
    # recorded, not fatal: the steps then fail on the missing module and say which
    setup="FAILED to install the wheels of .whl/: $(tail -c 600 "$pip_log" | tr '\n' ' ')"
  fi
  rm -f "$pip_log"
  export PYTHONPATH="$SITE:$PYTHONPATH"
fi
echo "[gpu-check] $setup"
export GPU_CHECK_SETUP=$setup PYTHONUNBUFFERED=1
exec "$PYTHON" -m bench.gpu_check "$@"
