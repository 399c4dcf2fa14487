"""Build the native pairing core: mcl (static) plus a cffi extension, in place.

``python -m native.build [--strict] [--force]``

1. Fetch the pymcl 1.0.2 sdist from PyPI (pinned version and sha256), take
   ``third_party/mcl`` out of it and build ``lib/libmcl.a`` with
   ``MCL_USE_GMP=0 MCL_USE_OPENSSL=0``. The library and its headers are cached
   under ``${XDG_CACHE_HOME:-~/.cache}/emrshare/mcl-v3.04-<sha prefix>/``, so
   repeated installs do not rebuild it.
2. Compile ``native._mcl_cffi`` (cffi, out-of-line API mode) from the
   declarations in ``native/mcl.h`` + ``native/helpers.h``, the C helpers in
   ``native/helpers.c`` and the C++ helpers in ``native/gt_membership.cpp``
   (mcl's C++ headers, ``extern "C"`` entry points; compiled to an object with
   ``g++`` first), linking ``libmcl.a`` statically. A stamp (a hash of
   every input, :mod:`native._sources`) lets a second run skip the compile; the
   same hash is compiled into the extension, and :mod:`native.backend` refuses
   an extension built from other sources.

If anything fails the build prints one warning line and exits 0 (the pure
backend is then used); ``--strict`` exits non-zero instead.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path
from typing import Sequence

from ._sources import (
    C_SOURCES,
    CDEF_FILES,
    CFLAGS,
    CXX_SOURCES,
    CXXFLAGS,
    LDFLAGS,
    MCL_VERSION,
    NATIVE_DIR,
    PYMCL_SHA256,
    PYMCL_VERSION,
)
from ._sources import source_hash as _source_hash

PYPI_JSON = f"https://pypi.org/pypi/pymcl/{PYMCL_VERSION}/json"
MODULE_NAME = "native._mcl_cffi"
STAMP_PATH = NATIVE_DIR / "_build" / "stamp.json"


class BuildError(Exception):
    """A build step failed; the message is the one-line reason."""


def _progress(msg: str) -> None:
    print(f"emrshare: {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------ mcl (cached)


def cache_dir() -> Path:
    """Where libmcl.a and its headers are cached for this pinned source."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "emrshare" / f"mcl-{MCL_VERSION}-{PYMCL_SHA256[:12]}"


def mcl_cached(cache: Path | None = None) -> bool:
    cache = cache or cache_dir()
    return (cache / "lib" / "libmcl.a").is_file() and (
        cache / "include" / "mcl" / "bn_c384_256.h"
    ).is_file()


def _download_sdist(dest: Path) -> Path:
    """Download the pinned sdist into ``dest``; urllib first, then pip."""
    import urllib.request

    target = dest / f"pymcl-{PYMCL_VERSION}.tar.gz"
    errors = []
    try:
        with urllib.request.urlopen(PYPI_JSON, timeout=30) as resp:
            meta = json.load(resp)
        urls = [u for u in meta.get("urls", []) if u.get("packagetype") == "sdist"]
        if not urls:
            raise BuildError("PyPI lists no sdist for pymcl " + PYMCL_VERSION)
        with urllib.request.urlopen(urls[0]["url"], timeout=120) as resp, open(target, "wb") as out:
            shutil.copyfileobj(resp, out)
        return target
    except Exception as exc:  # noqa: BLE001 - any failure falls back to pip
        errors.append(f"urllib: {exc}")
    try:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
             "--dest", str(dest), f"pymcl=={PYMCL_VERSION}"],
            check=True, capture_output=True, timeout=300,
        )
    except Exception as exc:  # noqa: BLE001
        errors.append(f"pip download: {exc}")
        raise BuildError("could not download pymcl sdist (" + "; ".join(errors) + ")") from exc
    found = sorted(dest.glob("pymcl-*.tar.gz"))
    if not found:
        raise BuildError("pip download produced no pymcl sdist")
    return found[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_mcl(cache: Path | None = None) -> Path:
    """Return the cache directory holding lib/libmcl.a and include/, building it if needed."""
    import tarfile

    cache = cache or cache_dir()
    if mcl_cached(cache):
        return cache
    if shutil.which("make") is None:
        raise BuildError("`make` not found")
    if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        raise BuildError("no C++ compiler found (g++)")
    cache.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="emrshare-mcl-") as tmp:
        tmp_path = Path(tmp)
        _progress(f"downloading pymcl {PYMCL_VERSION} sdist (mcl {MCL_VERSION})")
        sdist = _download_sdist(tmp_path)
        digest = _sha256(sdist)
        if digest != PYMCL_SHA256:
            raise BuildError(f"sha256 mismatch for {sdist.name}: got {digest}")
        prefix = f"pymcl-{PYMCL_VERSION}/third_party/mcl/"
        with tarfile.open(sdist, "r:gz") as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            if not members:
                raise BuildError("sdist has no third_party/mcl")
            if hasattr(tarfile, "data_filter"):
                tar.extractall(tmp_path, members=members, filter="data")
            else:  # Python < 3.11.4: refuse anything that is not a plain file or directory
                for m in members:
                    if not (m.isfile() or m.isdir()) or ".." in Path(m.name).parts:
                        raise BuildError(f"unexpected member in sdist: {m.name}")
                tar.extractall(tmp_path, members=members)
        src = tmp_path / prefix
        _progress("building mcl (libmcl.a, about 30 s)")
        jobs = str(min(os.cpu_count() or 1, 2))
        t0 = time.monotonic()
        proc = subprocess.run(
            ["make", "lib/libmcl.a", "MCL_USE_GMP=0", "MCL_USE_OPENSSL=0", f"-j{jobs}"],
            cwd=src, capture_output=True, text=True,
        )
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["?"]
            raise BuildError(f"make lib/libmcl.a failed: {tail[0]}")
        _progress(f"mcl built in {time.monotonic() - t0:.0f} s")
        staging = Path(tempfile.mkdtemp(prefix=cache.name + ".", dir=cache.parent))
        try:
            (staging / "lib").mkdir()
            shutil.copy2(src / "lib" / "libmcl.a", staging / "lib" / "libmcl.a")
            shutil.copytree(src / "include", staging / "include")
            shutil.copy2(src / "COPYRIGHT", staging / "COPYRIGHT")
            try:
                os.rename(staging, cache)  # atomic; loses the race gracefully
            except OSError:
                if not mcl_cached(cache):
                    raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if not mcl_cached(cache):
        raise BuildError(f"mcl cache incomplete at {cache}")
    return cache


# ------------------------------------------------------------------ cffi extension


def read_cdef() -> str:
    return "\n".join((NATIVE_DIR / name).read_text() for name in CDEF_FILES)


def source_hash() -> str:
    """Hash of everything the extension is built from (also compiled into it)."""
    return _source_hash(NATIVE_DIR)


def extension_path() -> Path:
    return NATIVE_DIR / ("_mcl_cffi" + sysconfig.get_config_var("EXT_SUFFIX"))


def extension_up_to_date() -> bool:
    """True when the built extension matches the current sources and mcl cache."""
    if not extension_path().is_file() or not STAMP_PATH.is_file():
        return False
    try:
        stamp = json.loads(STAMP_PATH.read_text())
    except (OSError, ValueError):
        return False
    # libmcl.a is linked in statically and pinned by the hash: the extension
    # stays valid even if the mcl cache is removed later.
    return stamp.get("source_hash") == source_hash()


def up_to_date() -> bool:
    """True when a build would be a pure cache hit (nothing to download or compile)."""
    return extension_up_to_date()


def _cxx_compiler() -> str:
    for cand in (os.environ.get("CXX"), "g++", "c++"):
        if cand and shutil.which(cand):
            return cand
    raise BuildError("no C++ compiler found (g++)")


def compile_cxx(mcl: Path, workdir: Path) -> list[Path]:
    """Compile the C++ helpers to position-independent objects; return their paths."""
    cxx = _cxx_compiler()
    objects = []
    for name in CXX_SOURCES:
        obj = workdir / (Path(name).stem + ".o")
        proc = subprocess.run(
            [cxx, *CXXFLAGS, f"-I{mcl / 'include'}", f"-I{NATIVE_DIR}", "-c", str(NATIVE_DIR / name),
             "-o", str(obj)],
            capture_output=True, text=True,
        )
        if proc.returncode != 0:
            lines = (proc.stderr or proc.stdout).splitlines()
            errors = [ln.strip() for ln in lines if "error" in ln.lower()]
            raise BuildError(f"compiling {name} failed: {(errors or lines[-1:] or ['?'])[0]}")
        objects.append(obj)
    return objects


def make_ffibuilder(mcl: Path, objects: Sequence[Path] = ()):
    import cffi

    ffibuilder = cffi.FFI()
    ffibuilder.cdef(read_cdef())
    ffibuilder.set_source(
        MODULE_NAME,
        '#include <mcl/bn_c384_256.h>\n#include "helpers.h"\n',
        sources=[str(NATIVE_DIR / name) for name in C_SOURCES],
        include_dirs=[str(mcl / "include"), str(NATIVE_DIR)],
        extra_objects=[str(o) for o in objects] + [str(mcl / "lib" / "libmcl.a")],
        libraries=["stdc++"],
        extra_link_args=list(LDFLAGS),
        extra_compile_args=list(CFLAGS) + [f'-DEMR_SOURCE_HASH="{source_hash()}"'],
    )
    return ffibuilder


def build_extension(mcl: Path) -> Path:
    if shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None:
        raise BuildError("no C compiler found (cc)")
    _progress("compiling the cffi extension native._mcl_cffi")
    workdir = NATIVE_DIR / "_build"
    workdir.mkdir(exist_ok=True)
    ffibuilder = make_ffibuilder(mcl, compile_cxx(mcl, workdir))
    # The compiler writes to fd 2 directly: capture it, so that a failure is
    # reported as one line (the first compiler error) and success is quiet.
    with tempfile.TemporaryFile(mode="w+b") as log:
        sys.stderr.flush()
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            built = ffibuilder.compile(tmpdir=str(workdir), verbose=False)
            failure = None
        except Exception as exc:  # noqa: BLE001 - setuptools/compiler errors vary
            failure = exc
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        if failure is not None:
            log.seek(0)
            lines = log.read().decode(errors="replace").splitlines()
            errors = [ln.strip() for ln in lines if "error" in ln.lower()]
            detail = (errors or [str(failure).strip()] or ["?"])[0]
            raise BuildError(f"compiling the cffi extension failed: {detail}") from failure
    built_path = Path(built)
    target = extension_path()
    if built_path.resolve() != target.resolve():
        shutil.copy2(built_path, target)
    # cffi leaves the generated C next to the objects; keep only the stamp.
    STAMP_PATH.write_text(json.dumps({"source_hash": source_hash(), "mcl": str(mcl)}))
    return target


def build(force: bool = False) -> Path:
    """Build what is missing; return the extension path. Raises BuildError."""
    if not force and extension_up_to_date():
        _progress("native backend up to date (cache hit)")
        return extension_path()
    return build_extension(build_mcl())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m native.build", description=__doc__.split("\n")[0])
    parser.add_argument("--strict", action="store_true", help="exit non-zero if the build fails")
    parser.add_argument("--force", action="store_true", help="recompile the cffi extension")
    args = parser.parse_args(argv)
    try:
        path = build(force=args.force)
    except Exception as exc:  # noqa: BLE001 - any failure means "use the pure backend"
        print(
            f"emrshare: native backend not built: {exc}; the pure-Python backend will be used",
            file=sys.stderr,
        )
        return 1 if args.strict else 0
    _progress(f"native backend ready: {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
