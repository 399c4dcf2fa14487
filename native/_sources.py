"""What the extension is built from, and the hash that names it.

Shared by the build script (:mod:`native.build`, which compiles the hash into
the extension as ``emr_source_hash()``) and the binding (:mod:`native.backend`,
which refuses an extension whose compiled hash differs from the hash of the
sources next to it). Keeping this here means the binding never imports the
build script at run time.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

PYMCL_VERSION = "1.0.2"
PYMCL_SHA256 = "ef532851ba7785db68aa55ce21153bff94afd56f537c1bfe11c07afb7d83b438"
MCL_VERSION = "v3.04"

NATIVE_DIR = Path(__file__).resolve().parent
CDEF_FILES = ("mcl.h", "helpers.h")
C_SOURCES = ("helpers.c",)
CXX_SOURCES = ("gt_membership.cpp",)
CFLAGS = ("-O2", "-std=c99")
# Same configuration macros as libmcl.a (none): the header's inline functions must
# match the library's copies.
CXXFLAGS = ("-O2", "-std=c++11", "-fPIC")
LDFLAGS = ("-Wl,--strip-debug",)  # libmcl.a is built with -g3: 8 MB of debug info otherwise


def source_hash(directory: Path = NATIVE_DIR) -> str:
    """Hash of everything the extension is built from (pins, flags and the
    declaration and helper sources in ``directory``)."""
    h = hashlib.sha256()
    h.update(f"pymcl={PYMCL_VERSION};sha={PYMCL_SHA256};cflags={CFLAGS};ldflags={LDFLAGS}".encode())
    h.update(f";cxxflags={CXXFLAGS}".encode())
    for name in CDEF_FILES + C_SOURCES + CXX_SOURCES:
        data = (directory / name).read_bytes()
        h.update(name.encode() + b"\0" + len(data).to_bytes(8, "big") + data)
    return h.hexdigest()[:32]
