"""What passes through the proxy, checked byte for byte (issue 7, items 5, 6, 8 and 10; DESIGN §5
"Fidelity", "Via and loops"): raw-socket clients, and raw upstreams that write exact bytes."""

from __future__ import annotations

import asyncio
import time
from email.utils import parsedate_to_datetime

import pytest

from emulators.raw_upstream import RawRequest, RawUpstream
from harness import scalingo_env
from raw_client import RawClient, Stopwatch, exchange, read_answer

# Headers paastis may put on a forwarded request besides the client's: DESIGN §5 lists
# X-Forwarded-*, Via and a missing Date; Host is the upstream's; Connection and Keep-Alive
# belong to the hop, and a body the client sent needs its framing.
ADDED_TO_REQUESTS = {
    b"host",
    b"x-forwarded-for",
    b"x-forwarded-proto",
    b"x-forwarded-host",
    b"via",
    b"date",
    b"connection",
    b"keep-alive",
}
ADDED_TO_ANSWERS = {b"date", b"connection", b"keep-alive", b"x-paastis-cold-start"}
FRAMING = {b"content-length", b"transfer-encoding"}


async def front(scalingo, paastis, upstream: RawUpstream, *, status="running", **env) -> int:
    """paastis in front of the Scalingo app `web` whose upstream is `upstream`; its port."""
    emulator, api_url = scalingo
    emulator.add_app("web", status=status, base_url=upstream.url)
    proxy = await paastis(scalingo_env(api_url, **env))
    return proxy.server.main_port


# --- 5. header values pass byte for byte ------------------------------------------------------

OBS_TEXT_VALUES = {
    b"X-Foo": b"caf\xe9",
    b"X-Bytes": b"\x80\x9f\xa0\xff",
    b"X-Utf8": b"caf\xc3\xa9 \xe2\x82\xac",
    b"X-Spaces": b"a  b\t c",
    b"X-Quoted": b'attachment; filename="caf\xe9.txt"',
    b"X-Empty": b"",
}


async def test_request_header_values_reach_the_app_byte_for_byte(scalingo, paastis, raw_upstreams):
    app = await raw_upstreams()
    port = await front(scalingo, paastis, app)
    lines = b"".join(b"%b: %b\r\n" % (name, value) for name, value in OBS_TEXT_VALUES.items())

    answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: web.example.net\r\n" + lines + b"\r\n")

    assert answer.status == 200, str(answer)
    [request] = app.requests
    for name, value in OBS_TEXT_VALUES.items():
        assert request.values(name) == [value], (name, request.head)


async def test_answer_header_values_reach_the_client_byte_for_byte(
    scalingo, paastis, raw_upstreams
):
    lines = b"".join(b"%b: %b\r\n" % (name, value) for name, value in OBS_TEXT_VALUES.items())
    app = await raw_upstreams(
        b'HTTP/1.1 200 OK\r\nContent-Disposition: attachment; filename="caf\xe9.txt"\r\n'
        + lines
        + b"Content-Length: 2\r\n\r\nok"
    )
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, b"GET /file HTTP/1.1\r\nHost: web.example.net\r\n\r\n")

    assert answer.status == 200
    assert answer.values(b"Content-Disposition") == [b'attachment; filename="caf\xe9.txt"']
    for name, value in OBS_TEXT_VALUES.items():
        assert answer.values(name) == [value], (name, answer.head)
    assert answer.body == b"ok"


def joined(values: list[bytes]) -> list[bytes]:
    """The members of repeated field lines, in order (RFC 9110 §5.3: lines or commas alike)."""
    return [member.strip() for value in values for member in value.split(b",")]


async def test_repeated_request_fields_keep_their_order(scalingo, paastis, raw_upstreams):
    app = await raw_upstreams()
    port = await front(scalingo, paastis, app)

    await exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: web.example.net\r\nX-Multi: 3\r\nAccept: a/b\r\n"
        b"X-Multi: 1\r\nX-Multi: 2\r\n\r\n",
    )

    [request] = app.requests
    assert joined(request.values(b"X-Multi")) == [b"3", b"1", b"2"]


async def test_repeated_answer_fields_keep_their_order(scalingo, paastis, raw_upstreams):
    app = await raw_upstreams(
        b"HTTP/1.1 200 OK\r\nX-Multi: 3\r\nSet-Cookie: a=1\r\nX-Multi: 1\r\n"
        b"Set-Cookie: b=2; Path=/\r\nX-Multi: 2\r\nContent-Length: 0\r\n\r\n"
    )
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: web.example.net\r\n\r\n")

    assert joined(answer.values(b"X-Multi")) == [b"3", b"1", b"2"]
    assert answer.values(b"Set-Cookie") == [b"a=1", b"b=2; Path=/"]


# --- 6. nothing added -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /plain HTTP/1.1\r\nHost: web.example.net\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: web.example.net\r\nContent-Length: 5\r\n\r\nhello",
        b"PUT /upload HTTP/1.1\r\nHost: web.example.net\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
        b"GET /plain HTTP/1.0\r\nHost: web.example.net\r\n\r\n",
    ],
    ids=["get", "post-length", "put-chunked", "get-http10"],
)
async def test_a_forwarded_request_gains_no_header_but_the_listed_ones(
    scalingo, paastis, raw_upstreams, request_bytes
):
    app = await raw_upstreams()
    port = await front(scalingo, paastis, app)
    sent = RawRequest(request_bytes.split(b"\r\n\r\n")[0] + b"\r\n\r\n", b"", b"")

    answer = await exchange(port, request_bytes)

    assert answer.status == 200, str(answer)
    [request] = app.requests
    added = request.names() - sent.names()
    if sent.names() & FRAMING:
        added -= FRAMING  # re-framed for the hop, as the client's body needs
    assert added <= ADDED_TO_REQUESTS, added - ADDED_TO_REQUESTS
    assert request.values(b"Content-Type") == []
    if not sent.names() & FRAMING:
        assert request.names() & FRAMING == set(), request.head  # a body-less request stays so
    assert request.body in (b"", b"hello")


@pytest.mark.parametrize(
    "answer_bytes",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 404 Not Found\r\nX-Own: 1\r\nContent-Length: 5\r\n\r\nhello",
    ],
    ids=["length", "chunked", "no-content", "not-found"],
)
async def test_an_answer_gains_no_header_but_a_missing_date(
    scalingo, paastis, raw_upstreams, answer_bytes
):
    app = await raw_upstreams(answer_bytes)
    port = await front(scalingo, paastis, app)
    sent = RawRequest(answer_bytes.split(b"\r\n\r\n")[0] + b"\r\n\r\n", b"", b"")

    answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: web.example.net\r\n\r\n")

    added = answer.names() - sent.names() - FRAMING
    assert added <= ADDED_TO_ANSWERS, added - ADDED_TO_ANSWERS
    assert answer.values(b"Content-Type") == []
    assert answer.values(b"Server") == []
    assert answer.values(b"X-Paastis-Cold-Start") == []  # the app was running
    assert len(answer.values(b"Date")) == 1
    assert answer.body in (b"", b"hello")


async def test_a_missing_date_is_added_as_an_http_date_of_now(scalingo, paastis, raw_upstreams):
    app = await raw_upstreams()
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: web.example.net\r\n\r\n")

    [date] = answer.values(b"Date")
    assert date.endswith(b" GMT")
    assert abs(parsedate_to_datetime(date.decode()).timestamp() - time.time()) < 60


async def test_the_apps_own_date_is_kept_as_sent(scalingo, paastis, raw_upstreams):
    app = await raw_upstreams(
        b"HTTP/1.1 200 OK\r\nDate: Mon, 01 Jan 2001 00:00:00 GMT\r\nContent-Length: 2\r\n\r\nok"
    )
    port = await front(scalingo, paastis, app)

    answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: web.example.net\r\n\r\n")

    assert answer.values(b"Date") == [b"Mon, 01 Jan 2001 00:00:00 GMT"]


# --- 8. every answer streamed, every answer bounded -------------------------------------------


def dripping(head: bytes, body: bytes, *, gap: float, chunked: bool = False, close: bool = False):
    """An answer whose body goes out one byte every `gap` seconds."""

    async def answer(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(head)
        await writer.drain()
        for byte in body:
            await asyncio.sleep(gap)
            writer.write(b"1\r\n%c\r\n" % byte if chunked else bytes([byte]))
            await writer.drain()
        if chunked:
            writer.write(b"0\r\n\r\n")
        if close:
            writer.close()

    return answer


DRIPPED = b"abcdefgh"


@pytest.mark.parametrize(
    "answer",
    [
        dripping(b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\n", DRIPPED, gap=0.2),
        dripping(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", DRIPPED, gap=0.2, chunked=True
        ),
        dripping(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", DRIPPED, gap=0.2, close=True),
    ],
    ids=["content-length", "chunked", "until-close"],
)
async def test_a_small_dripping_answer_reaches_the_client_progressively(
    scalingo, paastis, raw_upstreams, answer
):
    app = await raw_upstreams(answer)
    port = await front(scalingo, paastis, app)
    client = await RawClient.open(port)
    watch = Stopwatch()
    try:
        await client.send(b"GET /drip HTTP/1.1\r\nHost: web.example.net\r\n\r\n")
        async with asyncio.timeout(6):
            head = await client.reader.readuntil(b"\r\n\r\n")
            head_at = watch.elapsed
            chunked = b"chunked" in head.lower()
            arrivals: list[tuple[float, bytes]] = []
            received = b""
            while True:
                data = await client.reader.read(65536)
                if not data:
                    break
                arrivals.append((watch.elapsed, data))
                received += data
                if chunked and received.endswith(b"0\r\n\r\n"):
                    break
                if not chunked and received.endswith(DRIPPED):
                    break
    finally:
        await client.close()

    body = dechunk(received) if chunked else received
    assert body == DRIPPED
    first_byte_at, last_byte_at = arrivals[0][0], arrivals[-1][0]
    # The upstream takes 1.6 s: its first byte must not wait for its last.
    assert head_at < 0.6
    assert first_byte_at < 0.8, arrivals
    assert last_byte_at - first_byte_at > 0.8, arrivals
    assert len(arrivals) >= 4, arrivals


def dechunk(data: bytes) -> bytes:
    body = b""
    while True:
        size_line, _, data = data.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            return body
        body, data = body + data[:size], data[size + 2 :]


def stalling(head: bytes, first: bytes):
    """An answer that sends `first` and then nothing more (for up to 20 s)."""

    async def answer(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        writer.write(head + first)
        await writer.drain()
        await asyncio.sleep(20)

    return answer


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 65536\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\na\r\n",
    ],
    ids=["small-length", "64KiB-length", "chunked"],
)
async def test_an_answer_stalling_after_10_bytes_is_cut_at_the_maximum_lifetime(
    scalingo, paastis, raw_upstreams, head
):
    app = await raw_upstreams(stalling(head, b"0123456789"))
    port = await front(
        scalingo, paastis, app, PROXY_READ_TIMEOUT="1", PROXY_MAX_CONNECTION_LIFETIME="1.5"
    )
    client = await RawClient.open(port)
    watch = Stopwatch()
    try:
        await client.send(b"GET /stall HTTP/1.1\r\nHost: web.example.net\r\n\r\n")
        async with asyncio.timeout(2):
            answer_head = await client.reader.readuntil(b"\r\n\r\n")
            first = b""
            while b"0123456789" not in first:
                first += await client.reader.read(65536)
        first_at = watch.elapsed
        rest = await client.closed_within(6)
        ended_at = watch.elapsed
    finally:
        await client.close()

    assert answer_head.startswith(b"HTTP/1.1 200 ")
    assert first_at < 0.9  # the 10 bytes at once, not after a timeout
    assert 1.3 <= ended_at < 4
    assert b"0\r\n\r\n" not in first + rest  # never passed off as complete


async def test_an_answer_whose_head_stalls_is_bounded(scalingo, paastis, raw_upstreams):
    app = await raw_upstreams(stalling(b"HTTP/1.1 200 OK\r\nContent-Le", b""))
    port = await front(
        scalingo, paastis, app, PROXY_READ_TIMEOUT="1", PROXY_MAX_CONNECTION_LIFETIME="2"
    )
    watch = Stopwatch()

    answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: web.example.net\r\n\r\n", timeout=5)

    assert answer.status in (502, 504), str(answer)
    assert watch.elapsed < 3.5


async def test_an_app_that_never_answers_is_504_after_the_read_timeout(
    scalingo, paastis, raw_upstreams
):
    app = await raw_upstreams(stalling(b"", b""))
    port = await front(scalingo, paastis, app, PROXY_READ_TIMEOUT="1")
    watch = Stopwatch()

    answer = await exchange(port, b"GET / HTTP/1.1\r\nHost: web.example.net\r\n\r\n", timeout=5)

    assert answer.status == 504, str(answer)
    assert answer.body.startswith(b"paastis: ")
    assert 0.8 <= watch.elapsed < 3


async def test_a_body_the_client_abandons_never_desynchronises_the_apps_connection(
    scalingo, paastis, raw_upstreams
):
    # A request whose body stops short must not leave a kept-alive connection to the app on
    # which the next client's request would be read as the rest of that body.
    app = await raw_upstreams()
    port = await front(scalingo, paastis, app)
    assert (
        await exchange(port, b"GET /warm HTTP/1.1\r\nHost: web.example.net\r\n\r\n")
    ).status == 200
    abandoning = await RawClient.open(port)
    await abandoning.send(
        b"POST /upload HTTP/1.1\r\nHost: web.example.net\r\nContent-Length: 100\r\n\r\n0123456789"
    )
    await asyncio.sleep(0.2)
    abandoning.writer.transport.abort()
    await asyncio.sleep(0.1)

    answer = await exchange(port, b"GET /next HTTP/1.1\r\nHost: web.example.net\r\n\r\n")

    assert answer.status == 200
    lines = [r.request_line for r in app.requests]
    assert b"GET /next HTTP/1.1" in lines, lines
    assert all(b"GET /next" not in r.body for r in app.requests)


# --- 10. Via and loops ------------------------------------------------------------------------


def via_entries(values: list[bytes]) -> list[list[bytes]]:
    """Each Via entry as [received-protocol, received-by, comment words...]."""
    return [entry.split() for value in values for entry in value.split(b",") if entry.strip()]


async def our_via(scalingo, paastis, raw_upstreams) -> tuple[int, bytes]:
    """(port, the Via entry paastis adds), learnt as the app sees it."""
    app = await raw_upstreams()
    port = await front(scalingo, paastis, app)
    await exchange(port, b"GET / HTTP/1.1\r\nHost: web.example.net\r\n\r\n")
    [request] = app.requests
    *_, entry = request.values(b"Via")[-1].split(b",")
    return port, entry.strip()


async def test_a_forwarded_request_carries_a_via_entry_naming_paastis(
    scalingo, paastis, raw_upstreams
):
    app = await raw_upstreams()
    port = await front(scalingo, paastis, app)

    await exchange(port, b"GET / HTTP/1.1\r\nHost: web.example.net\r\n\r\n")

    [request] = app.requests
    [entry] = via_entries(request.values(b"Via"))
    protocol, received_by = entry[0], entry[1]
    assert protocol == b"1.1"  # RFC 9110 §7.6.3: the protocol name may be omitted for HTTP
    assert b"paastis" in received_by.lower() or b"paastis" in b" ".join(entry[2:]).lower()


async def test_the_clients_via_entries_are_kept_and_paastis_appends_its_own(
    scalingo, paastis, raw_upstreams
):
    app = await raw_upstreams()
    port = await front(scalingo, paastis, app)

    await exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: web.example.net\r\nVia: 1.0 fred, 1.1 p.example (Apache/1.1)\r\n"
        b"Via: 1.1 vegur\r\n\r\n",
    )

    [request] = app.requests
    entries = via_entries(request.values(b"Via"))
    assert [e[:2] for e in entries[:3]] == [
        [b"1.0", b"fred"],
        [b"1.1", b"p.example"],
        [b"1.1", b"vegur"],
    ]
    assert len(entries) == 4
    assert b"paastis" in b" ".join(entries[3]).lower()


@pytest.mark.parametrize(
    "via_lines",
    [
        b"Via: %(entry)b\r\n",
        b"Via: 1.1 vegur, %(entry)b\r\n",
        b"Via: 1.1 vegur\r\nVia: %(entry)b\r\n",
        b"Via: %(entry)b, 1.1 vegur\r\n",
    ],
    ids=["alone", "after-another", "own-line", "then-another"],
)
async def test_a_request_that_already_went_through_paastis_is_a_loop_508(
    scalingo, paastis, raw_upstreams, via_lines
):
    port, entry = await our_via(scalingo, paastis, raw_upstreams)
    emulator, _ = scalingo
    sleepy = await raw_upstreams()
    emulator.add_app("sleepy", status="stopped", base_url=sleepy.url)

    running = await exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: web.example.net\r\n" + via_lines % {b"entry": entry} + b"\r\n",
    )
    asleep = await exchange(
        port,
        b"GET / HTTP/1.1\r\nHost: sleepy.example.net\r\nAccept: text/html\r\n"
        + via_lines % {b"entry": entry}
        + b"\r\n",
    )
    await asyncio.sleep(0.2)  # a wake in the background would have called the provider by now

    for answer, app in ((running, b"web"), (asleep, b"sleepy")):
        assert answer.status == 508, str(answer)
        assert answer.status_line.startswith(b"HTTP/1.1 508 ")
        assert answer.body.startswith(b"paastis: ") and app in answer.body, answer.body
        assert answer.values(b"Cache-Control") == [b"no-store"]
    assert sleepy.connections == 0
    assert emulator.count("scale") == 0
    assert emulator.count("restart") == 0
    assert emulator.status_of("sleepy") == "stopped"


@pytest.mark.parametrize(
    "via", [b"1.1 vegur", b"1.1 heroku-router", b"1.1 p.example (paastis-compatible)"]
)
async def test_another_proxys_via_is_not_a_loop(scalingo, paastis, raw_upstreams, via):
    app = await raw_upstreams()
    port = await front(scalingo, paastis, app)

    answer = await exchange(
        port, b"GET / HTTP/1.1\r\nHost: web.example.net\r\nVia: %b\r\n\r\n" % via
    )

    assert answer.status == 200, str(answer)
    assert len(app.requests) == 1


async def test_an_upstream_pointing_back_at_paastis_is_508_not_a_recursion(
    scalingo, paastis, raw_upstreams
):
    """The app's upstream is a vhost that sends every request back to paastis (as a custom
    domain or Clever Cloud favourite vhost pointing at paastis would)."""
    paastis_port: list[int] = []

    async def reflect(request: RawRequest, writer: asyncio.StreamWriter) -> None:
        lines = [
            line
            for line in request.head.split(b"\r\n")[1:]
            if line and not line.lower().startswith((b"host:", b"connection:"))
        ]
        head = b"\r\n".join(
            [request.request_line, b"Host: web.example.net", *lines, b"Connection: close"]
        )
        back = await RawClient.open(paastis_port[0])
        try:
            await back.send(head + b"\r\n\r\n" + request.raw_body)
            answer = await back.answer(timeout=5)
        finally:
            await back.close()
        writer.write(answer.head + answer.body)
        await writer.drain()
        writer.close()

    vhost = await raw_upstreams(reflect)
    paastis_port.append(await front(scalingo, paastis, vhost))

    answer = await exchange(
        paastis_port[0], b"GET /page HTTP/1.1\r\nHost: web.example.net\r\n\r\n", timeout=8
    )

    assert answer.status == 508, str(answer)
    assert b"web" in answer.body
    assert len(vhost.requests) == 1  # the loop ended at its second pass through paastis


# --- the raw upstream itself ------------------------------------------------------------------


async def test_raw_upstream_records_the_exact_request_bytes():
    """The tool the tests above rely on: what it records is what was written to it."""
    upstream = await RawUpstream().start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", upstream.port)
        writer.write(b"POST /x HTTP/1.1\r\nX-Foo: caf\xe9\r\nContent-Length: 3\r\n\r\nabc")
        answer = await asyncio.wait_for(read_answer(reader), timeout=5)
        writer.close()
    finally:
        await upstream.stop()

    assert answer.body == b"ok"
    [request] = upstream.requests
    assert request.request_line == b"POST /x HTTP/1.1"
    assert request.values(b"x-foo") == [b"caf\xe9"]
    assert request.body == b"abc"
