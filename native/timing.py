"""Bare C timing loops over single mcl calls, for the benchmarks' wrapper/bare
ratios (``emrshare bench crypto``, ``emrshare bench pre``).

Each function runs one mcl operation ``n`` times in C (``g1_mul``/``g2_mul``:
through the C helper the backend calls) and returns the elapsed nanoseconds. Points and GT elements are the native backend's handles (bytes
holding mcl's in-memory structs, as :class:`native.backend.NativeBackend`
keeps them); scalars are 32 bytes little-endian. No cdata leaves this module.
"""

from __future__ import annotations

__all__ = ["pairing", "pairing_prepared", "g1_mul", "g2_mul", "gt_pow", "gt_generator_pow", "gt_multi_pow"]


def _binding():
    from ._mcl_cffi import ffi, lib

    return ffi, lib


def pairing(g1: bytes, g2: bytes, n: int) -> int:
    """e(P, Q) (Miller loop and final exponentiation), ``n`` times."""
    ffi, lib = _binding()
    return lib.emr_bench_pairing(ffi.from_buffer("mclBnG1 *", g1), ffi.from_buffer("mclBnG2 *", g2), n)


def pairing_prepared(g1: bytes, prepared_g2: bytes, n: int) -> int:
    """e(P, Q) with Q's precomputed lines (``NativeBackend.g2_prepare``), ``n`` times."""
    ffi, lib = _binding()
    return lib.emr_bench_pairing_prepared(ffi.from_buffer("mclBnG1 *", g1),
                                          ffi.from_buffer("uint64_t[]", prepared_g2), n)


def g1_mul(g1: bytes, k: bytes, constant_time: bool, n: int) -> int:
    """k g1, ``n`` times, through emr_g1_mul, the C helper the backend's ``g1_mul`` calls
    (mclBnG1_mulCT when ``constant_time``, else mclBnG1_mul, after decoding k)."""
    ffi, lib = _binding()
    return lib.emr_bench_g1_mul(ffi.from_buffer("mclBnG1 *", g1), k, 1 if constant_time else 0, n)


def g2_mul(g2: bytes, k: bytes, constant_time: bool, n: int) -> int:
    """k g2, ``n`` times, through emr_g2_mul, the C helper the backend's ``g2_mul`` calls
    (mclBnG2_mulCT when ``constant_time``, else mclBnG2_mul, after decoding k)."""
    ffi, lib = _binding()
    return lib.emr_bench_g2_mul(ffi.from_buffer("mclBnG2 *", g2), k, 1 if constant_time else 0, n)


def gt_pow(x: bytes, k: bytes, n: int) -> int:
    """x^k with mclBnGT_pow, ``n`` times."""
    ffi, lib = _binding()
    return lib.emr_bench_gt_pow(ffi.from_buffer("mclBnGT *", x), k, n)


def gt_generator_pow(k: bytes, n: int) -> int:
    """Z^k from the constant-time fixed-base table, ``n`` times."""
    _, lib = _binding()
    return lib.emr_bench_gt_generator_pow(k, n)


def gt_multi_pow(bases: bytes, ks: bytes, m: int, n: int) -> int:
    """prod x_i^k_i over the first ``m`` of ``bases`` (concatenated handles), ``n`` times."""
    ffi, lib = _binding()
    return lib.emr_bench_gt_multi_pow(ffi.from_buffer("mclBnGT[]", bases), ks, m, n)
