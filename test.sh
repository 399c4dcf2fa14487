#!/usr/bin/env bash
# The test command: the whole suite on the active (native) backend, then the
# crypto tests again on the pure-Python backend. `bash test.sh FILE...` runs the
# given tests the same way; when they hold no crypto test, the second run
# selects nothing (pytest's exit status 5), which is not a failure.
set -euo pipefail
cd "$(dirname "$0")"
.venv/bin/python -m pytest -q "$@"
status=0
EMRSHARE_BACKEND=pure .venv/bin/python -m pytest -q -m crypto "$@" || status=$?
if [ "$status" -eq 5 ]; then
    echo "(no crypto tests selected for the pure-Python run)"
    status=0
fi
exit "$status"
