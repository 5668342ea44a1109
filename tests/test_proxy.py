"""The proxy through real sockets: headers, rewrites, streaming, WebSocket, errors, wake strategy,
readiness and in-flight activity (Scalingo API emulator, probe upstreams on loopback)."""

from __future__ import annotations

import asyncio
import gzip
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import aiohttp
import pytest
from aiohttp import WSMsgType, web

from conftest import url_of
from harness import SYSTEM_API, scalingo_env

NAVIGATION = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}


@dataclass
class ProbeUpstream:
    """An upstream app whose routes each probe one proxy behaviour; records what it sees."""

    received: list[dict] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: asyncio.Event = field(default_factory=asyncio.Event)  # a /hold request arrived
    upload_started: asyncio.Event = field(default_factory=asyncio.Event)
    uploaded: list[int] = field(default_factory=list)
    # /health answers 503 this many times before answering 200.
    health_failures: int = 0
    health_paths: list[str] = field(default_factory=list)
    ws_closed_by_client: asyncio.Event = field(default_factory=asyncio.Event)
    gzip_body: bytes = field(default_factory=lambda: gzip.compress(b"squeezed " * 1000))

    def app(self) -> web.Application:
        app = web.Application()
        r = app.router
        r.add_route("*", "/upload", self.upload)
        r.add_get("/hop", self.hop)
        r.add_get("/gzip", self.gzipped)
        r.add_get("/cookies", self.cookies)
        r.add_get("/redirect", self.redirect)
        r.add_get("/prefix/redirect", self.redirect)
        r.add_get("/redirect-away", self.redirect_away)
        r.add_get("/held-stream", self.held_stream)
        r.add_get("/broken-stream", self.broken_stream)
        r.add_get("/dies-before-answering", self.dies_before_answering)
        r.add_get("/slow", self.slow)
        r.add_get("/hold", self.hold)
        r.add_get("/ws", self.websocket)
        r.add_get("/ws-slow", self.slow)
        r.add_get("/ws-refused", self.refuse_websocket)
        r.add_get("/health", self.health)
        r.add_get("/ready", self.health)
        r.add_route("*", "/{tail:.*}", self.echo)
        return app

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        record = {
            "path": request.path,
            "raw_path": request.raw_path,
            "headers": [[k, v] for k, v in request.headers.items()],
            "body": body.decode(errors="replace"),
        }
        self.received.append(record)
        return web.json_response(record)

    async def upload(self, request: web.Request) -> web.Response:
        total = 0
        async for chunk in request.content.iter_any():
            total += len(chunk)
            self.upload_started.set()
        self.uploaded.append(total)
        return web.json_response({"received": total})

    async def hop(self, request: web.Request) -> web.Response:
        return web.Response(
            text="hop",
            headers={
                "Connection": "X-Upstream-Hop",
                "X-Upstream-Hop": "secret",
                "Keep-Alive": "timeout=7",
                "Proxy-Authenticate": "Basic realm=upstream",
                "Proxy-Agent": "upstream",
                "Trailer": "X-Checksum",
                "Upgrade": "h2c",
                "X-End-To-End": "kept",
            },
        )

    async def gzipped(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.gzip_body,
            headers={"Content-Encoding": "gzip", "Content-Type": "text/plain"},
        )

    async def cookies(self, request: web.Request) -> web.Response:
        response = web.Response(text="cookies")
        response.set_cookie("session", "abc")
        response.set_cookie("theme", "dark")
        return response

    async def redirect(self, request: web.Request) -> web.Response:
        target = request.query.get("to", "/landed")
        if not target.startswith("http"):
            target = f"{request.scheme}://{request.host}{target}"
        raise web.HTTPFound(target)

    async def redirect_away(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("https://elsewhere.example.org/page")

    async def held_stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first\n")
        await asyncio.wait_for(self.release.wait(), timeout=10)
        await response.write(b"rest\n")
        await response.write_eof()
        return response

    async def broken_stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.content_length = int(request.query.get("length", "1000"))
        await response.prepare(request)
        await response.write(b"x" * 100)
        await asyncio.sleep(0.2)  # the proxy has taken the start by now
        assert request.transport is not None
        # The app dies mid-answer. Not abort(): a reset may discard what the proxy has not
        # read yet, and the test would then see a 502 before any byte.
        request.transport.close()
        return response

    async def dies_before_answering(self, request: web.Request) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.close()
        await asyncio.sleep(0.1)
        return web.Response(text="never sent")

    async def slow(self, request: web.Request) -> web.Response:
        await asyncio.sleep(2)
        return web.Response(text="late")

    async def hold(self, request: web.Request) -> web.Response:
        self.received.append({"path": "/hold"})
        self.held.set()
        await asyncio.wait_for(self.release.wait(), timeout=10)
        return web.Response(text="released")

    async def health(self, request: web.Request) -> web.Response:
        self.health_paths.append(request.path)
        if self.health_failures > 0:
            self.health_failures -= 1
            return web.Response(status=503, text="booting")
        return web.Response(text="ok")

    async def refuse_websocket(self, request: web.Request) -> web.Response:
        return web.Response(status=403, text="no sockets here")

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                if message.data == "close please":
                    await ws.close(code=4000, message=b"upstream closes")
                    return ws
                await ws.send_str(f"echo: {message.data}")
            elif message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        self.ws_closed_by_client.set()
        return ws


# --- fixtures and helpers ---------------------------------------------------------------------


@pytest.fixture
async def probe(aiohttp_server):
    upstream = ProbeUpstream()
    server = await aiohttp_server(upstream.app(), host="127.0.0.1")
    return upstream, server


async def proxied(scalingo, probe, paastis, *, status: str = "running", rules=None, **env: str):
    """paastis in front of one Scalingo app `web` whose upstream is the probe."""
    emulator, api_url = scalingo
    _upstream, server = probe
    emulator.add_app("web", status=status, base_url=url_of(server))
    return await paastis(scalingo_env(api_url, **env), rules=rules)


def header_values(record: dict, name: str) -> list[str]:
    return [v for k, v in record["headers"] if k.lower() == name.lower()]


@dataclass
class RawResponse:
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


async def raw_exchange(port: int, request: bytes) -> RawResponse:
    """Sends bytes as they are and reads one answer (the request should close the connection)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            status_line = await reader.readline()
            headers: list[tuple[str, str]] = []
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode("latin-1").partition(":")
                headers.append((name.strip(), value.strip()))
            response = RawResponse(int(status_line.split()[1]), headers, b"")
            if "chunked" in ",".join(response.values("Transfer-Encoding")).lower():
                response.body = await read_chunked(reader)
            elif response.values("Content-Length"):
                response.body = await reader.readexactly(int(response.values("Content-Length")[0]))
            else:
                response.body = await reader.read()
            return response
    finally:
        writer.close()


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readline()).split(b";")[0], 16)
        if size == 0:
            await reader.readline()
            return body
        body += await reader.readexactly(size)
        await reader.readline()


def port_of(proxy) -> int:
    return proxy.server.main_port


# --- request headers --------------------------------------------------------------------------


async def test_hop_by_hop_request_headers_are_not_forwarded(scalingo, probe, paastis):
    upstream, _ = probe
    proxy = await proxied(scalingo, probe, paastis)

    answer = await raw_exchange(
        port_of(proxy),
        b"POST /echo HTTP/1.1\r\n"
        b"Host: web.example.net\r\n"
        b"Connection: close, X-Client-Hop\r\n"
        b"X-Client-Hop: secret\r\n"
        b"Keep-Alive: timeout=5\r\n"
        b"TE: trailers\r\n"
        b"Trailer: X-Checksum\r\n"
        b"Upgrade: h2c\r\n"
        b"Proxy-Authorization: Basic c2VjcmV0\r\n"
        b"Proxy-Connection: keep-alive\r\n"
        b"Proxy-Custom: anything\r\n"
        b"X-End-To-End: kept\r\n"
        b"Content-Length: 5\r\n"
        b"\r\nhello",
    )

    assert answer.status == 200
    [record] = upstream.received
    names = {k.lower() for k, _ in record["headers"]}
    for hop in ("x-client-hop", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization"):
        assert hop not in names
    assert not [n for n in names if n.startswith("proxy-")]
    assert header_values(record, "Connection") != ["close, X-Client-Hop"]
    assert header_values(record, "X-End-To-End") == ["kept"]
    assert record["body"] == "hello"


async def test_chunked_request_body_reaches_the_upstream_decoded_once(scalingo, probe, paastis):
    upstream, _ = probe
    proxy = await proxied(scalingo, probe, paastis)

    answer = await raw_exchange(
        port_of(proxy),
        b"POST /echo HTTP/1.1\r\nHost: web.example.net\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    )

    assert answer.status == 200
    assert upstream.received[0]["body"] == "hello world"


async def test_hop_by_hop_response_headers_are_not_returned(scalingo, probe, paastis):
    proxy = await proxied(scalingo, probe, paastis)

    answer = await raw_exchange(
        port_of(proxy),
        b"GET /hop HTTP/1.1\r\nHost: web.example.net\r\nConnection: close\r\n\r\n",
    )

    assert answer.status == 200
    names = {k.lower() for k, _ in answer.headers}
    for hop in ("x-upstream-hop", "keep-alive", "proxy-authenticate", "trailer", "upgrade"):
        assert hop not in names
    assert not [n for n in names if n.startswith("proxy-")]
    assert "X-Upstream-Hop" not in ",".join(answer.values("Connection"))
    assert answer.values("X-End-To-End") == ["kept"]
    assert answer.body == b"hop"


async def test_forwarded_for_is_appended_to_the_clients_value(scalingo, probe, paastis):
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.get(
        "web.example.net", "/echo", headers={"X-Forwarded-For": "203.0.113.7, 10.0.0.1"}
    ) as response:
        record = await response.json()

    assert header_values(record, "X-Forwarded-For") == ["203.0.113.7, 10.0.0.1, 127.0.0.1"]


async def test_forwarded_for_joins_every_line_the_client_sent(scalingo, probe, paastis):
    upstream, _ = probe
    proxy = await proxied(scalingo, probe, paastis)

    await raw_exchange(
        port_of(proxy),
        b"GET /echo HTTP/1.1\r\nHost: web.example.net\r\nConnection: close\r\n"
        b"X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 10.0.0.1\r\n\r\n",
    )

    assert header_values(upstream.received[0], "X-Forwarded-For") == [
        "203.0.113.7, 10.0.0.1, 127.0.0.1"
    ]


async def test_forwarded_proto_and_host_describe_the_clients_request(scalingo, probe, paastis):
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.get(
        "web.example.net:8443",
        "/echo",
        headers={"X-Forwarded-Proto": "gopher", "X-Forwarded-Host": "forged.example"},
    ) as response:
        record = await response.json()

    assert header_values(record, "X-Forwarded-Proto") == ["http"]
    assert header_values(record, "X-Forwarded-Host") == ["web.example.net:8443"]
    assert header_values(record, "X-Forwarded-For") == ["127.0.0.1"]


async def test_forwarded_proto_of_a_tls_terminating_load_balancer_is_kept(scalingo, probe, paastis):
    # Behind a load balancer that terminated TLS, the app must know the client used https
    # (or apps forcing https would redirect forever).
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.get(
        "web.example.net", "/echo", headers={"X-Forwarded-Proto": "https"}
    ) as response:
        record = await response.json()

    assert header_values(record, "X-Forwarded-Proto") == ["https"]


async def test_host_is_set_to_the_upstreams(scalingo, probe, paastis):
    _upstream, server = probe
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.get("web.example.net", "/echo") as response:
        record = await response.json()

    assert header_values(record, "Host") == [f"127.0.0.1:{server.port}"]


async def test_system_headers_are_not_forwarded_when_the_system_api_is_enabled(
    scalingo, probe, paastis
):
    proxy = await proxied(scalingo, probe, paastis, **SYSTEM_API)

    async with proxy.get(
        "web.example.net",
        "/echo",
        headers={"PaastisProxyTarget": "app", "PaastisProxySystemApiToken": "s3cret-token"},
    ) as response:
        record = await response.json()

    assert response.status == 200
    assert header_values(record, "PaastisProxyTarget") == []
    assert header_values(record, "PaastisProxySystemApiToken") == []


async def test_system_target_is_proxied_without_system_headers_when_the_api_is_disabled(
    scalingo, probe, paastis
):
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.get(
        "web.example.net",
        "/apps",
        headers={"PaastisProxyTarget": "system", "PaastisProxySystemApiToken": "s3cret-token"},
    ) as response:
        record = await response.json()

    assert response.status == 200
    assert record["path"] == "/apps"
    assert header_values(record, "PaastisProxyTarget") == []
    assert header_values(record, "PaastisProxySystemApiToken") == []


async def test_origin_equal_to_the_requests_own_origin_is_rewritten_to_the_upstreams(
    scalingo, probe, paastis
):
    _upstream, server = probe
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.get(
        "web.example.net", "/echo", headers={"Origin": "http://web.example.net"}
    ) as response:
        record = await response.json()

    assert header_values(record, "Origin") == [f"http://127.0.0.1:{server.port}"]


async def test_foreign_origin_is_forwarded_unchanged(scalingo, probe, paastis):
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.get(
        "web.example.net", "/echo", headers={"Origin": "https://other.example.org"}
    ) as response:
        record = await response.json()

    assert header_values(record, "Origin") == ["https://other.example.org"]


# --- response rewrites ------------------------------------------------------------------------


async def test_redirect_to_the_upstreams_origin_is_rewritten_to_the_requests(
    scalingo, probe, paastis
):
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.get(
        "web.example.net", "/redirect?to=/landed%3Fa%3D1", allow_redirects=False
    ) as response:
        location = response.headers["Location"]

    assert response.status == 302
    assert location == "http://web.example.net/landed?a=1"


async def test_redirect_to_another_site_is_left_alone(scalingo, probe, paastis):
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.get("web.example.net", "/redirect-away", allow_redirects=False) as response:
        assert response.headers["Location"] == "https://elsewhere.example.org/page"


async def test_redirect_to_a_url_that_merely_starts_like_the_upstreams_origin_is_left_alone(
    scalingo, probe, paastis
):
    _upstream, server = probe
    proxy = await proxied(scalingo, probe, paastis)
    lookalike = f"{url_of(server)}@elsewhere.example.org/page"

    async with proxy.get(
        "web.example.net", "/redirect", params={"to": lookalike}, allow_redirects=False
    ) as response:
        location = response.headers["Location"]

    assert location == lookalike


async def test_multiple_set_cookie_headers_are_all_returned(scalingo, probe, paastis):
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.get("web.example.net", "/cookies") as response:
        cookies = response.headers.getall("Set-Cookie")

    assert len(cookies) == 2
    assert {c.split(";")[0] for c in cookies} == {"session=abc", "theme=dark"}


async def test_gzip_encoded_answer_is_passed_through_untouched(scalingo, probe, paastis):
    upstream, _ = probe
    proxy = await proxied(scalingo, probe, paastis)

    answer = await raw_exchange(
        port_of(proxy),
        b"GET /gzip HTTP/1.1\r\nHost: web.example.net\r\nAccept-Encoding: gzip\r\n"
        b"Connection: close\r\n\r\n",
    )

    assert answer.values("Content-Encoding") == ["gzip"]
    assert answer.body == upstream.gzip_body


# --- upstream URL -----------------------------------------------------------------------------


async def test_rule_upstream_path_prefixes_the_request_path(scalingo, probe, paastis):
    _upstream, server = probe
    rules = f"rules:\n  - pattern: '^web$'\n    upstream: '{url_of(server)}/prefix'\n"
    proxy = await proxied(scalingo, probe, paastis, rules=rules)

    async with proxy.get("web.example.net", "/items/7?q=a%20b") as response:
        record = await response.json()

    assert record["raw_path"] == "/prefix/items/7?q=a%20b"


async def test_upstream_url_template_names_the_app(scalingo, probe, paastis):
    _upstream, server = probe
    proxy = await proxied(
        scalingo, probe, paastis, UPSTREAM_URL_TEMPLATE=f"{url_of(server)}/apps/{{app}}"
    )

    async with proxy.get("web.example.net", "/page") as response:
        record = await response.json()

    assert record["raw_path"] == "/apps/web/page"


async def test_redirect_under_the_upstream_prefix_comes_back_without_it(scalingo, probe, paastis):
    _upstream, server = probe
    rules = f"rules:\n  - pattern: '^web$'\n    upstream: '{url_of(server)}/prefix'\n"
    proxy = await proxied(scalingo, probe, paastis, rules=rules)

    async with proxy.get(
        "web.example.net", "/redirect?to=/prefix/landed", allow_redirects=False
    ) as response:
        assert response.headers["Location"] == "http://web.example.net/landed"


# --- streaming --------------------------------------------------------------------------------


async def test_large_upload_is_streamed_to_the_upstream(scalingo, probe, paastis):
    upstream, _ = probe
    proxy = await proxied(scalingo, probe, paastis)
    size = 20 * 1024 * 1024
    piece = b"u" * (1024 * 1024)

    async def body():
        yield piece
        # The rest only once the upstream got the start: a proxy reading the whole body
        # before forwarding would wait here forever.
        await asyncio.wait_for(upstream.upload_started.wait(), timeout=10)
        for _ in range(size // len(piece) - 1):
            yield piece

    async with proxy.request(
        "POST", "web.example.net", "/upload", data=body(), headers={"Content-Length": str(size)}
    ) as response:
        answer = await response.json()

    assert response.status == 200
    assert answer == {"received": size}
    assert upstream.uploaded == [size]


async def test_response_chunks_arrive_before_the_upstream_finishes(scalingo, probe, paastis):
    upstream, _ = probe
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.get("web.example.net", "/held-stream") as response:
        first = await asyncio.wait_for(response.content.readline(), timeout=5)
        assert not upstream.release.is_set()
        upstream.release.set()
        rest = await asyncio.wait_for(response.content.read(), timeout=5)

    assert first == b"first\n"
    assert rest == b"rest\n"


@pytest.mark.parametrize("length", [1000, 10_000_000])
async def test_upstream_dying_mid_answer_breaks_the_clients_answer(
    scalingo, probe, paastis, length
):
    # Small or large, an answer is streamed as it comes: once its head is out, a failure can
    # only cut the client's connection, never pass a truncated answer off as complete.
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.get("web.example.net", f"/broken-stream?length={length}") as response:
        assert response.status == 200
        start = await asyncio.wait_for(response.content.readexactly(100), timeout=5)
        with pytest.raises(aiohttp.ClientPayloadError):
            await asyncio.wait_for(response.content.read(), timeout=5)

    assert start == b"x" * 100


async def test_upstream_dying_before_answering_is_a_clean_502(scalingo, probe, paastis):
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.get("web.example.net", "/dies-before-answering") as response:
        assert response.status == 502
        assert response.headers["Cache-Control"] == "no-store"
        assert (await response.text()).startswith("paastis: ")


async def test_stream_is_cut_after_the_maximum_connection_lifetime(scalingo, probe, paastis):
    proxy = await proxied(scalingo, probe, paastis, PROXY_MAX_CONNECTION_LIFETIME="1")
    opened = time.monotonic()

    with pytest.raises(aiohttp.ClientPayloadError):
        async with proxy.get("web.example.net", "/held-stream") as response:
            assert await asyncio.wait_for(response.content.readline(), timeout=5) == b"first\n"
            await asyncio.wait_for(response.content.read(), timeout=5)

    assert 0.9 <= time.monotonic() - opened < 4


# --- WebSocket --------------------------------------------------------------------------------


def ws_url(proxy, path: str = "/ws") -> str:
    return proxy.url.replace("http://", "ws://") + path


async def test_websocket_messages_flow_both_ways(scalingo, probe, paastis):
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.session.ws_connect(ws_url(proxy), headers={"Host": "web.example.net"}) as ws:
        await ws.send_str("hello")
        text = await ws.receive(timeout=5)
        await ws.send_bytes(b"\x01\x02\x03")
        binary = await ws.receive(timeout=5)

    assert (text.type, text.data) == (WSMsgType.TEXT, "echo: hello")
    assert (binary.type, binary.data) == (WSMsgType.BINARY, b"\x03\x02\x01")


async def test_websocket_closed_by_the_client_is_closed_upstream(scalingo, probe, paastis):
    upstream, _ = probe
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.session.ws_connect(ws_url(proxy), headers={"Host": "web.example.net"}) as ws:
        await ws.send_str("ping")
        await ws.receive(timeout=5)
        await ws.close()

    await asyncio.wait_for(upstream.ws_closed_by_client.wait(), timeout=5)


async def test_websocket_closed_by_the_upstream_is_closed_for_the_client(scalingo, probe, paastis):
    proxy = await proxied(scalingo, probe, paastis)

    async with proxy.session.ws_connect(ws_url(proxy), headers={"Host": "web.example.net"}) as ws:
        await ws.send_str("close please")
        message = await ws.receive(timeout=5)

    assert message.type is WSMsgType.CLOSE
    assert ws.close_code == 4000


async def test_websocket_is_closed_after_the_maximum_connection_lifetime(scalingo, probe, paastis):
    proxy = await proxied(scalingo, probe, paastis, PROXY_MAX_CONNECTION_LIFETIME="1")
    opened = time.monotonic()

    async with proxy.session.ws_connect(ws_url(proxy), headers={"Host": "web.example.net"}) as ws:
        await ws.send_str("still here")
        assert (await ws.receive(timeout=5)).data == "echo: still here"
        message = await ws.receive(timeout=5)

    assert message.type in (WSMsgType.CLOSE, WSMsgType.CLOSED)
    assert 0.9 <= time.monotonic() - opened < 4


async def test_websocket_refused_by_the_upstream_gets_the_upstreams_status(
    scalingo, probe, paastis
):
    proxy = await proxied(scalingo, probe, paastis)

    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await proxy.session.ws_connect(
            ws_url(proxy, "/ws-refused"), headers={"Host": "web.example.net"}
        )

    assert refused.value.status == 403


async def test_websocket_handshake_slower_than_the_timeouts_is_answered_504(
    scalingo, probe, paastis
):
    proxy = await proxied(
        scalingo, probe, paastis, PROXY_CONNECT_TIMEOUT="0.1", PROXY_READ_TIMEOUT="0.2"
    )

    started = time.monotonic()
    with pytest.raises(aiohttp.WSServerHandshakeError) as failed:
        await proxy.session.ws_connect(
            ws_url(proxy, "/ws-slow"), headers={"Host": "web.example.net"}
        )

    assert failed.value.status == 504
    assert time.monotonic() - started < 1.5


# --- upstream errors --------------------------------------------------------------------------


async def test_unreachable_upstream_is_answered_502(scalingo, paastis, unused_tcp_port):
    emulator, api_url = scalingo
    emulator.add_app("web", base_url=f"http://127.0.0.1:{unused_tcp_port}")
    proxy = await paastis(scalingo_env(api_url))

    async with proxy.get("web.example.net", "/") as response:
        assert response.status == 502


async def test_upstream_slower_than_the_read_timeout_is_answered_504(scalingo, probe, paastis):
    proxy = await proxied(scalingo, probe, paastis, PROXY_READ_TIMEOUT="0.2")

    started = time.monotonic()
    async with proxy.get("web.example.net", "/slow") as response:
        assert response.status == 504
    assert time.monotonic() - started < 1.5


# --- waking: strategy and monitors ------------------------------------------------------------


async def wait_for_status(proxy, host: str, path: str, status: int, headers=None) -> None:
    async with asyncio.timeout(10):
        while True:
            async with proxy.get(host, path, headers=headers or {}) as response:
                if response.status == status:
                    return
            await asyncio.sleep(0.05)


@pytest.mark.parametrize(
    "headers",
    [NAVIGATION, {"Sec-Fetch-Mode": "navigate", "Accept": "*/*"}],
    ids=["accept-html", "sec-fetch-navigate"],
)
async def test_browser_navigation_to_a_sleeping_app_gets_the_waiting_page(
    scalingo, probe, paastis, headers
):
    emulator, _ = scalingo
    proxy = await proxied(scalingo, probe, paastis, status="stopped")

    async with proxy.get("web.example.net", "/", headers=headers) as response:
        page = await response.text()

    assert response.status == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.headers["Cache-Control"] == "no-store"
    assert response.content_type == "text/html"
    assert "<html" in page and "web" in page
    await wait_for_status(proxy, "web.example.net", "/echo", 200)
    assert emulator.count("scale", app="web") == 1


@pytest.mark.parametrize(
    "headers",
    [
        {"Sec-Fetch-Mode": "cors", "Accept": "text/html"},
        {"Accept": "application/json"},
        {"X-Requested-With": "XMLHttpRequest", "Accept": "text/html"},
        {"Accept": "image/avif,image/webp,*/*"},
    ],
    ids=["fetch-cors", "json", "xhr", "asset"],
)
async def test_non_navigation_request_is_held_until_the_app_is_ready(
    scalingo, probe, paastis, headers
):
    emulator, _ = scalingo
    proxy = await proxied(scalingo, probe, paastis, status="stopped")

    async with proxy.get("web.example.net", "/echo", headers=headers) as response:
        record = await response.json()

    assert response.status == 200
    assert response.headers["X-Paastis-Cold-Start"] == "true"
    assert record["path"] == "/echo"
    assert emulator.count("scale", app="web") == 1


async def test_blocking_strategy_holds_browser_navigations_too(scalingo, probe, paastis):
    proxy = await proxied(
        scalingo, probe, paastis, status="stopped", PROXY_WAKE_STRATEGY="blocking"
    )

    async with proxy.get("web.example.net", "/echo", headers=NAVIGATION) as response:
        record = await response.json()

    assert response.status == 200
    assert response.headers["X-Paastis-Cold-Start"] == "true"
    assert record["path"] == "/echo"


@pytest.mark.parametrize(
    "agent",
    [
        "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)",
        "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
    ],
    ids=["uptimerobot", "googlebot"],
)
async def test_monitor_never_wakes_a_sleeping_app(scalingo, probe, paastis, agent):
    emulator, _ = scalingo
    proxy = await proxied(scalingo, probe, paastis, status="stopped")

    async with proxy.get(
        "web.example.net", "/", headers={"User-Agent": agent, **NAVIGATION}
    ) as response:
        await response.read()
    await asyncio.sleep(0.2)  # a background wake would have called the provider by now

    assert response.status == 503
    assert response.headers["Retry-After"].isdigit()
    assert response.headers["X-Paastis-App-State"] == "sleeping"
    assert emulator.count("scale") == 0
    assert emulator.status_of("web") == "stopped"


async def test_monitor_reaches_a_running_app_without_keeping_it_awake(scalingo, probe, paastis):
    proxy = await proxied(scalingo, probe, paastis)
    await proxy.tick()  # registers `web`
    registered = await proxy.server.registry.get("web")
    await asyncio.sleep(0.05)

    monitor = "Mozilla/5.0+(compatible; UptimeRobot/2.0; http://www.uptimerobot.com/)"
    async with proxy.get("web.example.net", "/echo", headers={"User-Agent": monitor}) as response:
        assert response.status == 200

    after = await proxy.server.registry.get("web")
    assert after.last_accessed_at == registered.last_accessed_at


# --- readiness --------------------------------------------------------------------------------


async def test_first_answer_waits_until_the_readiness_path_answers_below_500(
    scalingo, probe, paastis
):
    upstream, _ = probe
    upstream.health_failures = 2
    proxy = await proxied(
        scalingo, probe, paastis, status="stopped", PROXY_READINESS_PATH="/health"
    )

    async with proxy.get("web.example.net", "/echo") as response:
        assert response.status == 200

    assert upstream.health_paths == ["/health"] * 3
    assert upstream.health_failures == 0


async def test_rule_readiness_path_overrides_the_environments(scalingo, probe, paastis):
    upstream, _ = probe
    rules = "rules:\n  - pattern: '^web$'\n    readiness_path: '/ready'\n"
    proxy = await proxied(
        scalingo, probe, paastis, status="stopped", rules=rules, PROXY_READINESS_PATH="/health"
    )

    async with proxy.get("web.example.net", "/echo") as response:
        assert response.status == 200

    assert upstream.health_paths == ["/ready"]


async def test_empty_rule_readiness_path_turns_the_check_off(scalingo, probe, paastis):
    upstream, _ = probe
    upstream.health_failures = 100  # would time the wake out if it were checked
    rules = "rules:\n  - pattern: '^web$'\n    readiness_path: ''\n"
    proxy = await proxied(
        scalingo, probe, paastis, status="stopped", rules=rules, PROXY_READINESS_PATH="/health"
    )

    async with proxy.get("web.example.net", "/echo") as response:
        assert response.status == 200

    assert upstream.health_paths == []


async def test_empty_readiness_path_variable_turns_the_check_off(scalingo, probe, paastis):
    upstream, _ = probe
    upstream.health_failures = 100
    proxy = await proxied(scalingo, probe, paastis, status="stopped", PROXY_READINESS_PATH="")

    async with proxy.get("web.example.net", "/health") as response:
        # Forwarded at once: the probe's own /health still says 503.
        assert response.status == 503

    assert upstream.health_paths == ["/health"]


async def get_text(proxy, host: str, path: str, **kwargs) -> tuple[int, str]:
    async with proxy.get(host, path, **kwargs) as response:
        return response.status, await response.text()


# --- in-flight activity -----------------------------------------------------------------------


async def test_app_with_a_request_in_flight_is_not_stopped_past_its_idle_time(
    scalingo, probe, paastis
):
    emulator, _ = scalingo
    upstream, _ = probe
    proxy = await proxied(scalingo, probe, paastis, START_AND_STOP_MAX_IDLE_TIME="0")
    await proxy.tick()  # registers `web`

    held = asyncio.ensure_future(get_text(proxy, "web.example.net", "/hold"))
    await asyncio.wait_for(upstream.held.wait(), timeout=5)
    report = await proxy.tick()
    upstream.release.set()
    assert await asyncio.wait_for(held, timeout=5) == (200, "released")

    assert report.stopped == []
    assert emulator.count("scale", app="web") == 0
    assert (await proxy.tick()).stopped == ["web"]


async def test_a_monitors_long_request_does_not_keep_its_app_awake(scalingo, probe, paastis):
    emulator, _ = scalingo
    upstream, _ = probe
    proxy = await proxied(scalingo, probe, paastis, START_AND_STOP_MAX_IDLE_TIME="0")
    await proxy.tick()  # registers `web`
    monitor = {"User-Agent": "Mozilla/5.0+(compatible; UptimeRobot/2.0)"}

    held = asyncio.ensure_future(get_text(proxy, "web.example.net", "/hold", headers=monitor))
    await asyncio.wait_for(upstream.held.wait(), timeout=5)
    report = await proxy.tick()
    upstream.release.set()
    await asyncio.wait_for(asyncio.gather(held, return_exceptions=True), timeout=5)

    assert report.stopped == ["web"]
    assert emulator.count("scale", app="web") == 1


async def test_app_is_stamped_when_a_request_ends(scalingo, probe, paastis):
    upstream, _ = probe
    proxy = await proxied(scalingo, probe, paastis)
    await proxy.tick()  # registers `web`

    held = asyncio.ensure_future(get_text(proxy, "web.example.net", "/hold"))
    await asyncio.wait_for(upstream.held.wait(), timeout=5)
    await asyncio.sleep(0.05)
    released_at = datetime.now(UTC)
    upstream.release.set()
    await asyncio.wait_for(held, timeout=5)

    registered = await proxy.server.registry.get("web")
    assert registered is not None
    assert registered.last_accessed_at >= released_at


# --- the request itself -----------------------------------------------------------------------


async def test_request_without_a_host_header_is_400(scalingo, probe, paastis):
    upstream, _ = probe
    proxy = await proxied(scalingo, probe, paastis)

    answer = await raw_exchange(port_of(proxy), b"GET /echo HTTP/1.0\r\n\r\n")

    assert answer.status == 400
    assert upstream.received == []


async def test_client_expecting_100_continue_is_told_to_send_its_body(scalingo, probe, paastis):
    upstream, _ = probe
    proxy = await proxied(scalingo, probe, paastis)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy))
    try:
        writer.write(
            b"POST /echo HTTP/1.1\r\nHost: web.example.net\r\nConnection: close\r\n"
            b"Content-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        )
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=2)
        writer.write(b"hello")
        final = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()

    assert interim.startswith(b"HTTP/1.1 100")
    assert final.startswith(b"HTTP/1.1 200")
    assert upstream.received[0]["body"] == "hello"


async def test_app_listed_in_an_unknown_state_is_asked_before_a_waiting_page(
    scalingo, probe, paastis
):
    emulator, api_url = scalingo
    _upstream, server = probe
    emulator.add_app("web", status="migrating", base_url=url_of(server))
    proxy = await paastis(scalingo_env(api_url))
    await proxy.tick()  # the listing says `migrating`: state unknown
    emulator.apps["web"].status = "running"

    async with proxy.get("web.example.net", "/echo", headers=NAVIGATION) as response:
        assert response.status == 200
    assert emulator.count("scale") == 0


async def test_head_answer_keeps_the_upstreams_content_length_without_a_body(
    scalingo, probe, paastis
):
    upstream, _ = probe
    proxy = await proxied(scalingo, probe, paastis)
    reader, writer = await asyncio.open_connection("127.0.0.1", port_of(proxy))
    try:
        writer.write(b"HEAD /gzip HTTP/1.1\r\nHost: web.example.net\r\nConnection: close\r\n\r\n")
        answer = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()

    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert f"Content-Length: {len(upstream.gzip_body)}".encode() in head
    assert body == b""
