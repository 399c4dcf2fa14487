"""The counting proxies (core/_counting.py): exact counts, identical results."""

from __future__ import annotations

import itertools

import pytest

from core._backend import Backend, EcdsaBackend, load_ecdsa
from core._counting import COUNTED_CURVE_METHODS, COUNTED_ECDSA_METHODS, CallCounter, CountingBackend, CountingEcdsa, _Forward
from core.curve import G1, G2, GT, api, multi_pairing, pairing
from core.errors import DecodeError

pytestmark = pytest.mark.crypto


def _raw(backend):
    """The backend under the session's counting proxy (tests/conftest.py counts)."""
    return backend.inner if isinstance(backend, (CountingBackend, CountingEcdsa)) else backend


def _ticking_counter() -> CallCounter:
    ticks = itertools.count()
    return CallCounter(clock=lambda: next(ticks))  # every counted call takes exactly 1 tick


def _public_methods(cls) -> set[str]:
    return {n for n, v in vars(cls).items() if (callable(v) or isinstance(v, _Forward)) and not n.startswith("_")}


def test_proxies_implement_every_method_of_the_contracts(backend):
    assert _public_methods(Backend) <= _public_methods(CountingBackend)
    assert _public_methods(type(_raw(backend))) <= _public_methods(CountingBackend) | {"name"}
    assert _public_methods(EcdsaBackend) <= _public_methods(CountingEcdsa)
    assert set(COUNTED_CURVE_METHODS) <= _public_methods(Backend)


def test_curve_counts_are_exact_for_a_known_sequence(backend):
    counter = _ticking_counter()
    c = api(CountingBackend(_raw(backend), counter))
    g1, g2 = c.G1.generator(), c.G2.generator()  # not counted
    p = g1 * 5  # g1_mul
    q = g2.mul_public(7)  # g2_mul
    e = pairing(p, q)  # pairing
    pairing(p, q.prepare())  # pairing_prepared (g2_prepare is not counted)
    multi_pairing([(p, q), (g1, g2)])  # multi_pairing
    c.GT.from_bytes(e.to_bytes())  # gt_decode
    c.G1.from_bytes(p.to_bytes())  # g1_decode
    c.G2.from_bytes(q.to_bytes())  # g2_decode
    with pytest.raises(DecodeError):
        c.G1.from_bytes(bytes([0x80]) + bytes(46) + b"\x05")  # g1_decode again: failures count too
    e3 = e**3  # gt_pow
    c.GT.generator_pow(4)  # gt_generator_pow
    GT.multi_pow([e, e], [1, 2])  # gt_multi_pow
    c.G1.generator_mul(9)  # g1_generator_mul
    G1.msm([p, g1], [1, 2])  # g1_msm
    G2.msm([q], [3])  # g2_msm
    assert p + g1 != -p and e * e * e == e3 and e3.to_bytes()  # not counted: +, -, *, ==, encode
    snap = counter.snapshot()
    assert {n: calls for n, (calls, _) in snap.items() if calls} == {
        "g1_mul": 1, "g2_mul": 1, "pairing": 1, "pairing_prepared": 1, "multi_pairing": 1,
        "gt_decode": 1, "g1_decode": 2, "g2_decode": 1, "gt_pow": 1, "gt_generator_pow": 1,
        "gt_multi_pow": 1, "g1_generator_mul": 1, "g1_msm": 1, "g2_msm": 1,
    }
    assert all(ticks == calls for calls, ticks in snap.values())


def test_counted_results_are_the_backends_own(backend):
    raw = _raw(backend)
    counted, plain = api(CountingBackend(raw, CallCounter())), api(raw)
    a = (counted.G1.generator() * 11, counted.G2.generator() * 13)
    b = (plain.G1.generator() * 11, plain.G2.generator() * 13)
    assert a[0].backend is counted.backend and b[0].backend is raw
    assert [x.to_bytes() for x in a] == [x.to_bytes() for x in b]
    assert pairing(*a).to_bytes() == pairing(*b).to_bytes()
    assert counted.GT.generator_pow(5).to_bytes() == plain.GT.generator_pow(5).to_bytes()
    with pytest.raises(TypeError):  # a proxy is a backend of its own: its elements do not mix
        a[0] + b[0]


@pytest.mark.parametrize("name", ["native", "pure"])
def test_ecdsa_counts_are_exact(name):
    counter = _ticking_counter()
    impl = CountingEcdsa(_raw(load_ecdsa(name)), counter)
    key, digest = b"\x01" * 32, b"\x02" * 32
    pub = impl.public_key(key)
    sig = impl.sign_digest(key, digest)
    assert impl.is_valid_digest(pub, digest, sig)
    assert not impl.is_valid_digest(pub, b"\x03" * 32, sig)
    assert impl.check_public_key(pub) == pub  # not counted
    assert sig == _raw(load_ecdsa(name)).sign_digest(key, digest)
    snap = counter.snapshot()
    assert {n: calls for n, (calls, _) in snap.items() if calls} == {
        "ecdsa.public_key": 1, "ecdsa.sign_digest": 1, "ecdsa.is_valid_digest": 2,
    }
    assert all(ticks == calls for calls, ticks in snap.values())


def test_a_counter_without_a_clock_counts_calls_only(backend):
    counter = CallCounter()
    c = api(CountingBackend(_raw(backend), counter))
    c.G1.generator() * 3
    assert counter.snapshot()["g1_mul"] == (1, 0)


def test_the_proxies_count_exactly_the_listed_methods():
    def counted(cls):
        return {v.key for v in vars(cls).values() if isinstance(v, _Forward) and v.counted}

    assert counted(CountingBackend) == set(COUNTED_CURVE_METHODS)
    assert counted(CountingEcdsa) == set(COUNTED_ECDSA_METHODS)
