#!/usr/bin/env bash
# Build MinkowskiEngine 0.5.4 (CPU-only) against the venv's torch and install it there.
#
# Idempotent: exits at once if `import MinkowskiEngine` already works; reuses a wheel already built into
# WHEEL_DIR. The recipe is the one measured in MEASURED.md (torch 2.x needs the collections.abc patch and
# numpy<2 + stdlib distutils at build time; the built wheel then runs beside numpy 2).
#
# Environment / arguments:
#   VENV       venv to install into (default: .venv; also accepted as the first argument)
#   WHEEL_DIR  where built wheels are kept (default: ~/.cache/distill-cache/wheels)
#   MAX_JOBS   parallel compile jobs (default: 2)
#   TORCH_INDEX_URL  optional extra pip index holding the venv's torch build (e.g. the CPU wheel index)
#   SKIP_MINKOWSKI=1   do nothing
set -Eeuo pipefail

VENV="${1:-${VENV:-.venv}}"
WHEEL_DIR="${WHEEL_DIR:-$HOME/.cache/distill-cache/wheels}"
MAX_JOBS="${MAX_JOBS:-2}"
ME_VERSION="0.5.4"
PY="$VENV/bin/python"

say() { echo "[build_minkowski] $*" >&2; }

STEP=""
LOG=""
on_error() {
    local rc=$?
    say "FAILED at step: ${STEP:-unknown} (exit $rc)"
    if [[ -n "$LOG" && -f "$LOG" ]]; then
        say "last lines of $LOG:"
        tail -n 40 "$LOG" >&2
    fi
    exit "$rc"
}
trap on_error ERR

# Run a step with its output in a log file, so a failure can show the tail of what went wrong.
run_step() {
    STEP="$1"; shift
    LOG="$WORK/$(echo "$STEP" | tr -c 'a-zA-Z0-9' '_').log"
    say "step: $STEP"
    "$@" >"$LOG" 2>&1
}

if [[ "${SKIP_MINKOWSKI:-0}" == "1" ]]; then
    say "SKIP_MINKOWSKI=1: skipping the MinkowskiEngine build"
    exit 0
fi
if [[ ! -x "$PY" ]]; then
    say "no python at $PY: create the venv first (VENV=$VENV)"
    exit 2
fi
if "$PY" -c "import MinkowskiEngine" >/dev/null 2>&1; then
    say "MinkowskiEngine already importable in $VENV: nothing to do"
    exit 0
fi

WORK="$(mktemp -d "${TMPDIR:-/tmp}/build_minkowski.XXXXXX")"
mkdir -p "$WHEEL_DIR"
TORCH_VERSION="$("$PY" -c 'import torch; print(torch.__version__.split("+")[0])')"
PYTAG="$("$PY" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')"
say "venv=$VENV torch=$TORCH_VERSION python=$PYTAG wheel_dir=$WHEEL_DIR work=$WORK"

# A wheel is only reusable for the same Python; torch's ABI is recorded in the file name we give it.
STORED="$WHEEL_DIR/torch-$TORCH_VERSION"
shopt -s nullglob
existing=("$STORED"/[Mm]inkowski[Ee]ngine-"$ME_VERSION"-"$PYTAG"-*.whl)
shopt -u nullglob

if [[ ${#existing[@]} -eq 0 ]]; then
    # Runtime and build both need OpenBLAS (setup.py links against it on CPU).
    if ! dpkg -s libopenblas-dev >/dev/null 2>&1; then
        if [[ "$(id -u)" == "0" ]]; then
            run_step "apt-get install libopenblas-dev" bash -c \
                "apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y libopenblas-dev"
        else
            say "libopenblas-dev is missing and this is not root: run"
            say "    sudo apt-get install -y libopenblas-dev"
            say "then re-run this script."
            exit 3
        fi
    else
        say "libopenblas-dev already installed"
    fi

    BUILD_VENV="$WORK/build-venv"
    run_step "create build venv" "$PY" -m venv "$BUILD_VENV"
    BPIP="$BUILD_VENV/bin/pip"
    # The same torch as the target venv (ABI), numpy<2 (numpy.distutils in setup.py); pip's cache is reused.
    # Pin the full version (e.g. 2.13.0+cpu) so a CPU venv never pulls the CUDA build; TORCH_INDEX_URL may name
    # an extra index holding it (pip's own configuration / find-links are used otherwise).
    TORCH_FULL="$("$PY" -c 'import torch; print(torch.__version__)')"
    TORCH_INDEX=()
    if [[ -n "${TORCH_INDEX_URL:-}" ]]; then
        TORCH_INDEX=(--extra-index-url "$TORCH_INDEX_URL")
    fi
    run_step "install build requirements (torch==$TORCH_FULL, numpy<2, ninja, wheel)" \
        "$BPIP" install "${TORCH_INDEX[@]}" "torch==$TORCH_FULL" "numpy<2" ninja wheel setuptools

    SRC_DL="$WORK/sdist"
    mkdir -p "$SRC_DL"
    run_step "download MinkowskiEngine==$ME_VERSION sdist" env SETUPTOOLS_USE_DISTUTILS=stdlib \
        "$BPIP" download --no-deps --no-build-isolation --no-binary :all: -d "$SRC_DL" \
        "MinkowskiEngine==$ME_VERSION"
    run_step "unpack sdist" tar -xzf "$SRC_DL"/MinkowskiEngine-"$ME_VERSION".tar.gz -C "$WORK"
    SRC="$WORK/MinkowskiEngine-$ME_VERSION"

    # Python 3.10 removed the collections aliases. MinkowskiKernelGenerator.py also imports namedtuple on the same
    # line, which must stay in collections. Idempotent: patched lines no longer match.
    STEP="patch collections.abc imports"
    say "step: $STEP"
    for f in MinkowskiCoordinateManager.py MinkowskiKernelGenerator.py MinkowskiTensorField.py \
             MinkowskiCommon.py utils/quantization.py; do
        sed -i -e 's/^from collections import Sequence, namedtuple$/from collections import namedtuple\nfrom collections.abc import Sequence/' \
               -e 's/^from collections import Sequence$/from collections.abc import Sequence/' \
            "$SRC/MinkowskiEngine/$f"
        grep -q "^from collections.abc import Sequence$" "$SRC/MinkowskiEngine/$f" \
            || { say "patch did not apply to $f"; false; }
    done

    run_step "build wheel (MAX_JOBS=$MAX_JOBS; several minutes)" bash -c \
        "cd '$SRC' && SETUPTOOLS_USE_DISTUTILS=stdlib MAX_JOBS='$MAX_JOBS' \
         '$BPIP' wheel --no-build-isolation --no-deps -w '$WORK/wheel' ."
    mkdir -p "$STORED"
    cp "$WORK"/wheel/[Mm]inkowski[Ee]ngine-*.whl "$STORED"/
    existing=("$STORED"/[Mm]inkowski[Ee]ngine-"$ME_VERSION"-"$PYTAG"-*.whl)
    say "stored wheel: ${existing[0]}"
else
    say "reusing built wheel ${existing[0]}"
fi

run_step "install wheel into $VENV" "$PY" -m pip install --no-deps --force-reinstall "${existing[0]}"
run_step "check import" "$PY" -c "import MinkowskiEngine as ME; print(ME.__version__)"
say "MinkowskiEngine $("$PY" -c 'import MinkowskiEngine as ME; print(ME.__version__)') installed into $VENV"
rm -rf "$WORK"
