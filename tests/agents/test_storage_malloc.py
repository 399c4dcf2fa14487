"""A storage node keeps its freed 1-2 MiB buffers (agents.runtime.keep_freed_buffers)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import os, resource, sys
from agents.runtime import keep_freed_buffers
if sys.argv[1] == "keep":
    assert keep_freed_buffers()
blob = os.urandom(1 << 20)
def churn():
    for _ in range(64):
        piece = bytes(bytearray(blob))  # a fresh 1 MiB buffer, touched, then freed
        del piece
churn()  # warm up
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
churn()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _CHILD, mode], cwd=ROOT, capture_output=True, text=True, check=True)
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_kept_buffers_are_not_faulted_in_again():
    kept = _faults("keep")
    assert kept < 64 * 16  # 64 MiB churned: next to no page faults (a fresh mapping faults 256 per MiB)
    assert kept * 4 < max(_faults("default"), 64)  # (glibc's default may already keep some)
