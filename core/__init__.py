"""emrshare's pure, deterministic core: crypto API, PRE, ECDSA, policy, ledger rules, CIDs, schemas.

Nothing in this package performs I/O, awaits, or reads the clock or the
environment except through arguments (the one exception is the backend choice,
made once from ``EMRSHARE_BACKEND``).
"""
