"""A WebSocket through paastis must be indistinguishable from a direct one for both ends (issue 7
item 9, DESIGN §5 "Fidelity"). The `websockets` library plays both ends: the client, and the app
behind the Scalingo emulator's app `web`; neither is paastis' own WebSocket code."""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from harness import scalingo_env


@dataclass
class WsApp:
    """The app's end: what its handler saw."""

    server: Server
    seen: dict[str, Any] = field(default_factory=dict)
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def url(self) -> str:
        port = next(iter(self.server.sockets)).getsockname()[1]
        return f"http://127.0.0.1:{port}"


@pytest.fixture
async def ws_app():
    """Starts a `websockets` server as the app; `handler(ws, app)` runs per connection."""
    started: list[WsApp] = []

    async def start(handler, **options: Any) -> WsApp:
        async def run(ws: ServerConnection) -> None:
            try:
                await handler(ws, app)
            except ConnectionClosed as closed:
                app.seen["closed"] = closed
            finally:
                app.seen.setdefault("close_rcvd", ws.protocol.close_rcvd)
                app.done.set()

        options = {"ping_interval": None, "max_size": None, "close_timeout": 2, **options}
        server = await serve(run, "127.0.0.1", 0, **options)
        app = WsApp(server)
        started.append(app)
        return app

    yield start
    for app in started:
        app.server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(app.server.wait_closed(), timeout=5)


async def front(scalingo, paastis, app: WsApp, **env: str) -> int:
    emulator, api_url = scalingo
    emulator.add_app("web", status="running", base_url=app.url)
    proxy = await paastis(scalingo_env(api_url, **env))
    return proxy.server.main_port


def client(port: int, path: str = "/ws", **options: Any) -> connect:
    """A websockets client for ws://web.example.net`path`, connected to paastis on `port`."""
    options = {
        "ping_interval": None,
        "max_size": None,
        "open_timeout": 5,
        "close_timeout": 2,
        "proxy": None,
        **options,
    }
    return connect(f"ws://web.example.net{path}", host="127.0.0.1", port=port, **options)


async def echo(ws: ServerConnection, app: WsApp) -> None:
    async for message in ws:
        await ws.send(message)


async def done(app: WsApp) -> None:
    await asyncio.wait_for(app.done.wait(), timeout=5)


# --- messages ---------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [None, "deflate"])
async def test_a_message_over_4_mib_passes_both_ways(scalingo, paastis, ws_app, compression):
    app = await ws_app(echo, compression=compression)
    port = await front(scalingo, paastis, app)
    binary = os.urandom(5 * 1024 * 1024)
    text = "paastis " * (6 * 1024 * 1024 // 8)

    async with client(port, compression=compression) as ws:
        await ws.send(binary)
        echoed_binary = await asyncio.wait_for(ws.recv(), timeout=15)
        await ws.send(text)
        echoed_text = await asyncio.wait_for(ws.recv(), timeout=15)

    assert echoed_binary == binary
    assert echoed_text == text


async def test_fragmented_messages_pass_fragment_by_fragment(scalingo, paastis, ws_app):
    async def fragments(ws: ServerConnection, app: WsApp) -> None:
        app.seen.setdefault("fragments", []).append([part async for part in ws.recv_streaming()])
        await ws.send(["from ", "the ", "app"])
        await ws.wait_closed()

    app = await ws_app(fragments, compression=None)
    port = await front(scalingo, paastis, app)

    async def exchange(port: int) -> list[str]:
        async with client(port, compression=None) as ws:
            await ws.send([b"one", b"two", b"three"])
            async with asyncio.timeout(5):
                return [part async for part in ws.recv_streaming()]

    direct = await exchange(int(app.url.rsplit(":", 1)[1]))
    proxied = await exchange(port)

    await asyncio.sleep(0.1)
    sent_direct, sent_proxied = app.seen["fragments"]
    assert sent_proxied == sent_direct
    assert sent_proxied[:3] == [b"one", b"two", b"three"]  # websockets may end with b""
    assert proxied == direct
    assert proxied[:3] == ["from ", "the ", "app"]


async def test_pings_are_answered_both_ways(scalingo, paastis, ws_app):
    async def pinging(ws: ServerConnection, app: WsApp) -> None:
        pong = await ws.ping(b"from the app")
        app.seen["latency"] = await asyncio.wait_for(pong, timeout=5)
        await ws.send("pinged")
        await ws.wait_closed()

    app = await ws_app(pinging)
    port = await front(scalingo, paastis, app)

    async with client(port) as ws:
        pong = await ws.ping(b"from the client")
        await asyncio.wait_for(pong, timeout=5)
        assert await asyncio.wait_for(ws.recv(), timeout=5) == "pinged"

    await done(app)
    assert app.seen["latency"] >= 0


# --- closing ----------------------------------------------------------------------------------


async def test_the_clients_close_code_and_reason_reach_the_app(scalingo, paastis, ws_app):
    app = await ws_app(echo)
    port = await front(scalingo, paastis, app)

    async with client(port) as ws:
        await ws.send("hello")
        await asyncio.wait_for(ws.recv(), timeout=5)
        await ws.close(4001, "bye")

    await done(app)
    rcvd = app.seen["close_rcvd"]
    assert (rcvd.code, rcvd.reason) == (4001, "bye")
    # The app's answering close frame came back through paastis too.
    assert (ws.protocol.close_rcvd.code, ws.protocol.close_rcvd.reason) == (4001, "bye")


async def test_the_apps_close_code_and_reason_reach_the_client(scalingo, paastis, ws_app):
    async def closing(ws: ServerConnection, app: WsApp) -> None:
        await ws.recv()
        await ws.close(4001, "reason")

    app = await ws_app(closing)
    port = await front(scalingo, paastis, app)

    async with client(port) as ws:
        await ws.send("close please")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=5)

    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "reason")
    await done(app)
    assert app.seen["close_rcvd"].code == 4001  # the client's answering frame reached the app


async def test_a_client_close_without_a_code_reaches_the_app_without_a_code(
    scalingo, paastis, ws_app
):
    app = await ws_app(echo)
    port = await front(scalingo, paastis, app)

    async with client(port) as ws:
        await ws.send("hello")
        await asyncio.wait_for(ws.recv(), timeout=5)
        await ws.close(code=None)  # type: ignore[arg-type]  # an empty close frame

    await done(app)
    assert app.seen["close_rcvd"].code == 1005  # "no status received", not 1000


async def test_an_app_close_without_a_code_reaches_the_client_without_a_code(
    scalingo, paastis, ws_app
):
    async def closing(ws: ServerConnection, app: WsApp) -> None:
        await ws.recv()
        await ws.close(code=None)  # type: ignore[arg-type]

    app = await ws_app(closing)
    port = await front(scalingo, paastis, app)

    async with client(port) as ws:
        await ws.send("close please")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=5)

    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1005


@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_an_app_dropping_its_connection_is_a_1011_or_1001_close_for_the_client(
    scalingo, paastis, ws_app, how
):
    async def dropping(ws: ServerConnection, app: WsApp) -> None:
        await ws.recv()
        if how == "fin":
            ws.transport.close()
        else:
            ws.transport.abort()

    app = await ws_app(dropping)
    port = await front(scalingo, paastis, app)

    async with client(port) as ws:
        await ws.send("drop now")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=5)

    # A close frame arrived on the wire (1006 is never sent, RFC 6455 §7.4.1).
    assert closed.value.rcvd is not None, closed.value
    assert closed.value.rcvd.code in (1011, 1001)


@pytest.mark.parametrize("how", ["fin", "reset"])
async def test_a_client_dropping_its_connection_is_a_1001_close_for_the_app(
    scalingo, paastis, ws_app, how
):
    app = await ws_app(echo)
    port = await front(scalingo, paastis, app)

    ws = await client(port)
    try:
        await ws.send("hello")
        await asyncio.wait_for(ws.recv(), timeout=5)
        if how == "fin":
            ws.transport.close()
        else:
            ws.transport.abort()
        await done(app)
    finally:
        ws.transport.abort()

    rcvd = app.seen["close_rcvd"]
    assert rcvd is not None, app.seen.get("closed")
    assert rcvd.code == 1001


async def test_the_maximum_lifetime_closes_both_ends_with_1001(scalingo, paastis, ws_app):
    app = await ws_app(echo)
    port = await front(scalingo, paastis, app, PROXY_MAX_CONNECTION_LIFETIME="1")

    async with client(port) as ws:
        await ws.send("hello")
        assert await asyncio.wait_for(ws.recv(), timeout=5) == "hello"
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=5)

    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
    await done(app)
    assert app.seen["close_rcvd"] is not None and app.seen["close_rcvd"].code == 1001


# --- the handshake ----------------------------------------------------------------------------


async def test_the_apps_handshake_headers_reach_the_client(scalingo, paastis, ws_app):
    def add_headers(connection, request, response):
        response.headers["Set-Cookie"] = "session=abc; Path=/; HttpOnly"
        response.headers["Set-Cookie"] = "theme=dark"
        response.headers["X-App-Header"] = "from the app"
        return response

    async def recording(ws: ServerConnection, app: WsApp) -> None:
        app.seen["request_headers"] = ws.request.headers
        await echo(ws, app)

    app = await ws_app(recording, process_response=add_headers)
    port = await front(scalingo, paastis, app)

    async with client(
        port, "/ws?room=7", additional_headers={"Cookie": "id=1", "X-Client-Header": "caf\xe9"}
    ) as ws:
        headers = ws.response.headers
        await ws.send("hi")
        await asyncio.wait_for(ws.recv(), timeout=5)

    assert headers.get_all("Set-Cookie") == ["session=abc; Path=/; HttpOnly", "theme=dark"]
    assert headers["X-App-Header"] == "from the app"
    assert ws.response.status_code == 101
    seen = app.seen["request_headers"]
    assert seen["Cookie"] == "id=1"
    assert seen["X-Client-Header"] == "caf\xe9"
    assert seen["X-Forwarded-Host"] == "web.example.net"
    assert "paastis" in seen.get("Via", "").lower()


async def test_the_subprotocol_the_app_chooses_reaches_the_client(scalingo, paastis, ws_app):
    async def recording(ws: ServerConnection, app: WsApp) -> None:
        app.seen["subprotocol"] = ws.subprotocol
        await echo(ws, app)

    app = await ws_app(recording, subprotocols=["chat.v2", "chat.v1"])
    port = await front(scalingo, paastis, app)

    async with client(port, subprotocols=["chat.v1", "chat.v2"]) as ws:
        chosen = ws.subprotocol
        header = ws.response.headers.get("Sec-WebSocket-Protocol")
        await ws.send("hi")
        await asyncio.wait_for(ws.recv(), timeout=5)

    await done(app)
    assert chosen is not None
    assert chosen == app.seen["subprotocol"] == header


async def test_permessage_deflate_is_negotiated_end_to_end(scalingo, paastis, ws_app):
    async def recording(ws: ServerConnection, app: WsApp) -> None:
        app.seen["offer"] = ws.request.headers.get("Sec-WebSocket-Extensions")
        await echo(ws, app)

    app = await ws_app(recording, compression="deflate")
    port = await front(scalingo, paastis, app)
    text = "compressible " * 20_000

    async with client(port, compression="deflate") as ws:
        extensions = ws.response.headers.get("Sec-WebSocket-Extensions")
        await ws.send(text)
        echoed = await asyncio.wait_for(ws.recv(), timeout=5)

    assert "permessage-deflate" in (app.seen["offer"] or "")
    assert "permessage-deflate" in (extensions or "")
    assert [type(e).__name__ for e in ws.protocol.extensions] == ["PerMessageDeflate"]
    assert echoed == text


async def test_a_direct_connection_behaves_the_same(ws_app):
    """The reference the tests above hold paastis to: the same checks without paastis."""

    async def closing(ws: ServerConnection, app: WsApp) -> None:
        await ws.recv()
        await ws.close(4001, "reason")

    app = await ws_app(closing)
    port = int(app.url.rsplit(":", 1)[1])

    async with client(port) as ws:
        await ws.send("close please")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), timeout=5)

    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (4001, "reason")
