"""Choosing the arithmetic backends: the public face of core/_backend.py.

The choice is made once per process (``auto``: the native mcl core when it is
built, else the pure-Python py-ecc fallback; ``EMRSHARE_BACKEND`` or
:func:`select` can force either), for the curve arithmetic and ECDSA together.
Everything in core/ computes on :func:`active_backend`; benchmarks and contract
tests that run the same code on each backend use :func:`load` with
``core.curve.api`` and ``core.pre.Scheme``. ``select(counter=CallCounter(clock))``,
before any crypto runs, counts every backend call (the load test's crypto
costs).
"""

from ._backend import ENV_VAR as ENV_VAR
from ._backend import MODES as MODES
from ._backend import Backend as Backend
from ._backend import EcdsaBackend as EcdsaBackend
from ._backend import Selection as Selection
from ._backend import active_backend as active_backend
from ._backend import active_ecdsa as active_ecdsa
from ._backend import available_backends as available_backends
from ._backend import backend_name as backend_name
from ._backend import load as load
from ._backend import load_ecdsa as load_ecdsa
from ._backend import select as select
from ._backend import selected as selected
from ._backend import selection as selection
from ._backend import selection_reason as selection_reason
from ._counting import CallCounter as CallCounter

__all__ = ["ENV_VAR", "MODES", "Backend", "EcdsaBackend", "Selection", "CallCounter", "active_backend",
           "active_ecdsa", "available_backends", "backend_name", "load", "load_ecdsa", "select", "selected",
           "selection", "selection_reason"]
