"""Bearer tokens and SMART scopes for the FHIR facade.

Every request carries ``Authorization: Bearer <JWT>``. :class:`TokenVerifier`
checks it with PyJWT against keys from a JWKS file or URL (asymmetric
algorithms only: ES256, ES384, RS256, PS256, EdDSA; ``none`` and HMAC are
refused, so a key from a JWKS can never be used as a shared secret): the
signature, ``exp`` (required), ``nbf``/``iat`` when present, ``iss`` (the
configured issuer), ``aud`` (the facade's base URL unless configured
otherwise) and ``sub``. A JWKS URL is read with a timeout and cached; an
unknown ``kid`` refreshes it at most once a minute.

The result is a :class:`Principal`: the subject (the emrshare user the facade
acts for: the token's ``sub``, or the claim ``--subject-claim`` names), its
scopes, the SMART launch context ``patient`` (a patient id claim) and the
purpose of use (claim ``purpose_of_use``, an ActReason code such as TREAT, as
IHE IUA writes it).

Scopes (:func:`parse_scopes`): SMART v2 ``context/Type.perms`` with
``context`` in patient, user, system, ``Type`` a resource type or ``*`` and
``perms`` an ordered subset of ``cruds``; SMART v1 ``.read`` (= ``rs``),
``.write`` (= ``cud``) and ``.*`` are read as their v2 meaning. Scopes with
query parameters (``patient/Observation.rs?category=...``) grant nothing
(not supported yet, so never wider than meant). ``patient/`` scopes reach only
the patient in context; ``user/`` and ``system/`` scopes reach whatever the
agent itself may (its patient's records, or the doctor's grants).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import trio

from agents.fhir.consent import PURPOSES
from agents.fhir.errors import AuthError

__all__ = ["Scope", "Principal", "TokenVerifier", "parse_scopes", "ALGORITHMS", "MAX_TOKEN_BYTES"]

ALGORITHMS = ("ES256", "ES384", "RS256", "RS384", "PS256", "EdDSA")
MAX_TOKEN_BYTES = 8192
_V2 = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{1,63})\.([cruds]+)$")
_V1 = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]{1,63})\.(read|write|\*)$")
_V1_PERMS = {"read": "rs", "write": "cud", "*": "cruds"}


@dataclass(frozen=True)
class Scope:
    """One granted SMART scope: ``context`` (patient, user, system), ``resource`` (a type or ``*``),
    ``perms`` (a subset of c, r, u, d, s)."""

    context: str
    resource: str
    perms: frozenset[str]

    def covers(self, resource_type: str, perm: str) -> bool:
        return perm in self.perms and self.resource in ("*", resource_type)


def parse_scopes(text: str) -> tuple[Scope, ...]:
    """The resource scopes in a space-separated ``scope`` claim (others, e.g. ``openid``, are skipped)."""
    out = []
    for item in text.split():
        m = _V2.match(item)
        if m is not None:
            perms = m.group(3)
            if "".join(c for c in "cruds" if c in perms) != perms:
                continue  # v2 requires the order c, r, u, d, s without repeats
            out.append(Scope(m.group(1), m.group(2), frozenset(perms)))
            continue
        m = _V1.match(item)
        if m is not None:
            out.append(Scope(m.group(1), m.group(2), frozenset(_V1_PERMS[m.group(3)])))
    return tuple(out)


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for and what it may do (see the module docstring)."""

    subject: str
    scopes: tuple[Scope, ...]
    patient: str | None = None
    purpose: str | None = None
    expires: int = 0
    claims: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def may(self, resource_type: str, perm: str, patient: str | None) -> bool:
        """Whether a scope grants ``perm`` on ``resource_type`` for ``patient``'s data."""
        for s in self.scopes:
            if not s.covers(resource_type, perm):
                continue
            if s.context == "patient" and (self.patient is None or patient != self.patient):
                continue
            return True
        return False

    def may_any(self, perm: str, patient: str | None) -> bool:
        return any(perm in s.perms and (s.context != "patient" or (self.patient is not None and patient == self.patient))
                   for s in self.scopes)


class TokenVerifier:
    """Verifies bearer JWTs (see the module docstring). Give ``jwks`` (a JWKS dict), ``jwks_file``
    or ``jwks_url``; ``issuer`` and ``audience`` are required claims' values."""

    def __init__(self, *, issuer: str, audience: str, jwks: Mapping[str, Any] | None = None,
                 jwks_file: Path | None = None, jwks_url: str | None = None, leeway: float = 30.0,
                 subject_claim: str = "sub", fetch_timeout: float = 10.0):
        if sum(x is not None for x in (jwks, jwks_file, jwks_url)) != 1:
            raise ValueError("give exactly one of jwks, jwks_file, jwks_url")
        self.issuer, self.audience, self.leeway = issuer, audience, leeway
        self.subject_claim = subject_claim
        self._url, self._fetch_timeout = jwks_url, fetch_timeout
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched = 0.0
        self._fetch_lock = trio.Lock()
        if jwks_file is not None:
            try:
                jwks = json.loads(Path(jwks_file).read_text())
            except (OSError, ValueError) as exc:
                raise AuthError(f"cannot read the JWKS file {jwks_file}: {exc}; give a JWKS JSON file",
                                status=500) from None
        if jwks is not None:
            self._keys = _key_set(jwks)

    async def _refresh(self) -> None:
        if self._url is None or time.monotonic() - self._fetched < 60 and self._keys:
            return
        async with self._fetch_lock:
            if time.monotonic() - self._fetched < 60 and self._keys:
                return
            self._fetched = time.monotonic()
            url, timeout = self._url, self._fetch_timeout

            def fetch() -> dict:
                import urllib.request

                with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - configured URL
                    return json.loads(resp.read(1 << 20))

            try:
                self._keys = _key_set(await trio.to_thread.run_sync(fetch))
            except (OSError, ValueError) as exc:
                raise AuthError(f"token keys unavailable: {self._url} did not answer a JWKS ({exc}); try again",
                                status=503, issue="transient") from None

    async def verify(self, header: str | None) -> Principal:
        """The principal of an ``Authorization`` header value; AuthError (401) for anything wrong."""
        if not header:
            raise AuthError("no access token: this server admits no anonymous request; send "
                            "'Authorization: Bearer <JWT>'")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError("not a bearer token: send 'Authorization: Bearer <JWT>'")
        if len(token) > MAX_TOKEN_BYTES:
            raise AuthError(f"access token refused: longer than {MAX_TOKEN_BYTES} bytes")
        try:
            head = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthError(f"access token refused: not a JWT ({exc})") from None
        alg, kid = head.get("alg"), head.get("kid")
        if alg not in ALGORITHMS:
            raise AuthError(f"access token refused: algorithm {alg!r} is not accepted (use one of {', '.join(ALGORITHMS)})")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None and self._url is not None:
            await self._refresh()
            key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise AuthError(f"access token refused: no key {kid!r} in the issuer's key set")
        try:
            claims = jwt.decode(token, key.key, algorithms=[alg], audience=self.audience, issuer=self.issuer,
                                leeway=self.leeway, options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.ExpiredSignatureError:
            raise AuthError("access token refused: expired; get a new one from the issuer") from None
        except jwt.PyJWTError as exc:
            raise AuthError(f"access token refused: {exc}") from None
        except (TypeError, ValueError):  # PyJWT handing an RSA algorithm an EC key (or the like)
            raise AuthError(f"access token refused: algorithm {alg} does not fit key {kid!r}") from None
        subject = claims.get(self.subject_claim)
        if not isinstance(subject, str) or not subject:
            raise AuthError(f"access token refused: no {self.subject_claim!r} claim naming the user")
        scope = claims.get("scope", "")
        if isinstance(scope, list):
            scope = " ".join(str(s) for s in scope)
        patient = claims.get("patient")
        purpose = claims.get("purpose_of_use")
        if isinstance(purpose, list):
            purpose = purpose[0] if purpose else None
        purpose = PURPOSES.get(purpose, purpose) if isinstance(purpose, str) else None
        return Principal(subject, parse_scopes(str(scope)), patient if isinstance(patient, str) else None,
                         purpose, int(claims["exp"]), claims)


def _key_set(jwks: Any) -> dict[str, jwt.PyJWK]:
    if not isinstance(jwks, Mapping) or not isinstance(jwks.get("keys"), list):
        raise ValueError("a JWKS is a JSON object with a 'keys' list")
    out = {}
    for k in jwks["keys"]:
        if not isinstance(k, Mapping) or not isinstance(k.get("kid"), str):
            continue  # a key without kid cannot be chosen safely
        if k.get("kty") == "oct":
            continue  # never a shared secret
        try:
            out[k["kid"]] = jwt.PyJWK.from_dict(dict(k))
        except jwt.PyJWTError:
            continue
    return out
