#!/usr/bin/env bash
# Make .venv and install everything: torch (TORCH_SPEC), the package with its dev extras, and MinkowskiEngine
# (built CPU-only from its sdist where no CUDA is present; scripts/build_minkowski.sh). Idempotent: a stamp keyed
# on what determines the install makes a second run a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV="${VENV:-.venv}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="${EXTRAS:-dev,spconv,s3,tensorboard,export}"

say() { printf '[install] %s\n' "$*"; }
fail() { printf '[install] FAILED: %s\n' "$*" >&2; exit 1; }

stamp_key=$( { echo "$TORCH_SPEC $EXTRAS ${SKIP_MINKOWSKI:-0}"; cat pyproject.toml scripts/install.sh scripts/build_minkowski.sh 2>/dev/null; } | sha256sum | cut -c1-16)
stamp="$VENV/.distill-cache-installed-$stamp_key"
if [ -f "$stamp" ] && "$VENV/bin/python" -c "import cache_schema, pipeline, stages" 2>/dev/null; then
  say "up to date ($VENV)"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV" || fail "python -m venv $VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
"${PIP[@]}" install -q --upgrade pip setuptools wheel >/dev/null || fail "upgrading pip"
say "installing $TORCH_SPEC (override with TORCH_SPEC=...)"
"${PIP[@]}" install -q "$TORCH_SPEC" || fail "pip install $TORCH_SPEC"
say "installing distill-cache[$EXTRAS] (editable)"
"${PIP[@]}" install -q -e ".[$EXTRAS]" || fail "pip install -e .[$EXTRAS]"

if [ "${SKIP_MINKOWSKI:-0}" = "1" ]; then
  say "SKIP_MINKOWSKI=1: not building MinkowskiEngine (the torch backend still works)"
else
  say "MinkowskiEngine (scripts/build_minkowski.sh)"
  if ! VENV="$VENV" bash scripts/build_minkowski.sh; then
    if [ "${REQUIRE_MINKOWSKI:-0}" = "1" ]; then fail "MinkowskiEngine build (REQUIRE_MINKOWSKI=1)"; fi
    say "WARNING: MinkowskiEngine did not build; every other backend still works (see 'distill-cache backends')"
  fi
fi
rm -f "$VENV"/.distill-cache-installed-*
touch "$stamp"
say "done: $("$VENV/bin/distill-cache" --version)"
