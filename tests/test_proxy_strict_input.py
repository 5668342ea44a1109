"""The proxy's front door, tried as an attacker would (issue 7, items 1-4, 7 and 11; DESIGN §5
"Strict input", §3 PROXY_HEADER_TIMEOUT): raw-socket clients sending exact bytes to a paastis in
front of the Scalingo emulator, whose app `web` is a raw upstream recording what reaches it."""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import re

import pytest

from emulators.raw_upstream import RawUpstream
from harness import scalingo_env
from raw_client import RawClient, Stopwatch, exchange

# What paastis' own error answers look like: an HTTP/1.1 status line, never cached.
OWN_STATUS_LINE = re.compile(rb"HTTP/1\.1 [1-5][0-9][0-9] ")


@pytest.fixture
async def app():
    """The upstream of the app `web`."""
    upstream = await RawUpstream().start()
    yield upstream
    await upstream.stop()


@pytest.fixture
async def bystander():
    """A listener standing for a host:port named by a client: it must never see a connection."""
    listener = await RawUpstream().start()
    yield listener
    await listener.stop()


async def front(scalingo, paastis, app: RawUpstream, **env: str) -> int:
    """paastis in front of the running app `web` (and `gone`, whose upstream is down); its port."""
    emulator, api_url = scalingo
    emulator.add_app("web", status="running", base_url=app.url)
    emulator.add_app("gone", status="running", base_url="http://127.0.0.1:9")
    proxy = await paastis(scalingo_env(api_url, **env))
    return proxy.server.main_port


async def nothing_reached(*upstreams: RawUpstream) -> None:
    """Lets a wrongly forwarded request arrive, then checks that none did."""
    await asyncio.sleep(0.05)
    for upstream in upstreams:
        assert upstream.connections == 0, upstream.requests
        assert upstream.requests == []


def assert_own_error(answer, status: int | tuple[int, ...]) -> None:
    expected = (status,) if isinstance(status, int) else status
    assert answer.status in expected, str(answer)
    assert OWN_STATUS_LINE.match(answer.status_line), answer.status_line
    assert answer.body.startswith(b"paastis: "), answer.body
    assert len(answer.body) < 300
    assert answer.values(b"Cache-Control") == [b"no-store"]
    assert answer.values(b"Server") == []


# --- 1. CONNECT and the request target -------------------------------------------------------


@pytest.mark.parametrize(
    "request_head",
    [
        b"CONNECT 127.0.0.1:%(port)d HTTP/1.1\r\nHost: web.example.net\r\n\r\n",
        b"CONNECT @127.0.0.1:%(port)d HTTP/1.1\r\nHost: web.example.net\r\n\r\n",
        b"CONNECT @localhost:%(port)d HTTP/1.1\r\nHost: x\r\n\r\n",
        b"CONNECT web.example.net:%(port)d HTTP/1.1\r\nHost: web.example.net:%(port)d\r\n\r\n",
    ],
    ids=["ip-target", "at-ip-target", "at-localhost-host-x", "app-authority"],
)
async def test_connect_is_405_and_opens_no_connection(
    scalingo, paastis, app, bystander, request_head
):
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, request_head % {b"port": bystander.port})

    assert_own_error(answer, 405)
    allowed = b",".join(answer.values(b"Allow")).upper()
    assert b"GET" in allowed and b"CONNECT" not in allowed  # RFC 9110 §15.5.6: 405 has Allow
    await nothing_reached(app, bystander)


async def test_connect_is_405_on_a_kept_alive_connection_too(scalingo, paastis, app, bystander):
    port = await front(scalingo, paastis, app)
    client = await RawClient.open(port)
    try:
        await client.send(b"GET /first HTTP/1.1\r\nHost: web.example.net\r\n\r\n")
        first = await client.answer()
        await client.send(
            b"CONNECT 127.0.0.1:%d HTTP/1.1\r\nHost: web.example.net\r\n\r\n" % bystander.port
        )
        second = await client.answer()
    finally:
        await client.close()

    assert first.status == 200
    assert_own_error(second, 405)
    await nothing_reached(bystander)
    assert [r.request_line for r in app.requests] == [b"GET /first HTTP/1.1"]


@pytest.mark.parametrize(
    "target",
    [
        b"@127.0.0.1:%(port)d/",
        b"http://web.example.net@127.0.0.1:%(port)d/",
        b"http://127.0.0.1:%(port)d/",
        b"http://[::1]:%(port)d/",
        b"127.0.0.1:%(port)d",
        b"ftp://web.example.net/",
        b"*",
    ],
    ids=[
        "at-ip",
        "absolute-userinfo",
        "absolute-ip",
        "absolute-ipv6",
        "authority-form",
        "ftp",
        "asterisk-get",
    ],
)
async def test_a_target_naming_another_host_is_400_and_opens_no_connection(
    scalingo, paastis, app, bystander, target
):
    port = await front(scalingo, paastis, app)

    answer = await exchange(
        port,
        b"GET %b HTTP/1.1\r\nHost: web.example.net\r\n\r\n" % (target % {b"port": bystander.port}),
    )

    assert_own_error(answer, 400)
    await nothing_reached(app, bystander)


async def test_a_path_that_looks_like_an_authority_stays_a_path(scalingo, paastis, app, bystander):
    port = await front(scalingo, paastis, app)

    answer = await exchange(
        port, b"GET //127.0.0.1:%d/x HTTP/1.1\r\nHost: web.example.net\r\n\r\n" % bystander.port
    )

    assert answer.status == 200
    [request] = app.requests
    assert request.request_line == b"GET //127.0.0.1:%d/x HTTP/1.1" % bystander.port
    await nothing_reached(bystander)


async def test_absolute_form_target_is_routed_by_its_authority_not_the_host_header(
    scalingo, paastis, app
):
    emulator, _ = scalingo
    other = await RawUpstream().start()
    try:
        emulator.add_app("other", status="running", base_url=other.url)
        port = await front(scalingo, paastis, app)

        answer = await exchange(
            port,
            b"GET http://web.example.net:8080/p/q?x=1&y=%2F HTTP/1.1\r\n"
            b"Host: other.example.net\r\n\r\n",
        )

        assert answer.status == 200, str(answer)
        [request] = app.requests
        assert request.request_line == b"GET /p/q?x=1&y=%2F HTTP/1.1"
        assert request.values(b"Host") == [b"127.0.0.1:%d" % app.port]
        assert request.values(b"X-Forwarded-Host") == [b"web.example.net:8080"]
        await nothing_reached(other)
    finally:
        await other.stop()


async def test_absolute_form_without_a_path_asks_for_the_root(scalingo, paastis, app):
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, b"GET http://web.example.net HTTP/1.1\r\nHost: web\r\n\r\n")

    assert answer.status == 200, str(answer)
    assert [r.request_line for r in app.requests] == [b"GET / HTTP/1.1"]


async def test_absolute_form_for_an_unknown_app_is_404_even_with_a_known_host(
    scalingo, paastis, app
):
    port = await front(scalingo, paastis, app)

    answer = await exchange(
        port, b"GET http://nosuch.example.net/ HTTP/1.1\r\nHost: web.example.net\r\n\r\n"
    )

    assert_own_error(answer, 404)
    await nothing_reached(app)


async def test_options_asterisk_is_answered_by_paastis(scalingo, paastis, app):
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, b"OPTIONS * HTTP/1.1\r\nHost: web.example.net\r\n\r\n")

    assert 200 <= answer.status < 300, str(answer)
    assert OWN_STATUS_LINE.match(answer.status_line)
    await nothing_reached(app)


async def test_options_asterisk_keeps_the_connection_usable(scalingo, paastis, app):
    port = await front(scalingo, paastis, app)
    client = await RawClient.open(port)
    try:
        await client.send(
            b"OPTIONS * HTTP/1.1\r\nHost: web.example.net\r\n\r\n"
            b"GET /after HTTP/1.1\r\nHost: web.example.net\r\n\r\n"
        )
        options = await client.answer()
        after = await client.answer()
    finally:
        await client.close()

    assert 200 <= options.status < 300
    assert after.status == 200
    assert [r.request_line for r in app.requests] == [b"GET /after HTTP/1.1"]


# --- 2. Host poisoning ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        b"web.x@evil.example",
        b"web.example.net@evil.example",
        b"user:pass@web.example.net",
        b"web.example.net/evil",
        b"web.example.net/",
        b"web.example.net?evil=1",
        b"web.example.net#evil",
        b"web.example.net evil.example",
        b"web example.net",
        b"web.example.net:99999",
        b"web.example.net:80x",
        b"web.example.net:-1",
        b"web.example.net:8080:80",
        b"web.example.net\\evil.example",
        b"",
    ],
)
async def test_invalid_host_is_400_and_nothing_is_forwarded(scalingo, paastis, app, host):
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, b"GET /redirect HTTP/1.1\r\nHost: %b\r\n\r\n" % host)

    assert_own_error(answer, 400)
    assert answer.values(b"Location") == []
    assert b"evil" not in answer.head
    await nothing_reached(app)


@pytest.mark.parametrize(
    "host", [b"127.0.0.1", b"127.0.0.1:3000", b"[::1]", b"[::1]:3000", b"[::1"]
)
async def test_ip_address_host_is_400(scalingo, paastis, app, host):
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: %b\r\n\r\n" % host)

    assert_own_error(answer, 400)
    await nothing_reached(app)


async def test_two_host_headers_are_400(scalingo, paastis, app):
    # RFC 9112 §3.2: more than one Host line is answered 400.
    port = await front(scalingo, paastis, app)

    answer = await exchange(
        port, b"GET / HTTP/1.1\r\nHost: web.example.net\r\nHost: evil.example\r\n\r\n"
    )

    assert_own_error(answer, 400)
    await nothing_reached(app)


@pytest.mark.parametrize(
    "host",
    [b"web.example.net", b"WEB.Example.NET", b"web.example.net:8443", b"web", b"web.example.net."],
)
async def test_valid_hosts_are_routed_and_described_as_sent(scalingo, paastis, app, host):
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: %b\r\n\r\n" % host)

    assert answer.status == 200, str(answer)
    [request] = app.requests
    assert request.values(b"X-Forwarded-Host") == [host]


async def test_a_redirect_is_rewritten_to_the_clients_checked_host(scalingo, paastis):
    async def redirect(request, writer):
        writer.write(
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:%d/landed\r\n"
            b"Content-Length: 0\r\n\r\n" % upstream.port
        )
        await writer.drain()

    upstream = await RawUpstream(redirect).start()
    try:
        port = await front(scalingo, paastis, upstream)
        answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: web.example.net:8443\r\n\r\n")
    finally:
        await upstream.stop()

    assert answer.status == 302
    assert answer.values(b"Location") == [b"http://web.example.net:8443/landed"]


# --- 3. Slowloris -----------------------------------------------------------------------------


async def drip(client: RawClient, first: bytes, *, gap: float, lines: int = 20) -> None:
    """Sends `first`, then one more header line every `gap` seconds (never the blank line)."""
    with contextlib.suppress(ConnectionError):
        await client.send(first)
        for index in range(lines):
            await asyncio.sleep(gap)
            await client.send(b"X-Drip-%d: %d\r\n" % (index, index))


async def test_a_head_sent_one_line_a_second_is_closed_with_408(scalingo, paastis, app):
    port = await front(scalingo, paastis, app, PROXY_HEADER_TIMEOUT="2")
    client = await RawClient.open(port)
    watch = Stopwatch()
    dripping = asyncio.ensure_future(
        drip(client, b"GET / HTTP/1.1\r\nHost: web.example.net\r\n", gap=1.0)
    )
    try:
        received = await client.closed_within(8)
        elapsed = watch.elapsed
    finally:
        dripping.cancel()
        await client.close()

    assert received.startswith(b"HTTP/1.1 408 "), received
    assert b"paastis: " in received
    assert 1.5 <= elapsed < 4.5
    await nothing_reached(app)


async def test_a_slow_head_on_a_kept_alive_connection_is_closed_with_408(scalingo, paastis, app):
    port = await front(scalingo, paastis, app, PROXY_HEADER_TIMEOUT="2")
    client = await RawClient.open(port)
    try:
        await client.send(b"GET /first HTTP/1.1\r\nHost: web.example.net\r\n\r\n")
        first = await client.answer()
        watch = Stopwatch()
        dripping = asyncio.ensure_future(
            drip(client, b"GET /second HTTP/1.1\r\nHost: web.example.net\r\n", gap=1.0)
        )
        try:
            received = await client.closed_within(8)
            elapsed = watch.elapsed
        finally:
            dripping.cancel()
    finally:
        await client.close()

    assert first.status == 200
    assert received.startswith(b"HTTP/1.1 408 "), received
    assert 1.5 <= elapsed < 4.5
    assert [r.request_line for r in app.requests] == [b"GET /first HTTP/1.1"]


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    scalingo, paastis, app
):
    port = await front(scalingo, paastis, app, PROXY_HEADER_TIMEOUT="1")
    client = await RawClient.open(port)
    watch = Stopwatch()
    try:
        received = await client.closed_within(6)
        elapsed = watch.elapsed
    finally:
        await client.close()

    assert received == b"" or received.startswith(b"HTTP/1.1 408 "), received
    assert elapsed < 3


async def test_a_slow_body_upload_is_not_cut_by_the_header_timeout(scalingo, paastis, app):
    port = await front(scalingo, paastis, app, PROXY_HEADER_TIMEOUT="1")
    client = await RawClient.open(port)
    watch = Stopwatch()
    try:
        await client.send(
            b"POST /upload HTTP/1.1\r\nHost: web.example.net\r\nContent-Length: 4\r\n\r\n"
        )
        for byte in b"abcd":
            await client.send(bytes([byte]))
            await asyncio.sleep(0.5)
        answer = await client.answer()
    finally:
        await client.close()

    assert watch.elapsed > 2  # well past the header timeout
    assert answer.status == 200, str(answer)
    assert [r.body for r in app.requests] == [b"abcd"]


# --- 4. Log flooding --------------------------------------------------------------------------

MALFORMED = {
    "nul-in-value": b"GET / HTTP/1.1\r\nHost: web.example.net\r\nX-A: a\x00b\r\n\r\n",
    "bare-lf": b"GET / HTTP/1.1\nHost: web.example.net\n\n",
    "two-lengths": b"POST / HTTP/1.1\r\nHost: web.example.net\r\n"
    b"Content-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    "tls-hello": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32) + b"\r\n\r\n",
    "bad-host": b"GET / HTTP/1.1\r\nHost: web.x@evil.example\r\n\r\n",
    "garbage": b"\xff\xfe GARBAGE \x01\x02\r\n\r\n",
}


@pytest.mark.parametrize("malformed", MALFORMED.values(), ids=MALFORMED.keys())
async def test_a_malformed_request_writes_one_warning_line_and_no_traceback(
    scalingo, paastis, app, caplog, malformed
):
    port = await front(scalingo, paastis, app)
    caplog.set_level(logging.DEBUG)
    caplog.clear()

    answer = await exchange(port, malformed)
    await asyncio.sleep(0.1)  # lines logged after the answer

    assert_own_error(answer, 400)
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert warnings[0].levelno == logging.WARNING
    assert "\n" not in warnings[0].getMessage()
    assert [r for r in caplog.records if r.exc_info or r.exc_text] == []
    assert "Traceback" not in caplog.text
    await nothing_reached(app)


async def test_a_scanner_run_writes_one_line_per_bad_request(scalingo, paastis, app, caplog):
    port = await front(scalingo, paastis, app)
    caplog.set_level(logging.DEBUG)
    caplog.clear()
    runs = 3

    for _ in range(runs):
        for malformed in MALFORMED.values():
            assert (await exchange(port, malformed)).status == 400
    await asyncio.sleep(0.1)

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == runs * len(MALFORMED)
    assert "Traceback" not in caplog.text


# --- 7. Transfer codings ----------------------------------------------------------------------


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%b\r\n0\r\n\r\n" % (len(body), body)


async def test_gzip_chunked_transfer_coding_is_501_and_nothing_is_forwarded(scalingo, paastis, app):
    port = await front(scalingo, paastis, app)

    answer = await exchange(
        port,
        b"POST /upload HTTP/1.1\r\nHost: web.example.net\r\n"
        b"Transfer-Encoding: gzip, chunked\r\n\r\n" + chunked(gzip.compress(b"hello")),
    )

    assert_own_error(answer, 501)
    await nothing_reached(app)


async def test_gzip_and_chunked_on_two_lines_is_refused(scalingo, paastis, app):
    # Two Transfer-Encoding lines mean "gzip, chunked" (501), but a parser refusing the
    # duplicate as a smuggling attempt (400) is as safe.
    port = await front(scalingo, paastis, app)

    answer = await exchange(
        port,
        b"POST /upload HTTP/1.1\r\nHost: web.example.net\r\n"
        b"Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked(gzip.compress(b"hello")),
    )

    assert_own_error(answer, (400, 501))
    await nothing_reached(app)


@pytest.mark.parametrize(
    "coding", [b"gzip", b"deflate", b"identity", b"chunked, gzip", b"x-custom, chunked"]
)
async def test_other_transfer_codings_are_refused_and_nothing_is_forwarded(
    scalingo, paastis, app, coding
):
    # RFC 9112 §6.3 asks 400 when chunked is not the final coding, §6.1 501 for an unknown one.
    port = await front(scalingo, paastis, app)

    answer = await exchange(
        port,
        b"POST /upload HTTP/1.1\r\nHost: web.example.net\r\nTransfer-Encoding: %b\r\n\r\n" % coding
        + chunked(b"hello"),
    )

    assert_own_error(answer, (400, 501))
    await nothing_reached(app)


async def test_plain_chunked_upload_still_passes(scalingo, paastis, app):
    port = await front(scalingo, paastis, app)

    answer = await exchange(
        port,
        b"POST /upload HTTP/1.1\r\nHost: web.example.net\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked(b"hello"),
    )

    assert answer.status == 200
    assert [r.body for r in app.requests] == [b"hello"]


# --- 11. paastis' own answers -----------------------------------------------------------------

OWN_ERRORS = {
    "parser-400": (b"GET / HTTP/1.1\r\nHost: web.example.net\r\nX-A\x00: v\r\n\r\n", 400),
    "bad-host-400": (b"GET / HTTP/1.1\r\nHost: web.example.net/x\r\n\r\n", 400),
    "no-host-400": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "unknown-app-404": (b"GET / HTTP/1.1\r\nHost: nosuch.example.net\r\n\r\n", 404),
    "connect-405": (b"CONNECT a.example:443 HTTP/1.1\r\nHost: a.example:443\r\n\r\n", 405),
    "coding-501": (
        b"POST / HTTP/1.1\r\nHost: web.example.net\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
        b"0\r\n\r\n",
        501,
    ),
    "unreachable-502": (b"GET / HTTP/1.1\r\nHost: gone.example.net\r\n\r\n", 502),
    "head-unreachable-502": (b"HEAD / HTTP/1.1\r\nHost: gone.example.net\r\n\r\n", 502),
}


@pytest.mark.parametrize("request_bytes, status", OWN_ERRORS.values(), ids=OWN_ERRORS.keys())
async def test_own_error_answers_are_http11_short_and_never_cached(
    scalingo, paastis, app, request_bytes, status
):
    port = await front(scalingo, paastis, app)
    head_only = request_bytes.startswith(b"HEAD ")

    client = await RawClient.open(port)
    try:
        await client.send(request_bytes)
        answer = await client.answer(head_only=head_only)
    finally:
        await client.close()

    if head_only:
        assert answer.status == status
        assert OWN_STATUS_LINE.match(answer.status_line)
        assert answer.values(b"Cache-Control") == [b"no-store"]
        assert answer.values(b"Server") == []
    else:
        assert_own_error(answer, status)
    await nothing_reached(app)


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
async def test_a_proxied_answer_closes_the_connection_when_the_client_asks(
    scalingo, paastis, app, version
):
    # RFC 9112 §9.6: after a request with `Connection: close` (or an HTTP/1.0 request without
    # keep-alive) the server closes the connection once it has answered.
    port = await front(scalingo, paastis, app)
    head = b"GET / %b\r\nHost: web.example.net\r\n" % version
    if version == b"HTTP/1.1":
        head += b"Connection: close\r\n"
    client = await RawClient.open(port)
    try:
        await client.send(head + b"\r\n")
        answer = await client.answer()
        after = await client.closed_within(2)
    finally:
        await client.close()

    assert answer.status == 200
    assert after == b""


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET / HTTP/2.0\r\nHost: web.example.net\r\n\r\n",
        b"GET / HTTP/3.0\r\nHost: web.example.net\r\n\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ],
    ids=["http2-get", "http3-get", "h2-preface"],
)
async def test_an_http2_request_line_is_never_answered_as_http2(
    scalingo, paastis, app, request_bytes
):
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, request_bytes)

    assert answer.status_line.startswith(b"HTTP/1.1 "), answer.status_line
    assert 400 <= answer.status < 500 or answer.status == 505, str(answer)
    assert_own_error(answer, answer.status)
    await nothing_reached(app)


# --- smuggling defences (they held; keep them) ------------------------------------------------

HOST = b"Host: web.example.net\r\n"
SMUGGLING = {
    "cl-te": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 6\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nG",
    "te-cl": b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding: chunked\r\n"
    b"Content-Length: 3\r\n\r\n8\r\nSMUGGLED\r\n0\r\n\r\n",
    "cl-te-obfuscated": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 4\r\n"
    b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
    "te-space-before-colon": b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding : chunked\r\n"
    b"\r\n0\r\n\r\n",
    "te-folded": b"POST / HTTP/1.1\r\n" + HOST + b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
    "two-different-lengths": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5\r\n"
    b"Content-Length: 6\r\n\r\nhello!",
    "length-list": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5, 6\r\n\r\nhello!",
    "length-plus": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: +5\r\n\r\nhello",
    "length-hex": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 0x5\r\n\r\nhello",
    "length-negative": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: -1\r\n\r\nhello",
    "length-spaced": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5 5\r\n\r\nhello",
    "length-suffix": b"POST / HTTP/1.1\r\n" + HOST + b"Content-Length: 5a\r\n\r\nhello",
    "obs-fold": b"GET / HTTP/1.1\r\n" + HOST + b"X-A: 1\r\n 2\r\n\r\n",
    "bare-lf-everywhere": b"GET / HTTP/1.1\n" + HOST.replace(b"\r\n", b"\n") + b"\n",
    "bare-lf-one-line": b"GET / HTTP/1.1\r\n" + HOST + b"X-A: 1\nX-B: 2\r\n\r\n",
    "bare-cr": b"GET / HTTP/1.1\r\n" + HOST + b"X-A: 1\rX-B: 2\r\n\r\n",
    "nul-in-value": b"GET / HTTP/1.1\r\n" + HOST + b"X-A: a\x00b\r\n\r\n",
    "nul-in-name": b"GET / HTTP/1.1\r\n" + HOST + b"X-\x00A: a\r\n\r\n",
    "nul-in-target": b"GET /a\x00b HTTP/1.1\r\n" + HOST + b"\r\n",
    "space-in-name": b"GET / HTTP/1.1\r\n" + HOST + b"X A: 1\r\n\r\n",
    "line-without-colon": b"GET / HTTP/1.1\r\n" + HOST + b"Junk\r\n\r\n",
    "space-before-first-header": b"GET / HTTP/1.1\r\n Host: web.example.net\r\n\r\n",
}


@pytest.mark.parametrize("request_bytes", SMUGGLING.values(), ids=SMUGGLING.keys())
async def test_smuggling_attempt_is_400_and_nothing_is_forwarded(
    scalingo, paastis, app, request_bytes
):
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, request_bytes)

    assert_own_error(answer, 400)
    await nothing_reached(app)


@pytest.mark.parametrize(
    "request_bytes, statuses",
    [
        (b"GET / HTTP/1.1\r\n" + HOST + b"X-Big: " + b"a" * 100_000 + b"\r\n\r\n", (400, 431)),
        (b"GET / HTTP/1.1\r\n" + HOST + b"X-" + b"n" * 100_000 + b": 1\r\n\r\n", (400, 431)),
        (b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n" + HOST + b"\r\n", (400, 414)),
    ],
    ids=["long-value", "long-name", "long-target"],
)
async def test_oversized_head_is_refused_and_nothing_is_forwarded(
    scalingo, paastis, app, request_bytes, statuses
):
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, request_bytes)

    assert_own_error(answer, statuses)
    await nothing_reached(app)
