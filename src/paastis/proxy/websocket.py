"""The WebSocket tunnel: after the app's 101, bytes pass both ways untouched (messages of any
size, fragments, extensions, close codes), as nginx relays them. paastis only follows the frame
boundaries, so that an abrupt end on one side becomes a proper close frame on the other."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from aiohttp import web

from paastis.proxy.upstream import TunnelSink, UpstreamConnection

log = logging.getLogger("paastis.proxy")

GOING_AWAY = 1001  # the client left, or paastis closes the tunnel (lifetime, shutdown)
INTERNAL_ERROR = 1011  # the app's connection ended without a close frame
# Seconds given to the closing handshake once paastis itself has sent close frames.
CLOSE_GRACE = 2.0
# Above this many bytes waiting to be written to one side, reading from the other pauses.
WRITE_HIGH_WATER = 256 * 1024
CLOSE_OPCODE = 0x8


async def tunnel(
    request: web.BaseRequest,
    upstream: UpstreamConnection,
    head: bytes,
    *,
    deadline: float | None,
) -> None:
    """Writes the app's 101 head to the client, then relays bytes until one side ends."""
    await request.writer.write(head)
    relay = Tunnel(request, upstream)
    tail = upstream.start_tunnel(relay)
    take_over_connection(request, ClientBytes(relay))
    if tail:
        relay.data(tail)
    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.shield(relay.ended)
    except TimeoutError:
        log.info("closing a WebSocket open for longer than the maximum connection lifetime")
        await relay.go_away()
    except asyncio.CancelledError:
        relay.say_going_away()  # paastis shuts down: both peers hear it
        raise
    finally:
        relay.close()


def take_over_connection(request: web.BaseRequest, sink: ClientBytes) -> None:
    """From now on every byte the client sends goes to `sink`, as aiohttp's own WebSocket
    support does after its handshake. This is the one aiohttp internal the proxy relies on;
    tests/test_aiohttp_contract.py fails loudly if it changes."""
    request.protocol.set_parser(sink)  # type: ignore[arg-type]


class FrameCursor:
    """Follows frame boundaries in one direction of a WebSocket byte stream (RFC 6455 §5.2)."""

    __slots__ = ("_header", "_remaining", "close_seen")

    def __init__(self) -> None:
        self._header = bytearray()
        self._remaining = 0  # payload bytes of the current frame still to come
        self.close_seen = False

    @property
    def at_boundary(self) -> bool:
        """Whether a frame of paastis' own may be inserted here."""
        return not self._header and self._remaining == 0

    def feed(self, data: bytes) -> None:
        position, size = 0, len(data)
        header = self._header
        while position < size:
            if self._remaining:
                step = min(self._remaining, size - position)
                self._remaining -= step
                position += step
                continue
            needed = _header_size(header)
            while len(header) < needed and position < size:
                take = min(needed - len(header), size - position)
                header += data[position : position + take]
                position += take
                needed = _header_size(header)
            if len(header) < needed:
                return
            if header[0] & 0x0F == CLOSE_OPCODE:
                self.close_seen = True
            self._remaining = _payload_size(header)
            header.clear()


def _header_size(header: bytearray) -> int:
    if len(header) < 2:
        return 2
    extended = {126: 2, 127: 8}.get(header[1] & 0x7F, 0)
    return 2 + extended + (4 if header[1] & 0x80 else 0)


def _payload_size(header: bytearray) -> int:
    length = header[1] & 0x7F
    if length == 126:
        return int.from_bytes(header[2:4], "big")
    if length == 127:
        return int.from_bytes(header[2:10], "big")
    return length


def close_frame(code: int, *, masked: bool) -> bytes:
    """A close frame with `code` and no reason; frames to a server are masked (RFC 6455 §5.3)."""
    payload = code.to_bytes(2, "big")
    if not masked:
        return bytes((0x80 | CLOSE_OPCODE, len(payload))) + payload
    mask = os.urandom(4)
    masked_payload = bytes(byte ^ mask[i % 4] for i, byte in enumerate(payload))
    return bytes((0x80 | CLOSE_OPCODE, 0x80 | len(payload))) + mask + masked_payload


class Tunnel(TunnelSink):
    """Both directions of one WebSocket: the app's bytes arrive here as a TunnelSink, the
    client's through ClientBytes."""

    def __init__(self, request: web.BaseRequest, upstream: UpstreamConnection) -> None:
        assert request.transport is not None
        self._request = request
        self._client = request.transport
        self._upstream = upstream
        self._from_app = FrameCursor()
        self._from_client = FrameCursor()
        self._client_paused = False
        self._app_paused = False
        self._drain: asyncio.Task[None] | None = None
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    # --- the app's side ----------------------------------------------------------------------

    def data(self, data: bytes) -> None:
        self._from_app.feed(data)
        if self._client.is_closing():
            return
        self._client.write(data)
        if self._client.get_write_buffer_size() > WRITE_HIGH_WATER and not self._app_paused:
            self._pause_app_until_client_drains()

    def end(self) -> None:
        """The app's connection ended; without its close frame, the client gets 1011."""
        if self.ended.done():
            return
        if not self._from_app.close_seen and self._from_app.at_boundary:
            self._write_client(close_frame(INTERNAL_ERROR, masked=False))
        self._finish("app")

    def writable(self) -> None:
        if self._client_paused:
            self._client_paused = False
            with contextlib.suppress(Exception):
                self._client.resume_reading()

    # --- the client's side -------------------------------------------------------------------

    def client_data(self, data: bytes) -> None:
        self._from_client.feed(data)
        transport = self._upstream.transport
        if self._upstream.closed or transport is None:
            return
        transport.write(data)
        if transport.get_write_buffer_size() > WRITE_HIGH_WATER and not self._client_paused:
            self._client_paused = True
            self._client.pause_reading()

    def client_end(self) -> None:
        """The client's connection ended; without its close frame, the app gets 1001."""
        if self.ended.done():
            return
        if not self._from_client.close_seen and self._from_client.at_boundary:
            self._write_app(close_frame(GOING_AWAY, masked=True))
        self._finish("client")

    # --- ending ------------------------------------------------------------------------------

    def say_going_away(self) -> None:
        """Close frames (1001) to both peers, where a frame may be inserted."""
        if not self._from_app.close_seen and self._from_app.at_boundary:
            self._write_client(close_frame(GOING_AWAY, masked=False))
            self._from_app.close_seen = True
        if not self._from_client.close_seen and self._from_client.at_boundary:
            self._write_app(close_frame(GOING_AWAY, masked=True))
            self._from_client.close_seen = True

    async def go_away(self) -> None:
        """Closes the tunnel from paastis' side, giving the closing handshake a moment."""
        self.say_going_away()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_GRACE):
                await asyncio.shield(self.ended)

    def close(self) -> None:
        """Closes both connections (buffered bytes are still sent)."""
        if self._drain is not None:
            self._drain.cancel()
        self._upstream.close()
        if not self._client.is_closing():
            self._client.close()

    def _finish(self, side: str) -> None:
        if not self.ended.done():
            self.ended.set_result(side)

    def _write_client(self, data: bytes) -> None:
        if not self._client.is_closing():
            self._client.write(data)

    def _write_app(self, data: bytes) -> None:
        transport = self._upstream.transport
        if transport is not None and not transport.is_closing():
            transport.write(data)

    def _pause_app_until_client_drains(self) -> None:
        transport = self._upstream.transport
        if transport is None:
            return
        self._app_paused = True
        transport.pause_reading()
        self._drain = asyncio.ensure_future(self._resume_app())

    async def _resume_app(self) -> None:
        with contextlib.suppress(Exception):
            await self._request.writer.drain()
        self._app_paused = False
        transport = self._upstream.transport
        if transport is not None and not self._upstream.closed:
            transport.resume_reading()


class ClientBytes:
    """What aiohttp's connection feeds with the client's bytes after the handshake."""

    def __init__(self, tunnel: Tunnel) -> None:
        self._tunnel = tunnel

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._tunnel.client_data(data)
        return False, b""

    def feed_eof(self) -> None:
        self._tunnel.client_end()
