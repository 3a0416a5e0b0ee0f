#!/usr/bin/env bash
# Download, here, the wheels a lent GPU machine lacks for `make gpu-check` into .whl/ (ignored by git; never commit
# it): the pins of scripts/gpu_wheels.txt, built for CPython 3.12 on manylinux x86-64 (the device's interpreter),
# without their dependencies (each one the device lacks is pinned there too). Then bench/gpu_wheels.py checks the
# folder: installable there, one version per package, every requirement met by a wheel or by the device's image,
# within what one call may carry. Idempotent: pip reuses the files already in the folder. ~13 MB.
#
# Variables: PYTHON (an interpreter with pip and `packaging`; default .venv/bin/python, else python3), DEST (.whl).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
[[ -x $PYTHON ]] || PYTHON=python3
DEST=${DEST:-.whl}
mkdir -p "$DEST"
mapfile -t pins < <(PYTHONPATH=$PWD "$PYTHON" -m bench.gpu_wheels pins)
# the platform tags the tool library's device README names; pip matches each manylinux glibc version exactly
"$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_5_x86_64 \
  -d "$DEST" "${pins[@]}"
PYTHONPATH=$PWD "$PYTHON" -m bench.gpu_wheels check "$DEST"
