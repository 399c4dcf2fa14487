"""The arithmetic backends, and the once-per-process choice of them.

Two contracts. A curve :class:`Backend` implements BLS12-381 group arithmetic
on *opaque handles*: each backend picks its own in-memory representation (the
native backend keeps the raw mcl structs as ``bytes``, the pure one keeps
py-ecc tuples). Handles never cross backends; the group elements of
:mod:`core.curve` check that. Scalars are plain Python ints already reduced
into ``[0, r)``. Both curve backends give byte-identical encodings for every
operation, the pairing included (see ``shared/design/CRYPTO.md``). An
:class:`EcdsaBackend` signs and verifies secp256k1 digests (core/_secp256k1.py).

The choice, :func:`select`, is made once per process, for both at once:
``auto`` (the native mcl core when it is built, libsecp256k1 when coincurve
loads, else the pure-Python fallbacks), ``native`` or ``pure``; the mode comes
from ``EMRSHARE_BACKEND`` unless given. An explicit ``native`` that cannot load
raises :class:`~core.errors.BackendError`. The first :func:`select`, or the
first use of :func:`selection` (everything in core/ that computes goes through
it), fixes the choice; a later :func:`select` asking for something else
raises. core/ reads the environment nowhere else.

``select(counter=CallCounter(clock))`` (before anything loads a backend) wraps
every backend loaded in this process in a counting proxy (core/_counting.py):
the load test counts crypto calls that way.

:func:`load` and :func:`load_ecdsa` return the backend of a given name (one
object per name per process): for contract tests and benchmarks that run the
same code on each backend, through ``core.curve.api(load(name))``.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

from ._constants import P as P
from ._constants import R as R
from ._counting import CallCounter, CountingBackend, CountingEcdsa
from ._secp256k1 import NativeEcdsa, PureEcdsa
from .errors import BackendError

Handle = Any

ENV_VAR = "EMRSHARE_BACKEND"
MODES = ("auto", "native", "pure")


class Backend(Protocol):
    """What a curve backend provides. Decoders raise ``DecodeError``."""

    name: str

    # --- G1 -----------------------------------------------------------
    def g1_generator(self) -> Handle: ...
    def g1_identity(self) -> Handle: ...
    def g1_decode(self, data: bytes) -> Handle: ...  # 48 bytes, full validation, identity allowed
    def g1_encode(self, a: Handle) -> bytes: ...
    def g1_add(self, a: Handle, b: Handle) -> Handle: ...
    def g1_neg(self, a: Handle) -> Handle: ...
    def g1_mul(self, a: Handle, k: int, secret: bool) -> Handle: ...  # secret=True: constant time
    def g1_generator_mul(self, k: int) -> Handle: ...  # k g1, secret k (native: fixed-base table)
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


class EcdsaBackend(Protocol):
    """What an ECDSA implementation provides (secp256k1, 32-byte digests).

    ``is_valid_digest`` never raises on malformed input: it returns False."""

    name: str

    def public_key(self, private_key: bytes) -> bytes: ...  # 33-byte compressed
    def sign_digest(self, private_key: bytes, digest: bytes) -> bytes: ...  # 64-byte r || s, low s
    def is_valid_digest(self, public_key: bytes, digest: bytes, signature: bytes) -> bool: ...
    def check_public_key(self, public_key: bytes) -> bytes: ...  # DecodeError, else the compressed key


@dataclass(frozen=True)
class Selection:
    """The process's backends: the curve backend, the ECDSA implementation, why
    they were chosen, and the call counter when counting was asked for."""

    curve: Backend
    ecdsa: EcdsaBackend
    reason: str
    counter: CallCounter | None = None

    @property
    def name(self) -> str:
        return self.curve.name


_lock = threading.RLock()
_curves: dict[str, Backend] = {}
_ecdsas: dict[str, EcdsaBackend] = {}
_counter: CallCounter | None = None
_selection: Selection | None = None


def _load_curve(name: str) -> Backend:
    if name == "pure":
        from ._pure import PureBackend  # py-ecc's BLS12-381 is slow to import: only when asked for

        return PureBackend()
    if name == "native":
        try:
            from . import _native
        except ImportError as exc:  # extension not built
            raise BackendError(
                f"the native backend is not available ({exc}); build it with `python -m native.build`"
            ) from exc
        return _native.load()
    raise BackendError(f"unknown backend {name!r}: expected 'native' or 'pure'")


def _loaded(cache: dict[str, Any], name: str, make: Callable[[str], Any], counting: type) -> Any:
    """``cache[name]``, made by ``make(name)`` on first use and wrapped in the
    ``counting`` proxy when counting was selected."""
    with _lock:
        obj = cache.get(name)
        if obj is None:
            obj = make(name)
            if _counter is not None:
                obj = counting(obj, _counter)
            cache[name] = obj
        return obj


def load(name: str) -> Backend:
    """The curve backend called ``name`` ("native" or "pure"); raises BackendError.

    One object per name per process (counting, when selected, included)."""
    return _loaded(_curves, name, _load_curve, CountingBackend)


def _load_ecdsa(name: str) -> EcdsaBackend:
    if name == "pure":
        return PureEcdsa()
    if name == "native":
        try:
            return NativeEcdsa()
        except ImportError as exc:
            raise BackendError(f"coincurve (libsecp256k1) is not available: {exc}") from exc
    raise BackendError(f"unknown ECDSA backend {name!r}")


def load_ecdsa(name: str) -> EcdsaBackend:
    """The ECDSA implementation called ``name`` ("native" or "pure"); raises BackendError."""
    return _loaded(_ecdsas, name, _load_ecdsa, CountingEcdsa)


def available_backends() -> list[str]:
    """Names of the curve backends that load in this process, native first."""
    names = []
    for name in ("native", "pure"):
        try:
            load(name)
        except BackendError:
            continue
        names.append(name)
    return names


def _mode(mode: str | None) -> tuple[str, str]:
    """(mode, where it came from), checked."""
    if mode is None:
        forced = os.environ.get(ENV_VAR, "").strip().lower()
        if forced not in ("", *MODES):
            raise BackendError(f"{ENV_VAR}={forced!r} is not one of auto, native, pure")
        return forced or "auto", f"{ENV_VAR}={forced}"
    if mode not in MODES:
        raise BackendError(f"backend mode {mode!r} is not one of auto, native, pure")
    return mode, f"select({mode!r})"


def _choose(mode: str, source: str) -> Selection:
    if mode in ("native", "pure"):
        return Selection(load(mode), load_ecdsa(mode), f"forced by {source}", _counter)
    try:
        curve, reason = load("native"), "the native mcl extension is built and loaded"
    except BackendError as exc:
        curve, reason = load("pure"), f"native backend unavailable: {exc}"
    try:
        ecdsa = load_ecdsa("native")
    except BackendError:
        ecdsa = load_ecdsa("pure")
    return Selection(curve, ecdsa, reason, _counter)


def select(mode: str | None = None, *, counter: CallCounter | None = None) -> Selection:
    """Choose the process's backends (once) and return the choice.

    ``mode`` is "auto", "native" or "pure" (None: ``EMRSHARE_BACKEND``, default
    auto). With ``counter``, every backend is wrapped in a counting proxy; that
    must come before anything loads a backend. A second call returns the same
    selection when it asks for nothing else, and raises BackendError otherwise.
    """
    global _counter, _selection
    chosen, source = _mode(mode)
    with _lock:
        current = _selection
        if current is not None:
            if counter is not None and counter is not current.counter:
                raise BackendError(
                    "the backends were already selected without this call counter: "
                    "select(counter=...) must come before any crypto runs"
                )
            if mode is not None and chosen != "auto" and chosen != current.name:
                raise BackendError(f"the {current.name} backend is already selected ({current.reason})")
            return current
        if counter is not None:
            if _curves or _ecdsas:
                raise BackendError("select(counter=...) must come before any backend is loaded")
            _counter = counter
        _selection = _choose(chosen, source)
        return _selection


def selected() -> Selection | None:
    """The process's backends if they have been selected, else None (selects nothing)."""
    return _selection


def selection() -> Selection:
    """The process's backends, selected with the defaults on first use."""
    current = _selection
    return current if current is not None else select()


def active_backend() -> Backend:
    """The process-wide curve backend."""
    return selection().curve


def active_ecdsa() -> EcdsaBackend:
    """The process-wide ECDSA implementation."""
    return selection().ecdsa


def backend_name() -> str:
    return selection().name


def selection_reason() -> str:
    return selection().reason
