"""agents.node.metrics (the Prometheus text format, bounded) and agents.node.http (GET-only routes)."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from agents.node.http import MAX_HEAD, handle_head, serve_http
from agents.node.metrics import MAX_REFUSAL_SERIES, Family, node_families, render
from agents.testing.promtext import ParseError, parse, value


@given(st.text(), st.floats(allow_nan=False) | st.integers(-2**60, 2**60).map(float))
def test_label_values_and_numbers_round_trip(text, number):
    fam = Family("emrshare_test", "gauge", "a help text with \\ and\nnewline").add(number, code=text, kind="k")
    parsed = parse(render([fam]))
    assert value(parsed, "emrshare_test", code=text, kind="k") == number
    assert parsed["emrshare_test"]["type"] == "gauge"


def test_special_values_and_bad_names():
    text = render([Family("emrshare_x", "gauge", "h").add(math.inf, a="1").add(-math.inf, a="2").add(math.nan, a="3")])
    parsed = parse(text)
    assert value(parsed, "emrshare_x", a="1") == math.inf and math.isnan(value(parsed, "emrshare_x", a="3"))
    with pytest.raises(ValueError):
        render([Family("bad-name", "gauge", "h")])
    with pytest.raises(ValueError):
        render([Family("emrshare_x", "histogram", "h")])
    with pytest.raises(ValueError):
        render([Family("emrshare_x", "gauge", "h").add(1, **{"bad-label": "x"})])


def test_the_reader_is_strict():
    for bad in ('x{a="1"} 1\nx{a="1"} 2\n', 'x{a="\\q"} 1\n', "x 1", "x one\n", "# TYPE x counter\nx -1\n",
                "x 1\n# TYPE x gauge\n"):
        with pytest.raises(ParseError):
            parse(bad)


class _Agent:
    """What node_families reads of a role agent."""

    def __init__(self, refusals):
        self._refusals = refusals

    def height(self):
        return 7

    def families(self):
        return [Family("emrshare_reencryptions_total", "counter", "h").add(3)]

    def queues(self):
        return {"forward": 2}

    def refusals(self):
        return self._refusals

    def endpoint_statistics(self):
        return None


def test_refusal_labels_stay_bounded_whatever_clients_send():
    # subscribe refusals carry the client's topic: the label keeps the kind only, and the series are capped
    refusals = {(f"bus.subscribe commits/user-{i}", "forbidden"): 1 for i in range(5000)}
    refusals.update({(f"kind.{i}", "forbidden"): 1 for i in range(MAX_REFUSAL_SERIES + 50)})
    parsed = parse(render(node_families("peer", "peer-a1", _Agent(refusals), None, 0.0)))
    samples = parsed["emrshare_refusals_total"]["samples"]
    assert len(samples) == MAX_REFUSAL_SERIES + 1
    assert value(parsed, "emrshare_refusals_total", kind="bus.subscribe", code="forbidden") == 5000
    assert sum(samples.values()) == 5000 + MAX_REFUSAL_SERIES + 50
    assert value(parsed, "emrshare_ledger_height") == 7 and value(parsed, "emrshare_queue_depth", queue="forward") == 2
    assert value(parsed, "emrshare_node_info", id="peer-a1", role="peer") == 1


ROUTES = {"/metrics": lambda: (200, "text/plain", b"m 1\n"), "/boom": lambda: 1 / 0}


@pytest.mark.parametrize("head, status", [
    (b"GET /metrics HTTP/1.1\r\nHost: x", b"200"), (b"HEAD /metrics HTTP/1.0", b"200"),
    (b"GET /metrics?x=1 HTTP/1.1", b"200"), (b"POST /metrics HTTP/1.1", b"405"), (b"DELETE / HTTP/1.1", b"405"),
    (b"GET /admin HTTP/1.1", b"404"), (b"GET /metrics", b"400"), (b"\x00\xff junk", b"400"), (None, b"431"),
    (b"GET /boom HTTP/1.1", b"500"),
])
def test_routes(head, status):
    response = handle_head(head, ROUTES)
    assert response.startswith(b"HTTP/1.1 " + status)
    assert b"Connection: close" in response
    if head and head.startswith(b"HEAD"):
        assert response.endswith(b"\r\n\r\n")


async def _get(port: int, request: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(request)
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


async def test_server_on_loopback_answers_and_bounds_heads():
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await nursery.start(serve_http, listeners, ROUTES)
        assert (await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n")).endswith(b"\r\n\r\nm 1\n")
        assert (await _get(port, b"PUT /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
        big = b"GET /metrics HTTP/1.1\r\n" + b"X: " + b"a" * (2 * MAX_HEAD) + b"\r\n\r\n"
        assert (await _get(port, big)).startswith(b"HTTP/1.1 431")
        nursery.cancel_scope.cancel()


async def test_a_slow_client_is_closed_after_the_timeout(autojump_clock):
    client, server = trio.testing.memory_stream_pair()
    routes = {"/metrics": lambda: (200, "text/plain", b"m 1\n")}

    class OneListener(trio.abc.Listener):
        def __init__(self):
            self.given = False

        async def accept(self):
            if self.given:
                await trio.sleep_forever()
            self.given = True
            return server

        async def aclose(self):
            pass

    async with trio.open_nursery() as nursery:
        await nursery.start(lambda task_status: serve_http([OneListener()], routes, timeout=5.0,
                                                           task_status=task_status))
        await client.send_all(b"GET /metr")  # and never the rest
        start = trio.current_time()
        assert await client.receive_some() == b""  # closed without an answer
        assert 5.0 <= trio.current_time() - start < 6.0
        nursery.cancel_scope.cancel()


async def test_connections_beyond_the_cap_are_closed_unanswered():
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        port = listeners[0].socket.getsockname()[1]
        await nursery.start(lambda task_status: serve_http(listeners, ROUTES, max_connections=2, timeout=30.0,
                                                           task_status=task_status))
        idle = [await trio.open_tcp_stream("127.0.0.1", port) for _ in range(2)]
        await idle[0].send_all(b"GET")  # both held by the server (partial heads)
        await idle[1].send_all(b"GET")
        await trio.sleep(0.2)
        with trio.fail_after(10):
            try:
                third = await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n")
            except trio.BrokenResourceError:  # closed (reset: our request was never read)
                third = b""
        assert third == b""  # refused: closed without an answer
        await idle[0].send_all(b" /metrics HTTP/1.1\r\n\r\n")
        with trio.fail_after(10):
            answer = b""
            while chunk := await idle[0].receive_some(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200")
        for stream in idle:
            await stream.aclose()
        # once the server has seen them closed (however long that takes), it serves again
        with trio.fail_after(30):
            while True:
                try:
                    if (await _get(port, b"GET /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 200"):
                        break
                except trio.BrokenResourceError:  # still at the cap: refused
                    pass
                await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
