"""A raw HTTP/1.1 client for the proxy's tests: exact bytes out, exact bytes back, every wait
bounded."""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass


@dataclass
class RawAnswer:
    """One answer as it arrived: the status line, the header lines (values byte for byte, the
    surrounding spaces stripped) and the body (de-chunked)."""

    status_line: bytes
    fields: list[tuple[bytes, bytes]]
    body: bytes
    head: bytes

    @property
    def status(self) -> int:
        return int(self.status_line.split()[1])

    def values(self, name: bytes) -> list[bytes]:
        return [value for field, value in self.fields if field.lower() == name.lower()]

    def names(self) -> set[bytes]:
        return {field.lower() for field, _ in self.fields}

    def __str__(self) -> str:  # shown by pytest when an assertion fails
        return repr(self.head + self.body[:300])


class RawClient:
    """One client connection to 127.0.0.1:`port`."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> RawClient:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout=5
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await asyncio.wait_for(self.writer.drain(), timeout=5)

    async def answer(self, *, timeout: float = 5, head_only: bool = False) -> RawAnswer:
        """Reads one answer (after any 1xx interim ones)."""
        async with asyncio.timeout(timeout):
            while True:
                answer = await read_answer(self.reader, head_only=head_only)
                if not 100 <= answer.status < 200:
                    return answer

    async def rest(self, *, timeout: float = 5) -> bytes:
        """Everything until the proxy closes the connection."""
        async with asyncio.timeout(timeout):
            return await self.reader.read()

    async def closed_within(self, timeout: float) -> bytes:
        """Bytes received until the connection ends (EOF or reset); fails after `timeout`."""
        data = b""
        async with asyncio.timeout(timeout):
            while True:
                try:
                    chunk = await self.reader.read(65536)
                except ConnectionError:
                    return data
                if not chunk:
                    return data
                data += chunk

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), timeout=2)


async def read_answer(reader: asyncio.StreamReader, *, head_only: bool = False) -> RawAnswer:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(b":")
            fields.append((name, value.strip(b" \t")))
    answer = RawAnswer(lines[0], fields, b"", head)
    if head_only or answer.status in (204, 304) or 100 <= answer.status < 200:
        return answer
    if any(b"chunked" in v.lower() for v in answer.values(b"Transfer-Encoding")):
        answer.body = await read_chunked(reader)
    elif answer.values(b"Content-Length"):
        answer.body = await reader.readexactly(int(answer.values(b"Content-Length")[0]))
    else:
        answer.body = await reader.read()
    return answer


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            return body
        body += (await reader.readexactly(size + 2))[:-2]


async def exchange(port: int, request: bytes, *, timeout: float = 5) -> RawAnswer:
    """Sends `request` on a new connection and reads one answer."""
    client = await RawClient.open(port)
    try:
        await client.send(request)
        return await client.answer(timeout=timeout)
    finally:
        await client.close()


class Stopwatch:
    def __init__(self) -> None:
        self.started = time.monotonic()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started
