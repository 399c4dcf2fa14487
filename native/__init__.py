"""Native BLS12-381 core: mcl bound through cffi (a leaf package).

``python -m native.build`` builds the extension in place; :mod:`native.backend`
holds :class:`~native.backend.NativeBackend`, which core/ loads by name
("native"). Nothing here imports core/ or returns cdata; errors are this
package's own (:mod:`native.errors`), translated by core/ at its boundary.
"""

from __future__ import annotations

from .errors import NativeDecodeError as NativeDecodeError
from .errors import NativeError as NativeError
from .errors import NativeLoadError as NativeLoadError


def is_built() -> bool:
    """True when the compiled extension is importable (it may still be stale:
    loading the backend checks that)."""
    import importlib.util

    return importlib.util.find_spec("native._mcl_cffi") is not None
