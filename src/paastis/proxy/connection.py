"""The client connections of the main listener: aiohttp's HTTP/1.1 parser and keep-alive, with
a deadline for every request head (slowloris) and paastis' own one-line answers to malformed
requests, instead of aiohttp's HTTP/1.0 pages and tracebacks."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from paastis.proxy.answer import own_answer, own_answer_bytes
from paastis.proxy.failures import Failure

log = logging.getLogger("paastis.proxy")

# Seconds an idle kept-alive connection stays open (nginx's default).
KEEPALIVE_TIMEOUT = 75.0


class ProxyServer(web.Server):
    """aiohttp's low-level server, making ProxyConnections."""

    def __init__(self, handler: Any, *, head_timeout: float, **kwargs: Any) -> None:
        self._connection_options: dict[str, Any] = {
            "keepalive_timeout": KEEPALIVE_TIMEOUT,
            # Bodies pass as sent: a gzip upload must reach the app still gzipped.
            "auto_decompress": False,
            "access_log": None,  # paastis writes its own access log
            "logger": log,
            **kwargs,
        }
        super().__init__(handler, handler_cancellation=True, **self._connection_options)
        self._deadlines = HeadDeadlines(head_timeout)
        self._make = self.request_factory
        self.request_factory = self._request_for

    def __call__(self) -> ProxyConnection:
        return ProxyConnection(
            self,
            loop=asyncio.get_running_loop(),
            deadlines=self._deadlines,
            **self._connection_options,
        )

    def _request_for(self, message, payload, protocol, writer, task):  # type: ignore[no-untyped-def]
        """Called as each parsed request head is handed to its handler."""
        if isinstance(protocol, ProxyConnection):
            protocol.head_received(has_body=not payload.is_eof())
        return self._make(message, payload, protocol, writer, task)


class HeadDeadlines:
    """The connections waiting for a request head, checked a few times a second: cheaper, on
    the hot path, than a timer per request."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self._interval = min(1.0, timeout / 4)
        self._waiting: dict[ProxyConnection, float] = {}
        self._sweep_handle: asyncio.TimerHandle | None = None

    def watch(self, connection: ProxyConnection) -> None:
        loop = asyncio.get_running_loop()
        self._waiting[connection] = loop.time()
        if self._sweep_handle is None:
            self._sweep_handle = loop.call_later(self._interval, self._sweep)

    def forget(self, connection: ProxyConnection) -> None:
        self._waiting.pop(connection, None)

    def watches(self, connection: ProxyConnection) -> bool:
        return connection in self._waiting

    def _sweep(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        late = [c for c, since in self._waiting.items() if now - since >= self.timeout]
        for connection in late:
            del self._waiting[connection]
            connection.head_timed_out()
        self._sweep_handle = loop.call_later(self._interval, self._sweep) if self._waiting else None


class ProxyConnection(web.RequestHandler):
    """One client connection. The request head must arrive within PROXY_HEADER_TIMEOUT seconds,
    counted from the connection's start or from the first byte of a kept-alive request."""

    def __init__(self, manager: web.Server, *, deadlines: HeadDeadlines, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._deadlines = deadlines
        self._head_bytes = False  # whether any byte of the awaited head has arrived
        self._heads = 0  # request heads handed to a handler
        self._answered = 0  # answers finished
        # Bytes that arrived while a request without a body was served: the start of a
        # pipelined request, whose head is then also bound by the deadline.
        self._serving_bodyless = False
        self._pipelined = False
        self._bytes_after_a_head = False  # in the latest packet

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._deadlines.watch(self)

    def data_received(self, data: bytes) -> None:
        if data:
            end = data.find(b"\r\n\r\n")
            self._bytes_after_a_head = end != -1 and end + 4 < len(data)
            if self._heads == self._answered:
                if not self._deadlines.watches(self):
                    self._deadlines.watch(self)
                self._head_bytes = True
            elif self._serving_bodyless:
                self._pipelined = True
        super().data_received(data)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._deadlines.forget(self)
        super().connection_lost(exc)

    def head_received(self, *, has_body: bool) -> None:
        self._heads += 1
        self._head_bytes = False
        self._serving_bodyless = not has_body
        # Bytes after a bodyless request's head are the next request's.
        self._pipelined = self._bytes_after_a_head and not has_body
        self._deadlines.forget(self)

    async def finish_response(self, request, resp, start_time):  # type: ignore[no-untyped-def]
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self._answered += 1
            if self._heads == self._answered and self.transport is not None:
                # The next head's deadline runs from now: an idle kept-alive connection is
                # closed after it too, and a pipelined head that stopped halfway gets 408.
                self._deadlines.watch(self)
                self._head_bytes = self._pipelined

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A malformed request (or, at 500, a bug): one log line, a short answer, the end of
        the connection."""
        if status >= 500:
            log.error("answering %s: %s", request.remote, exc or status, exc_info=exc)
        else:
            log.warning("bad request from %s: %s", request.remote, first_line(message or exc))
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already under way")
        failure = Failure.INTERNAL if status >= 500 else Failure.BAD_REQUEST
        detail = first_line(message or exc) if status < 500 else ""
        return own_answer(request, status, failure.text(detail=detail), reusable=False)

    def head_timed_out(self) -> None:
        transport = self.transport
        if transport is None or self._heads != self._answered:
            return
        if self._head_bytes:
            log.warning(
                "closing the connection of %s: its request head took over %gs",
                (self.peername or ("?",))[0],
                self._deadlines.timeout,
            )
            transport.write(own_answer_bytes(408, Failure.HEAD_TIMEOUT.text(), reusable=False))
        self.force_close()


def first_line(reason: object) -> str:
    """The first line of a parser's message (which adds the bytes and a caret below it)."""
    text = str(reason or "").strip()
    return text.splitlines()[0][:200].rstrip(":") if text else "malformed request"
