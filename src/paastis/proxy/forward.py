"""HTTP forwarding: the request streamed to its app, the answer streamed back, byte for byte."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from aiohttp import HttpVersion11, web
from aiohttp.streams import StreamReader
from yarl import URL

from paastis.proxy.answer import AnswerWriter, Framing, RawAnswer
from paastis.proxy.headers import (
    Client,
    LocationRewrite,
    Upstream,
    client_answer_head,
    tokens,
    upstream_request_head,
)
from paastis.proxy.upstream import (
    AnswerHead,
    Origin,
    UpstreamBroke,
    UpstreamConnection,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeout,
)
from paastis.proxy.websocket import tunnel

log = logging.getLogger("paastis.proxy")

COLD_START_HEADER = (b"X-Paastis-Cold-Start", b"true")


@dataclass(frozen=True)
class Timeouts:
    connect: float  # PROXY_CONNECT_TIMEOUT
    read: float  # PROXY_READ_TIMEOUT: the wait for the answer's first byte
    lifetime: float | None  # PROXY_MAX_CONNECTION_LIFETIME: any answer, stream or WebSocket


class Forwarder:
    """Forwards one request to its app and relays the answer (or the WebSocket) back."""

    def __init__(self, pool: UpstreamPool, timeouts: Timeouts) -> None:
        self._pool = pool
        self._timeouts = timeouts

    async def forward(
        self,
        request: web.BaseRequest,
        path: str,
        base: URL,
        client: Client,
        *,
        cold: bool,
        started: float,
    ) -> web.StreamResponse:
        """Raises UpstreamError when the app cannot be reached or answers nothing usable;
        once the answer has begun, a failure ends the client's connection instead."""
        upgrade = websocket_upgrade(request)
        chunked = "Transfer-Encoding" in request.headers
        length = None if chunked else request.content_length
        head = upstream_request_head(
            request.method,
            path,
            request.raw_headers,
            named=connection_named(request),
            via=b"%d.%d paastis" % (request.version.major, request.version.minor),
            client=client,
            upstream=Upstream(base),
            body_length=length,
            chunked=chunked,
            upgrade=upgrade,
        )
        body = request.content if chunked or length else None
        origin = Origin(base.raw_host or "", base.port or 80, base.scheme == "https")
        connection, answer, sender = await self._exchange(request, origin, head, body, chunked)
        if answer.status == 101 and upgrade is None:
            self._pool.discard(connection)
            raise UpstreamBroke("the app switched protocols without being asked to")
        deadline = None if self._timeouts.lifetime is None else started + self._timeouts.lifetime
        try:
            if answer.status == 101 and upgrade is not None:
                answer_head = client_answer_head(
                    101, answer.reason, answer.headers, named=frozenset(), framing=Framing.NONE,
                    keep_alive=False, http10_client=False, locations=None,
                )  # fmt: skip
                await tunnel(request, connection, answer_head, deadline=deadline)
                return RawAnswer(101, reusable=False)
            return await self._relay(request, connection, answer, base, client, cold, deadline)
        finally:
            if sender is not None and not sender.done():
                sender.cancel()  # the app answered before reading the whole body
                self._pool.discard(connection)
            elif sender is not None and not sender.cancelled() and sender.exception():
                self._pool.discard(connection)  # the body did not reach the app whole
            elif answer.status == 101:
                self._pool.discard(connection)
            else:
                self._pool.release(connection)

    async def _exchange(
        self,
        request: web.BaseRequest,
        origin: Origin,
        head: bytes,
        body: StreamReader | None,
        chunked: bool,
    ) -> tuple[UpstreamConnection, AnswerHead, asyncio.Task[None] | None]:
        """Writes the request and waits for the answer's head; a kept-alive connection that
        the app had just closed is replaced once, when no body was sent on it."""
        if body is not None:
            await send_continue_if_expected(request)
        for attempt in (1, 2):
            connection = await self._pool.connection(origin, fresh=attempt > 1)
            reused = connection.exchanges > 0
            connection.begin(head_only=request.method == "HEAD")
            sender = None
            try:
                connection.write(head)
                if body is not None:
                    sender = asyncio.ensure_future(send_body(body, connection, chunked))
                answer = await self._answer_head(connection, sender)
                return connection, answer, sender
            except UpstreamBroke as exc:
                self._pool.discard(connection)
                if attempt == 1 and reused and body is None and exc.answered_nothing:
                    continue
                raise
            except BaseException:
                if sender is not None:
                    sender.cancel()
                self._pool.discard(connection)
                raise
        raise AssertionError("unreachable")

    async def _answer_head(
        self, connection: UpstreamConnection, sender: asyncio.Task[None] | None
    ) -> AnswerHead:
        """The answer's head; PROXY_READ_TIMEOUT runs from the moment the request is sent."""
        if sender is not None:
            head = asyncio.ensure_future(connection.head())
            try:
                await asyncio.wait((head, sender), return_when=asyncio.FIRST_COMPLETED)
            except BaseException:
                head.cancel()
                raise
            if head.done():
                return head.result()
            failed = sender.exception()
            if failed is not None and not isinstance(failed, UpstreamError):
                head.cancel()
                raise failed  # the client's body broke off
            waiting = head
        else:
            waiting = None
        try:
            async with asyncio.timeout(self._timeouts.read):
                return await (waiting if waiting is not None else connection.head())
        except TimeoutError:
            raise UpstreamTimeout("the app did not answer in time") from None

    async def _relay(
        self,
        request: web.BaseRequest,
        connection: UpstreamConnection,
        answer: AnswerHead,
        base: URL,
        client: Client,
        cold: bool,
        deadline: float | None,
    ) -> web.StreamResponse:
        framing = answer_framing(request, answer)
        keep_alive = request.keep_alive and framing is not Framing.UNTIL_CLOSE
        head = client_answer_head(
            answer.status,
            answer.reason,
            answer.headers,
            named=answer.connection_tokens,
            framing=framing,
            keep_alive=keep_alive,
            http10_client=request.version < HttpVersion11,
            locations=LocationRewrite(base, client),
            extra=(COLD_START_HEADER,) if cold else (),
        )
        writer = AnswerWriter(request.writer, framing)
        # What has already arrived goes out with the head: the whole answer in one write
        # when it is complete, and never a wait for more before the client sees anything.
        await writer.start(head, connection.take(), complete=connection.complete)
        if connection.complete:
            return RawAnswer(answer.status, reusable=keep_alive)
        try:
            async with asyncio.timeout_at(deadline):
                while chunk := await connection.read():
                    await writer.write(chunk)
        except TimeoutError:
            log.info("closing an answer open for longer than the maximum connection lifetime")
            abort_connection(request)
            return RawAnswer(answer.status, reusable=False)
        except UpstreamError as exc:
            log.warning("the answer of %s broke off: %s", base.host, exc)
            abort_connection(request)
            return RawAnswer(answer.status, reusable=False)
        await writer.end()
        return RawAnswer(answer.status, reusable=keep_alive)


def answer_framing(request: web.BaseRequest, answer: AnswerHead) -> Framing:
    if request.method == "HEAD" or answer.status in (204, 304) or answer.status < 200:
        return Framing.NONE
    if answer.length is not None:
        return Framing.LENGTH
    if request.version < HttpVersion11:
        return Framing.UNTIL_CLOSE
    return Framing.CHUNKED


def connection_named(request: web.BaseRequest) -> frozenset[bytes]:
    """The headers the client named in `Connection`: hop-by-hop for this hop only."""
    values = request.headers.getall("Connection", ())
    return tokens([value.encode("utf-8", "surrogateescape") for value in values])


def websocket_upgrade(request: web.BaseRequest) -> bytes | None:
    """The `Upgrade` value of a WebSocket handshake (tunnelled as it is), else None."""
    headers = request.headers
    upgrade = headers.get("Upgrade")
    if upgrade is None or upgrade.strip().lower() != "websocket":
        return None
    if "upgrade" not in headers.get("Connection", "").lower():
        return None
    return upgrade.strip().encode()


async def send_body(content: StreamReader, connection: UpstreamConnection, chunked: bool) -> None:
    """Streams the request's body to the app, re-chunked when the client chunked it."""
    while chunk := await content.readany():
        connection.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        await connection.drain()
    if chunked:
        connection.write(b"0\r\n\r\n")


async def send_continue_if_expected(request: web.BaseRequest) -> None:
    """Answers `Expect: 100-continue` once the app is ready to take the body; the client would
    otherwise wait, or stall, before sending it."""
    expect = request.headers.get("Expect", "")
    if request.version >= HttpVersion11 and expect.lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started


def abort_connection(request: web.BaseRequest) -> None:
    """Closes the client's connection mid-answer: the head is gone already, and ending the body
    cleanly would pass a truncated answer off as complete."""
    with contextlib.suppress(Exception):
        if request.transport is not None:
            request.transport.close()
