"""Bearer token verification: every way a token can be wrong is a 401 with the reason."""

from __future__ import annotations

import base64
import json
import time

import pytest

jwt = pytest.importorskip("jwt")
from agents.fhir import AuthError  # noqa: E402
from agents.fhir.auth import TokenVerifier  # noqa: E402
from agents.testing.smart import TokenIssuer  # noqa: E402

ISSUER = TokenIssuer()


def verifier(**kw) -> TokenVerifier:
    return TokenVerifier(issuer=ISSUER.issuer, audience=ISSUER.audience, jwks=ISSUER.jwks(), **kw)


def b64(obj) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


async def test_a_good_token():
    p = await verifier().verify("Bearer " + ISSUER.token("dr", "user/*.rs openid", patient="alice", purpose="TREAT"))
    assert (p.subject, p.patient, p.purpose) == ("dr", "alice", "treatment")
    assert p.may("Observation", "s", "bob") and not p.may("Observation", "c", "bob")


async def test_jwks_file(tmp_path):
    v = TokenVerifier(issuer=ISSUER.issuer, audience=ISSUER.audience, jwks_file=ISSUER.write_jwks(tmp_path / "k.json"))
    assert (await v.verify("Bearer " + ISSUER.token("dr", "user/*.rs"))).subject == "dr"
    with pytest.raises(AuthError, match="cannot read"):
        TokenVerifier(issuer="x", audience="y", jwks_file=tmp_path / "missing.json")


def _cases():
    now = int(time.time())
    other = TokenIssuer()
    good_head = {"alg": "ES256", "kid": ISSUER.kid, "typ": "JWT"}
    claims = {"iss": ISSUER.issuer, "aud": ISSUER.audience, "sub": "dr", "scope": "user/*.rs", "exp": now + 60}
    public_pem = ISSUER._key.public_key().public_bytes(  # noqa: SLF001 - the test issuer's own key
        encoding=__import__("cryptography").hazmat.primitives.serialization.Encoding.PEM,
        format=__import__("cryptography").hazmat.primitives.serialization.PublicFormat.SubjectPublicKeyInfo)
    return [
        (None, "no access token"),
        ("Basic dXNlcjpwdw==", "not a bearer token"),
        ("Bearer " + "x" * 9000, "longer than"),
        ("Bearer not.a.jwt", "not a JWT"),
        ("Bearer " + ISSUER.token("dr", "user/*.rs", expires_in=-100), "expired"),
        ("Bearer " + other.token("dr", "user/*.rs"), "no key"),
        ("Bearer " + jwt.encode({**claims, "iss": "https://evil"}, ISSUER._key, algorithm="ES256",  # noqa: SLF001
                                headers={"kid": ISSUER.kid}), "issuer"),
        ("Bearer " + jwt.encode({**claims, "aud": "other"}, ISSUER._key, algorithm="ES256",  # noqa: SLF001
                                headers={"kid": ISSUER.kid}), "audience"),
        ("Bearer " + jwt.encode({k: v for k, v in claims.items() if k != "exp"}, ISSUER._key,  # noqa: SLF001
                                algorithm="ES256", headers={"kid": ISSUER.kid}), "exp"),
        ("Bearer " + b64({"alg": "none", "kid": ISSUER.kid}) + "." + b64(claims) + ".", "algorithm 'none'"),
        # the public key used as an HMAC secret (the classic confusion): HS256 is never accepted
        ("Bearer " + b64({**good_head, "alg": "HS256"}) + "." + b64(claims) + "."
         + base64.urlsafe_b64encode(__import__("hmac").new(public_pem, b"x", "sha256").digest()).rstrip(b"=").decode(),
         "algorithm 'HS256'"),
        # a signature over other claims
        ("Bearer " + ".".join(ISSUER.token("dr", "user/*.rs").split(".")[:1] + [b64({**claims, "sub": "root"})]
                              + ISSUER.token("dr", "user/*.rs").split(".")[2:]), "Signature"),
    ]


_WHYS = [why for _, why in _cases()]


# the tokens are made when the test runs, not when it is collected: a valid "exp" of
# now + 60 s would have passed by the time a long suite reaches them
@pytest.mark.parametrize("index", range(len(_WHYS)), ids=_WHYS)
async def test_bad_tokens_are_refused(index):
    header, why = _cases()[index]
    with pytest.raises(AuthError) as info:
        await verifier().verify(header)
    assert info.value.status == 401 and why.lower() in str(info.value).lower()


async def test_jwks_url_fetched_cached_and_refreshed():
    """Keys from a JWKS URL (a local HTTP server): fetched on first use, refreshed on an unknown kid at
    most once a minute, and an unreachable URL is a 503, not a crash."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    import trio

    served = {"jwks": ISSUER.jwks(), "hits": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the http.server API
            served["hits"] += 1
            body = json.dumps(served["jwks"]).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks.json"
        v = TokenVerifier(issuer=ISSUER.issuer, audience=ISSUER.audience, jwks_url=url)
        assert (await v.verify("Bearer " + ISSUER.token("dr", "user/*.rs"))).subject == "dr"
        assert (await v.verify("Bearer " + ISSUER.token("dr2", "user/*.rs"))).subject == "dr2"
        assert served["hits"] == 1
        rotated = TokenIssuer()  # the issuer rotates its key: one refresh per minute at most
        served["jwks"] = rotated.jwks()
        with pytest.raises(AuthError, match="no key"):
            await v.verify("Bearer " + rotated.token("dr", "user/*.rs"))
        assert served["hits"] == 1
        v._fetched -= 61  # noqa: SLF001 - a minute later
        assert (await v.verify("Bearer " + rotated.token("dr", "user/*.rs"))).subject == "dr"
        assert served["hits"] == 2
    finally:
        server.shutdown()
        server.server_close()
    down = TokenVerifier(issuer=ISSUER.issuer, audience=ISSUER.audience, jwks_url=url, fetch_timeout=2)
    with pytest.raises(AuthError) as info:
        await down.verify("Bearer " + ISSUER.token("dr", "user/*.rs"))
    assert info.value.status == 503
    await trio.sleep(0)


@pytest.mark.parametrize("alg", ["RS256", "RS384", "PS256"])
async def test_an_algorithm_that_does_not_fit_the_key_is_a_401_not_a_crash(alg):
    """Attack: an anonymous client names the issuer's EC key (kid) with an RSA algorithm; the
    verifier must refuse it as any bad token (401), not fail with an internal error and a
    logged traceback per request."""
    now = int(time.time())
    claims = {"iss": ISSUER.issuer, "aud": ISSUER.audience, "sub": "dr", "scope": "user/*.rs", "exp": now + 60}
    token = b64({"alg": alg, "kid": ISSUER.kid}) + "." + b64(claims) + "." + b64("x" * 48)
    with pytest.raises(AuthError) as info:
        await verifier().verify("Bearer " + token)
    assert info.value.status == 401 and "key" in str(info.value)
