"""The upstream hop: HTTP/1.1 connections to apps, kept alive and reused, written and read as
bytes (the answer's head is parsed by llhttp through httptools, so values stay byte for byte)."""

from __future__ import annotations

import asyncio
import ssl
from collections import defaultdict
from dataclasses import dataclass, field
from typing import cast

import httptools

from paastis.proxy.headers import tokens

# Above this many unread answer bytes, reading from the app pauses until the client catches up.
READ_HIGH_WATER = 256 * 1024
# Seconds an idle connection to an app is kept for reuse (aiohttp's client keeps 15 too).
IDLE_TIMEOUT = 15.0
# Beyond this many body bytes still to come with a Content-Length, the rest of an answer is
# counted rather than parsed: llhttp would copy every slice of it.
PASS_THROUGH_AFTER = 16 * 1024


class UpstreamError(Exception):
    """The app could not be reached or did not answer properly."""


class UpstreamUnreachable(UpstreamError):
    """Connecting failed (refused, DNS, TLS)."""


class UpstreamTimeout(UpstreamError):
    """Connecting, or the answer's first byte, took longer than allowed."""


class UpstreamBroke(UpstreamError):
    """The connection ended, or the answer was malformed, before the answer was complete."""

    def __init__(self, message: str, *, answered_nothing: bool = False) -> None:
        super().__init__(message)
        self.answered_nothing = answered_nothing


@dataclass(frozen=True, slots=True)
class Origin:
    host: str
    port: int
    tls: bool


@dataclass(slots=True)
class AnswerHead:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    length: int | None  # Content-Length, when the answer has one
    close_delimited: bool  # the end of the connection ends the body
    connection_tokens: frozenset[bytes]  # headers the app named in `Connection`


@dataclass(slots=True)
class _Exchange:
    """One request's answer as it arrives."""

    head_only: bool
    parser: httptools.HttpResponseParser | None = None
    reason: bytes = b""
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    length: int | None = None
    chunked: bool = False
    connection: list[bytes] = field(default_factory=list)
    interim: bool = False
    head: AnswerHead | None = None
    body: list[bytes] = field(default_factory=list)
    buffered: int = 0
    received: int = 0  # body bytes so far
    remaining: int = 0  # body bytes still to come, when counted rather than parsed
    complete: bool = False
    keep_alive: bool = False
    error: UpstreamError | None = None
    upgrade_tail: bytes = b""


class UpstreamConnection(asyncio.Protocol):
    """One connection to an app, carrying one exchange at a time."""

    def __init__(self, origin: Origin) -> None:
        self.origin = origin
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.exchanges = 0  # answers read on this connection so far
        self._exchange: _Exchange | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._reading_paused = False
        self._tunnel: TunnelSink | None = None
        # Reused from one exchange to the next (llhttp starts over after each answer), except
        # after a HEAD, whose answer llhttp cannot know has no body.
        self._parser: httptools.HttpResponseParser | None = None
        self.idle_since = 0.0  # the loop's time when it last went back to the pool

    # --- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        if self._tunnel is not None:
            self._tunnel.data(data)
            return
        exchange = self._exchange
        if exchange is not None and exchange.remaining:
            self._count_body(exchange, data)
            return
        if exchange is None or exchange.complete or exchange.parser is None:
            self.abort()  # bytes nobody asked for: this connection cannot be trusted again
            return
        try:
            exchange.parser.feed_data(data)
        except httptools.HttpParserUpgrade as upgrade:
            exchange.upgrade_tail = data[upgrade.args[0] :]
        except httptools.HttpParserError as exc:
            cause = exc.__context__  # what a callback of ours raised, if it was one
            self._fail(
                cause
                if isinstance(cause, UpstreamError)
                else UpstreamBroke(f"malformed answer: {exc}")
            )
            self.abort()
            return
        head = exchange.head
        if head is not None and head.length is not None and not exchange.complete:
            remaining = head.length - exchange.received
            if remaining > PASS_THROUGH_AFTER:
                exchange.remaining = remaining
                # llhttp still expects that body: the next exchange gets a new parser.
                exchange.parser = self._parser = None
        self._wake()

    def _count_body(self, exchange: _Exchange, data: bytes) -> None:
        if len(data) > exchange.remaining:
            data = data[: exchange.remaining]  # bytes after the answer are never passed on
            exchange.keep_alive = False
        exchange.remaining -= len(data)
        self._buffer(exchange, data)
        if not exchange.remaining:
            exchange.complete = True
        self._wake()

    def eof_received(self) -> bool:
        if self._tunnel is not None:
            self._tunnel.end()
        self._ended()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._tunnel is not None:
            self._tunnel.end()
        self._ended()
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)

    def pause_writing(self) -> None:
        if self._drain is None or self._drain.done():
            self._drain = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        if self._tunnel is not None:
            self._tunnel.writable()

    # --- httptools callbacks -----------------------------------------------------------------

    def on_message_begin(self) -> None:
        exchange = self._current()
        if exchange.head is not None:
            # A second answer to one request: whatever it is, it must not reach the client.
            raise UpstreamBroke("the app sent more than one answer")
        exchange.headers = []
        exchange.length = None
        exchange.chunked = False
        exchange.connection = []
        exchange.interim = False

    def on_status(self, reason: bytes) -> None:
        self._current().reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        exchange = self._current()
        exchange.headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            try:
                exchange.length = int(value)
            except ValueError:
                exchange.length = None  # llhttp refuses a malformed one before this
        elif lowered == b"transfer-encoding":
            if exchange.chunked or value.strip().lower() != b"chunked":
                # Relayed re-chunked, a body in another coding would lose that coding.
                raise UpstreamBroke(f"the app used transfer coding {value[:40]!r}")
            exchange.chunked = True
        elif lowered == b"connection":
            exchange.connection.append(value)

    def on_headers_complete(self) -> None:
        exchange = self._current()
        assert exchange.parser is not None
        status = exchange.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            exchange.interim = True  # 100 Continue, 103 Early Hints: not passed on
            exchange.reason = b""
            return
        chunked = exchange.chunked
        length = None if chunked else exchange.length
        no_body = exchange.head_only or status in (101, 204, 304)
        exchange.head = AnswerHead(
            status=status,
            reason=exchange.reason,
            headers=exchange.headers,
            length=length,
            close_delimited=not no_body and length is None and not chunked,
            connection_tokens=tokens(exchange.connection),
        )
        exchange.keep_alive = exchange.parser.should_keep_alive()
        if no_body:
            # llhttp cannot know that a HEAD's answer has no body: it ends here.
            exchange.complete = True
            if exchange.head_only:
                self._parser = exchange.parser = None

    def on_body(self, body: bytes) -> None:
        exchange = self._current()
        if exchange.complete:
            exchange.keep_alive = False  # a body after a HEAD's answer: do not trust the rest
            return
        self._buffer(exchange, body)

    def _buffer(self, exchange: _Exchange, body: bytes) -> None:
        exchange.body.append(body)
        exchange.received += len(body)
        exchange.buffered += len(body)
        if exchange.buffered > READ_HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()

    def on_message_complete(self) -> None:
        exchange = self._current()
        if exchange.interim:
            exchange.interim = False
            return
        exchange.complete = True

    # --- one exchange -------------------------------------------------------------------------

    def begin(self, *, head_only: bool) -> None:
        """Starts a new exchange (a request about to be written)."""
        if self._parser is None:
            self._parser = httptools.HttpResponseParser(self)
        self._exchange = _Exchange(head_only=head_only, parser=self._parser)

    def write(self, data: bytes) -> None:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise UpstreamBroke("the app closed the connection", answered_nothing=not self.answered)
        self.transport.write(data)

    async def drain(self) -> None:
        if self._drain is not None and not self._drain.done():
            await self._drain
        if self.closed:
            raise UpstreamBroke("the app closed the connection", answered_nothing=not self.answered)

    @property
    def answered(self) -> bool:
        """Whether any answer (even an interim one) arrived for the current exchange."""
        exchange = self._exchange
        return exchange is not None and (exchange.head is not None or bool(exchange.reason))

    async def head(self) -> AnswerHead:
        """The answer's status and headers, once they have arrived."""
        exchange = self._current()
        while exchange.head is None:
            if exchange.error is not None:
                raise exchange.error
            await self._wait()
        return exchange.head

    def take(self) -> bytes:
        """The answer's body bytes that have already arrived."""
        exchange = self._current()
        if not exchange.body:
            return b""
        data = exchange.body[0] if len(exchange.body) == 1 else b"".join(exchange.body)
        exchange.body.clear()
        exchange.buffered = 0
        self._resume_reading()
        return data

    @property
    def complete(self) -> bool:
        exchange = self._exchange
        return exchange is not None and exchange.complete and not exchange.body

    async def read(self) -> bytes:
        """The next body bytes; b'' once the answer is complete."""
        exchange = self._current()
        while not exchange.body:
            if exchange.complete:
                return b""
            if exchange.error is not None:
                raise exchange.error
            await self._wait()
        return self.take()

    def finish(self) -> bool:
        """Ends the exchange; True when the connection may carry another one."""
        exchange = self._exchange
        self._exchange = None
        self.exchanges += 1
        return (
            exchange is not None
            and exchange.complete
            and exchange.keep_alive
            and not exchange.body
            and exchange.error is None
            and not self.closed
            and self._tunnel is None
        )

    def start_tunnel(self, sink: TunnelSink) -> bytes:
        """Hands the connection's bytes to `sink` from now on (after a 101); returns the bytes
        that followed the 101's head."""
        exchange = self._current()
        self._tunnel = sink
        self._resume_reading()
        return exchange.upgrade_tail

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    # --- internals ----------------------------------------------------------------------------

    def _resume_reading(self) -> None:
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()

    def _current(self) -> _Exchange:
        if self._exchange is None:
            raise UpstreamBroke("no exchange under way")
        return self._exchange

    def _ended(self) -> None:
        exchange = self._exchange
        if exchange is None or exchange.complete or exchange.error is not None:
            self._wake()
            return
        head = exchange.head
        if head is not None and head.close_delimited:
            exchange.complete = True
            exchange.keep_alive = False
        elif head is None:
            self._fail(
                UpstreamBroke(
                    "the app closed the connection without answering",
                    answered_nothing=not exchange.reason,
                )
            )
        else:
            self._fail(UpstreamBroke("the app closed the connection mid-answer"))
        self._wake()

    def _fail(self, error: UpstreamError) -> None:
        if self._exchange is not None and self._exchange.error is None:
            self._exchange.error = error
        self._wake()

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class TunnelSink:
    """Receives the raw bytes of an upgraded connection (see websocket.py)."""

    def data(self, data: bytes) -> None:
        raise NotImplementedError

    def end(self) -> None:
        raise NotImplementedError

    def writable(self) -> None:
        """The connection's write buffer drained."""


class UpstreamPool:
    """Connections to apps, kept alive between requests, one exchange at a time each."""

    def __init__(self, *, connect_timeout: float, tls_verify: bool) -> None:
        self._connect_timeout = connect_timeout
        self._tls = ssl.create_default_context()
        if not tls_verify:
            self._tls.check_hostname = False
            self._tls.verify_mode = ssl.CERT_NONE
        self._idle: defaultdict[Origin, list[UpstreamConnection]] = defaultdict(list)
        self._open: set[UpstreamConnection] = set()
        # Idle connections are expired by one sweep every IDLE_TIMEOUT, not a timer each.
        self._sweep: asyncio.TimerHandle | None = None

    async def connection(self, origin: Origin, *, fresh: bool = False) -> UpstreamConnection:
        """An idle connection to `origin` (unless `fresh`), or a new one."""
        idle = self._idle.get(origin)
        if idle and not fresh:
            oldest_usable = asyncio.get_running_loop().time() - IDLE_TIMEOUT
            while idle:
                connection = idle.pop()
                if not connection.closed and connection.idle_since > oldest_usable:
                    return connection
                self._discard(connection)  # closed by the app, or idle too long
        return await self._connect(origin)

    def release(self, connection: UpstreamConnection) -> None:
        """Takes back a connection after its exchange: kept for reuse, or closed."""
        if not connection.finish():
            self._discard(connection)
            return
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        self._idle[connection.origin].append(connection)
        if self._sweep is None:
            self._sweep = loop.call_later(IDLE_TIMEOUT, self._expire_idle)

    def discard(self, connection: UpstreamConnection) -> None:
        """Closes a connection whose exchange went wrong."""
        connection.finish()
        self._discard(connection)

    async def close(self) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in list(self._open):
            connection.close()
        self._open.clear()
        self._idle.clear()

    async def _connect(self, origin: Origin) -> UpstreamConnection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, connection = await loop.create_connection(
                    lambda: UpstreamConnection(origin),
                    origin.host,
                    origin.port,
                    ssl=self._tls if origin.tls else None,
                    server_hostname=origin.host if origin.tls else None,
                )
        except TimeoutError:
            raise UpstreamTimeout(f"connecting to {origin.host}:{origin.port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamUnreachable(
                f"cannot connect to {origin.host}:{origin.port}: {exc}"
            ) from None
        self._open.add(connection)
        return connection

    def _expire_idle(self) -> None:
        loop = asyncio.get_running_loop()
        oldest_usable = loop.time() - IDLE_TIMEOUT
        for origin, idle in list(self._idle.items()):
            usable = [c for c in idle if not c.closed and c.idle_since > oldest_usable]
            for connection in set(idle).difference(usable):
                self._discard(connection)
            if usable:
                self._idle[origin] = usable
            else:
                del self._idle[origin]
        self._sweep = loop.call_later(IDLE_TIMEOUT / 2, self._expire_idle) if self._idle else None

    def _discard(self, connection: UpstreamConnection) -> None:
        connection.close()
        self._open.discard(connection)
