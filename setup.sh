#!/usr/bin/env bash
# Set up emrshare on a fresh machine: a virtual environment in .venv, the package
# with its test, bench and fhir extras, and the native mcl core (downloaded by exact version,
# hash-checked, built once and cached; if it cannot be built, the pure-Python
# backend is used and one warning says why).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[test,bench,fhir]'
.venv/bin/python -m native.build
