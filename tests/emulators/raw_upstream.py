"""A raw HTTP/1.1 upstream for the proxy's fidelity tests: it records the exact bytes of every
request it receives and answers with bytes the test scripts, so that nothing (no HTTP library)
stands between the proxy and what the test checks.

    upstream = await RawUpstream(answer=b"HTTP/1.1 204 No Content\\r\\n\\r\\n").start()
    ...
    upstream.requests[0].values(b"X-Foo")  # [b"caf\\xe9"]
    await upstream.stop()

`answer` may instead be a coroutine function `(request, writer) -> None` that writes (and may
drip, stall or close) as it likes. A listener that only counts connections (the "CONNECT target"
of the strict-input tests) is a RawUpstream whose answer closes at once.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

Answer = Callable[["RawRequest", asyncio.StreamWriter], Awaitable[None]]

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class RawRequest:
    """One request as it arrived: its head (request line, header lines, blank line) and its
    body (de-chunked when it came chunked; `raw_body` keeps the chunks)."""

    head: bytes
    body: bytes
    raw_body: bytes

    @property
    def request_line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        """(name, value) of each header line, in order, with the value's surrounding spaces
        stripped (they are not part of the value, RFC 9110 §5.5) and nothing else touched."""
        lines = self.head.split(b"\r\n")[1:]
        pairs = []
        for line in lines:
            if not line:
                continue
            name, _, value = line.partition(b":")
            pairs.append((name, value.strip(b" \t")))
        return pairs

    def values(self, name: bytes) -> list[bytes]:
        return [value for field, value in self.fields if field.lower() == name.lower()]

    def names(self) -> set[bytes]:
        return {field.lower() for field, _ in self.fields}


class RawUpstream:
    def __init__(self, answer: bytes | Answer = OK) -> None:
        self._answer = answer
        self.requests: list[RawRequest] = []
        self.connections = 0
        self.request_arrived = asyncio.Event()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=5)
        if self._server is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), timeout=5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        try:
            while not writer.is_closing():
                request = await read_request(reader)
                if request is None:
                    break
                self.requests.append(request)
                self.request_arrived.set()
                if isinstance(self._answer, bytes):
                    writer.write(self._answer)
                    await writer.drain()
                else:
                    await self._answer(request, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self._writers.discard(writer)
            self._tasks.discard(task)
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> RawRequest | None:
    """The next request on the connection, or None at its end."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError:
        return None
    partial = RawRequest(head, b"", b"")
    lengths = partial.values(b"Content-Length")
    if any(b"chunked" in value.lower() for value in partial.values(b"Transfer-Encoding")):
        body, raw = await read_chunked(reader)
        return RawRequest(head, body, raw)
    if lengths:
        body = await reader.readexactly(int(lengths[0]))
        return RawRequest(head, body, body)
    return partial


async def read_chunked(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(body, raw chunked bytes) of a chunked body without trailers."""
    body, raw = b"", b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        raw += size_line
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            raw += await reader.readuntil(b"\r\n")
            return body, raw
        chunk = await reader.readexactly(size + 2)
        raw += chunk
        body += chunk[:-2]
