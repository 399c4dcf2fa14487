"""The arithmetic backend contract and the once-per-process backend choice.

A backend implements BLS12-381 group arithmetic on *opaque handles*: each
backend picks its own in-memory representation (the native backend keeps the
raw mcl structs as ``bytes``, the pure one keeps py-ecc tuples). Handles never
cross backends; the public wrappers in :mod:`core.curve` check that. Scalars are
plain Python ints already reduced into ``[0, r)``.

Both backends must give byte-identical encodings for every operation, the
pairing included (see ``shared/design/CRYPTO.md``).
"""

from __future__ import annotations

import os
import threading
from typing import Any, Protocol, Sequence

from .errors import BackendError

#: Order r of G1, G2 and GT (the BLS12-381 scalar field modulus).
R = 0x73EDA753299D7D483339D80809A1D80553BDA402FFFE5BFEFFFFFFFF00000001
#: The base field modulus p.
P = 0x1A0111EA397FE69A4B1BA7B6434BACD764774B84F38512BF6730D2A0F6B0F6241EABFFFEB153FFFFB9FEFFFFFFFFAAAB

Handle = Any

ENV_VAR = "EMRSHARE_BACKEND"


class Backend(Protocol):
    """What an arithmetic backend provides. Decoders raise ``DecodeError``."""

    name: str

    # --- G1 -----------------------------------------------------------
    def g1_generator(self) -> Handle: ...
    def g1_identity(self) -> Handle: ...
    def g1_decode(self, data: bytes) -> Handle: ...  # 48 bytes, full validation, identity allowed
    def g1_encode(self, a: Handle) -> bytes: ...
    def g1_add(self, a: Handle, b: Handle) -> Handle: ...
    def g1_neg(self, a: Handle) -> Handle: ...
    def g1_mul(self, a: Handle, k: int, secret: bool) -> Handle: ...  # secret=True: constant time
    def g1_msm(self, points: Sequence[Handle], scalars: Sequence[int]) -> Handle: ...  # public scalars
    def g1_eq(self, a: Handle, b: Handle) -> bool: ...
    def g1_is_identity(self, a: Handle) -> bool: ...

    # --- G2 -----------------------------------------------------------
    def g2_generator(self) -> Handle: ...
    def g2_identity(self) -> Handle: ...
    def g2_decode(self, data: bytes) -> Handle: ...  # 96 bytes
    def g2_encode(self, a: Handle) -> bytes: ...
    def g2_add(self, a: Handle, b: Handle) -> Handle: ...
    def g2_neg(self, a: Handle) -> Handle: ...
    def g2_mul(self, a: Handle, k: int, secret: bool) -> Handle: ...
    def g2_msm(self, points: Sequence[Handle], scalars: Sequence[int]) -> Handle: ...
    def g2_eq(self, a: Handle, b: Handle) -> bool: ...
    def g2_is_identity(self, a: Handle) -> bool: ...

    # --- pairing --------------------------------------------------------
    def pairing(self, p: Handle, q: Handle) -> Handle: ...
    def multi_pairing(self, ps: Sequence[Handle], qs: Sequence[Handle]) -> Handle: ...
    def g2_prepare(self, q: Handle) -> Handle: ...  # precomputed G2 argument
    def pairing_prepared(self, p: Handle, prepared: Handle) -> Handle: ...

    # --- GT -------------------------------------------------------------
    def gt_one(self) -> Handle: ...
    def gt_generator(self) -> Handle: ...  # Z = e(g1, g2)
    def gt_decode(self, data: bytes) -> Handle: ...  # 576 bytes, subgroup checked
    def gt_encode(self, a: Handle) -> bytes: ...
    def gt_mul(self, a: Handle, b: Handle) -> Handle: ...
    def gt_inv(self, a: Handle) -> Handle: ...
    def gt_pow(self, a: Handle, k: int) -> Handle: ...
    def gt_multi_pow(self, bases: Sequence[Handle], exps: Sequence[int]) -> Handle: ...
    def gt_generator_pow(self, k: int) -> Handle: ...  # Z^k, may use a fixed-base table
    def gt_eq(self, a: Handle, b: Handle) -> bool: ...


_lock = threading.Lock()
_cache: dict[str, Backend] = {}
_active: tuple[Backend, str] | None = None


def load_backend(name: str) -> Backend:
    """Load the backend called ``name`` ("native" or "pure"); raises BackendError."""
    with _lock:
        if name in _cache:
            return _cache[name]
        if name == "pure":
            from ._pure import PureBackend

            backend: Backend = PureBackend()
        elif name == "native":
            try:
                from native.backend import NativeBackend
            except ImportError as exc:  # extension not built
                raise BackendError(
                    f"the native backend is not available ({exc}); build it with "
                    "`python -m native.build`"
                ) from exc
            backend = NativeBackend()
        else:
            raise BackendError(f"unknown backend {name!r}: expected 'native' or 'pure'")
        _cache[name] = backend
        return backend


def available_backends() -> list[str]:
    """Names of the backends that load in this process, native first."""
    names = []
    for name in ("native", "pure"):
        try:
            load_backend(name)
        except BackendError:
            continue
        names.append(name)
    return names


def _choose() -> tuple[Backend, str]:
    forced = os.environ.get(ENV_VAR, "").strip().lower()
    if forced in ("native", "pure"):
        return load_backend(forced), f"forced by {ENV_VAR}={forced}"
    if forced not in ("", "auto"):
        raise BackendError(f"{ENV_VAR}={forced!r} is not one of auto, native, pure")
    try:
        return load_backend("native"), "the native mcl extension is built and loaded"
    except BackendError as exc:
        return load_backend("pure"), f"native backend unavailable: {exc}"


def active_backend() -> Backend:
    """The process-wide backend, chosen on first use and never changed."""
    global _active
    if _active is None:
        choice = _choose()
        with _lock:
            if _active is None:
                _active = choice
    return _active[0]


def backend_name() -> str:
    return active_backend().name


def selection_reason() -> str:
    active_backend()
    assert _active is not None
    return _active[1]
