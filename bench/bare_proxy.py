"""A bare aiohttp reverse proxy: the reference paastis is measured against. NOT product code.

aiohttp's low-level server and one ClientSession, every request streamed to one upstream with
the header rules paastis follows (hop-by-hop headers dropped, those named in `Connection` too,
X-Forwarded-For/-Proto/-Host added, `Host` taken from the upstream URL) and none of paastis'
logic: no routing, no registry, no metrics, no access log.

    python bench/bare_proxy.py --port 8081 --upstream http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
    }
)


def named_in_connection(headers) -> set[str]:
    return {
        token.strip().lower()
        for value in headers.getall("Connection", ())
        for token in value.split(",")
    }


def forwardable(name: str, named: set[str]) -> bool:
    lowered = name.lower()
    return lowered not in HOP_BY_HOP and lowered not in named and not lowered.startswith("proxy-")


def make_handler(upstream: str, session: aiohttp.ClientSession):
    base = upstream.rstrip("/")

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        named = named_in_connection(request.headers)
        headers = CIMultiDict(
            (name, value)
            for name, value in request.headers.items()
            if forwardable(name, named) and name.lower() not in ("host", "expect")
        )
        previous = request.headers.get("X-Forwarded-For")
        remote = request.remote or ""
        headers["X-Forwarded-For"] = f"{previous}, {remote}" if previous else remote
        headers["X-Forwarded-Proto"] = request.scheme
        headers["X-Forwarded-Host"] = request.host
        async with session.request(
            request.method,
            URL(base + request.raw_path, encoded=True),
            headers=headers,
            data=request.content if request.body_exists else None,
            allow_redirects=False,
        ) as answer:
            named = named_in_connection(answer.headers)
            response = web.StreamResponse(
                status=answer.status,
                reason=answer.reason,
                headers=CIMultiDict(
                    (name, value)
                    for name, value in answer.headers.items()
                    if forwardable(name, named) and name.lower() != "content-length"
                ),
            )
            if answer.content_length is not None:
                response.content_length = answer.content_length
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    return handle


async def serve(host: str, port: int, upstream: str) -> None:
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0),
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Accept"),
    )
    runner = web.ServerRunner(web.Server(make_handler(upstream, session)))
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    try:
        await asyncio.Event().wait()  # until SIGTERM
    finally:
        await runner.cleanup()
        await session.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:8080")
    parser.add_argument("--uvloop", action="store_true", help="run on uvloop")
    args = parser.parse_args()
    if args.uvloop:
        import uvloop

        uvloop.run(serve(args.host, args.port, args.upstream))
    else:
        asyncio.run(serve(args.host, args.port, args.upstream))
