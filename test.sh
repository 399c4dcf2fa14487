#!/usr/bin/env bash
# The test command: the whole suite on the active (native) backend, then the
# crypto tests again on the pure-Python backend.
set -euo pipefail
cd "$(dirname "$0")"
.venv/bin/python -m pytest -q "$@"
EMRSHARE_BACKEND=pure .venv/bin/python -m pytest -q -m crypto "$@"
