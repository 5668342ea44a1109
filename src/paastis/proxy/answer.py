"""Answers written on the client's connection byte for byte, paastis' own and the app's.

aiohttp's response classes re-encode header values as UTF-8 (dropping obs-text bytes) and add
`Server` and `Content-Type`. A faithful proxy writes the answer's bytes itself, on the connection
aiohttp parsed the request from; aiohttp only learns the status and whether the connection may
carry the next request (`RawAnswer`).
"""

from __future__ import annotations

import enum
import functools
import time
from collections.abc import Iterable
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter

REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}
REASONS[508] = b"Loop Detected"
TEXT_PLAIN = "text/plain; charset=utf-8"


class RawAnswer(web.StreamResponse):
    """An answer whose bytes paastis writes itself.

    `data` (when given) is written when aiohttp prepares the answer, which lets synchronous
    code, such as aiohttp's error hook, answer too. `reusable` says whether the connection may
    carry another request afterwards.
    """

    def __init__(self, status: int, *, reusable: bool, data: bytes = b"") -> None:
        super().__init__(status=status)
        self._reusable = reusable
        self._data = data

    @property
    def keep_alive(self) -> bool:  # what aiohttp's connection handler reads after the answer
        return self._reusable

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter | None:
        if self._data:
            data, self._data = self._data, b""
            await request.writer.write(data)
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class Framing(enum.Enum):
    """How an answer's body is delimited on the client's connection."""

    LENGTH = "content-length"  # the app's Content-Length, bytes passed as they come
    CHUNKED = "chunked"  # re-chunked by paastis (the app's own chunking, or none)
    UNTIL_CLOSE = "close"  # an HTTP/1.0 client: the end of the connection ends the body
    NONE = "none"  # HEAD, 1xx, 204, 304


class AnswerWriter:
    """Writes an answer's head and body to the client with the chosen framing."""

    __slots__ = ("_framing", "_writer")

    def __init__(self, writer: AbstractStreamWriter, framing: Framing) -> None:
        self._writer = writer
        self._framing = framing

    async def start(self, head: bytes, first: bytes = b"", *, complete: bool = False) -> None:
        """The head, with the body bytes already at hand (and its end, when `complete`)."""
        await self._writer.write(head + self._frame(first, last=complete))

    async def write(self, chunk: bytes) -> None:
        if chunk:
            await self._writer.write(self._frame(chunk, last=False))

    async def end(self) -> None:
        if self._framing is Framing.CHUNKED:
            await self._writer.write(b"0\r\n\r\n")

    def _frame(self, chunk: bytes, *, last: bool) -> bytes:
        if self._framing is Framing.NONE:
            return b""
        if self._framing is not Framing.CHUNKED:
            return chunk
        framed = b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunk else b""
        return framed + b"0\r\n\r\n" if last else framed


def own_answer(
    request: web.BaseRequest,
    status: int,
    text: str,
    *,
    reusable: bool = True,
    headers: Iterable[tuple[str, str]] = (),
    content_type: str = TEXT_PLAIN,
) -> RawAnswer:
    """One of paastis' own answers to `request`: a short body, never cached; the connection
    stays open only when the client keeps it alive (HTTP/1.0 clients by asking)."""
    reusable = reusable and request.keep_alive
    data = own_answer_bytes(
        status,
        text,
        head_only=request.method == "HEAD",
        reusable=reusable,
        http10=request.version < HttpVersion11,
        headers=headers,
        content_type=content_type,
    )
    return RawAnswer(status, reusable=reusable, data=data)


def own_answer_bytes(
    status: int,
    text: str,
    *,
    head_only: bool = False,
    reusable: bool = True,
    http10: bool = False,
    headers: Iterable[tuple[str, str]] = (),
    content_type: str = TEXT_PLAIN,
) -> bytes:
    body = text.encode()
    lines = [
        b"HTTP/1.1 %d %b\r\n" % (status, REASONS.get(status, b"")),
        b"Content-Type: %b\r\n" % content_type.encode(),
        b"Content-Length: %d\r\n" % len(body),
        b"Cache-Control: no-store\r\n",
        b"Date: %b\r\n" % http_date(),
    ]
    lines.extend(b"%b: %b\r\n" % (name.encode(), value.encode()) for name, value in headers)
    if not reusable:
        lines.append(b"Connection: close\r\n")
    elif http10:
        lines.append(b"Connection: keep-alive\r\n")
    lines.append(b"\r\n")
    if not head_only:
        lines.append(body)
    return b"".join(lines)


def http_date() -> bytes:
    """The current time as an HTTP date (formatted once a second)."""
    return _formatted_date(int(time.time()))


@functools.lru_cache(maxsize=2)
def _formatted_date(second: int) -> bytes:
    return formatdate(second, usegmt=True).encode()
