"""Outsider tests of the proxy that fail today (issue 7 follow-up; reported to the lead, not
landed): each names the contract it holds paastis to."""

from __future__ import annotations

import asyncio

import pytest

from emulators.raw_upstream import RawRequest, RawUpstream
from harness import scalingo_env
from raw_client import RawClient, Stopwatch, exchange


async def front(scalingo, paastis, upstream: RawUpstream, **env: str) -> int:
    """paastis in front of the running app `web`, `gone` (its upstream is down) and `sleepy`
    (stopped)."""
    emulator, api_url = scalingo
    emulator.add_app("web", status="running", base_url=upstream.url)
    emulator.add_app("gone", status="running", base_url="http://127.0.0.1:9")
    emulator.add_app("sleepy", status="stopped", base_url=upstream.url)
    proxy = await paastis(scalingo_env(api_url, **env))
    return proxy.server.main_port


# --- RFC 9112 §9.6: Connection: close, and HTTP/1.0 without keep-alive -----------------------

OWN_ANSWERS = {
    "unknown-app-404": b"GET / HTTP/1.1\r\nHost: nosuch.example.net\r\n",
    "bad-host-400": b"GET / HTTP/1.1\r\nHost: web.x@evil.example\r\n",
    "connect-405": b"CONNECT a.example:443 HTTP/1.1\r\nHost: web.example.net\r\n",
    "options-asterisk": b"OPTIONS * HTTP/1.1\r\nHost: web.example.net\r\n",
    "unreachable-502": b"GET / HTTP/1.1\r\nHost: gone.example.net\r\n",
    "loop-508": b"GET / HTTP/1.1\r\nHost: web.example.net\r\nVia: 1.1 paastis\r\n",
    "monitor-503": b"GET / HTTP/1.1\r\nHost: sleepy.example.net\r\nUser-Agent: UptimeRobot/2.0\r\n",
    "waiting-page-503": b"GET / HTTP/1.1\r\nHost: sleepy.example.net\r\nAccept: text/html\r\n",
}


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
@pytest.mark.parametrize("head", OWN_ANSWERS.values(), ids=OWN_ANSWERS.keys())
async def test_an_own_answer_closes_the_connection_when_the_client_asks(
    scalingo, paastis, raw_upstreams, head, version
):
    # After a request with `Connection: close` (or an HTTP/1.0 request without keep-alive) the
    # server MUST close the connection once it has answered; proxied answers do.
    port = await front(scalingo, paastis, await raw_upstreams())
    head = head.replace(b"HTTP/1.1\r\n", version + b"\r\n", 1)
    if version == b"HTTP/1.1":
        head += b"Connection: close\r\n"
    client = await RawClient.open(port)
    try:
        await client.send(head + b"\r\n")
        answer = await client.answer()
        try:
            after = await client.closed_within(2)
        except TimeoutError:
            pytest.fail(f"still open 2 s after {answer.head!r}")
    finally:
        await client.close()

    assert after == b""


# --- PROXY_HEADER_TIMEOUT on a pipelined head -------------------------------------------------


async def test_a_partial_head_pipelined_behind_a_request_is_closed_after_the_header_timeout(
    scalingo, paastis, raw_upstreams
):
    # The second request's head starts in the same packet as the first request and never
    # ends: a slowloris that never sends another byte must not keep the connection either.
    app = await raw_upstreams()
    port = await front(scalingo, paastis, app, PROXY_HEADER_TIMEOUT="2")
    client = await RawClient.open(port)
    watch = Stopwatch()
    try:
        await client.send(
            b"GET /first HTTP/1.1\r\nHost: web.example.net\r\n\r\n"
            b"GET /second HTTP/1.1\r\nHost: web.example.net\r\n"
        )
        first = await client.answer()
        try:
            received = await client.closed_within(6)
        except TimeoutError:
            pytest.fail(f"still open {watch.elapsed:.1f} s after the partial head")
    finally:
        await client.close()

    assert first.status == 200
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert watch.elapsed < 4.5


# --- the app's answer, and nothing but it -----------------------------------------------------


async def two_answers_on_one_connection(port: int):
    """The answers to `GET /` then `GET /again`, sent one after the other on one connection."""
    client = await RawClient.open(port)
    try:
        await client.send(b"GET / HTTP/1.1\r\nHost: web.example.net\r\n\r\n")
        answer = await client.answer()
        await client.send(b"GET /again HTTP/1.1\r\nHost: web.example.net\r\n\r\n")
        return answer, await client.answer()
    finally:
        await client.close()


def writing(data: bytes, *, close: bool = False):
    async def answer(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        if close:
            writer.close()

    return answer


async def test_bytes_the_app_sends_after_its_answer_never_reach_the_client(
    scalingo, paastis, raw_upstreams
):
    # An app (buggy or hostile) writes a second, unsolicited answer right after the first, in
    # the same packet. The client must get the first answer exactly: a status or headers taken
    # from the second would desynchronise its connection (Content-Length 8, a 2-byte body).
    app = await raw_upstreams(
        writing(
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
            b"HTTP/1.1 404 Injected\r\nContent-Length: 8\r\nX-Injected: 1\r\n\r\nINJECTED"
        )
    )
    port = await front(scalingo, paastis, app)
    answer, again = await two_answers_on_one_connection(port)

    assert answer.status_line == b"HTTP/1.1 200 OK", answer.head
    assert answer.values(b"Content-Length") == [b"2"]
    assert answer.values(b"X-Injected") == []
    assert answer.body == b"ok"
    assert again.status_line == b"HTTP/1.1 200 OK", again.head
    assert again.values(b"X-Injected") == [] and again.body == b"ok"


def in_two_writes(head: bytes, body: bytes, after: bytes):
    """The head with the start of the body, then the rest of the body and `after` at once."""

    async def answer(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(head + body[:1000])
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(body[1000:] + after)
        await writer.drain()

    return answer


async def test_a_long_answer_arrives_whole_and_nothing_the_app_sends_after_it(
    scalingo, paastis, raw_upstreams
):
    # Past its first bytes, a long answer with a Content-Length is counted, not parsed: its
    # end must still be exact.
    body = bytes(range(256)) * 800
    app = await raw_upstreams(
        in_two_writes(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body),
            body,
            b"HTTP/1.1 404 Injected\r\nContent-Length: 8\r\nX-Injected: 1\r\n\r\nINJECTED",
        )
    )
    port = await front(scalingo, paastis, app)
    answer, again = await two_answers_on_one_connection(port)

    assert answer.status_line == b"HTTP/1.1 200 OK" and answer.body == body
    assert again.status_line == b"HTTP/1.1 200 OK" and again.body == body
    assert again.values(b"X-Injected") == []


async def test_an_answer_in_a_transfer_coding_paastis_does_not_decode_is_not_passed_as_plain(
    scalingo, paastis, raw_upstreams
):
    # `Transfer-Encoding: gzip` (close-delimited) is hop-by-hop: dropping it while passing the
    # coded bytes on hands the client gzip bytes as if they were the content. Either the coding
    # stays on the client's hop or the answer is refused (502).
    app = await raw_upstreams(
        writing(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n\x1f\x8b-coded", close=True)
    )
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: web.example.net\r\n\r\n")

    codings = b",".join(answer.values(b"Transfer-Encoding")).replace(b" ", b"").lower()
    assert answer.status == 502 or codings.startswith(b"gzip"), answer.head


# --- Via ---------------------------------------------------------------------------------------


async def test_the_via_entry_of_an_http10_request_says_1_0(scalingo, paastis, raw_upstreams):
    # RFC 9110 §7.6.3: received-protocol is the version of the message paastis received.
    app = await raw_upstreams()
    port = await front(scalingo, paastis, app)

    await exchange(port, b"GET / HTTP/1.0\r\nHost: web.example.net\r\n\r\n")

    [request] = app.requests
    [entry] = [e.split() for v in request.values(b"Via") for e in v.split(b",")]
    assert entry[0] == b"1.0", request.values(b"Via")
