"""Native BLS12-381 core: mcl bound through cffi (a leaf package).

``python -m native.build`` builds the extension in place; :mod:`native.backend`
holds :class:`~native.backend.NativeBackend`, which core/ loads by name
("native"). Nothing here imports core/'s domain code or returns cdata.
"""

from __future__ import annotations


def is_built() -> bool:
    """True when the compiled extension is importable (it may still be stale:
    loading the backend checks that)."""
    import importlib.util

    return importlib.util.find_spec("native._mcl_cffi") is not None
