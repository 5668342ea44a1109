"""A test upstream app: echoes what it receives, streams, holds requests, speaks WebSocket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import WSMsgType, web


@dataclass
class UpstreamApp:
    """One fake app behind paastis; records every request it receives."""

    name: str = "upstream"
    received: list[dict] = field(default_factory=list)
    # Set to hold /hold requests until the test releases them.
    release: asyncio.Event = field(default_factory=asyncio.Event)
    health_status: int = 200
    health_checks: int = 0
    # Whether the app has booted (e.g. `emulator.is_serving`): until then, every request gets
    # 503 from the platform's router, as a sleeping or booting app's does.
    booted: Callable[[], bool] | None = None
    refused: int = 0

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2, middlewares=[self._router])
        app.router.add_get("/ws", self.websocket)
        app.router.add_get("/stream", self.stream)
        app.router.add_route("*", "/hold", self.hold)
        app.router.add_get("/redirect", self.redirect)
        app.router.add_get("/health", self.health)
        app.router.add_route("*", "/{tail:.*}", self.echo)
        return app

    @web.middleware
    async def _router(self, request: web.Request, handler) -> web.StreamResponse:
        if self.booted is not None and not self.booted():
            self.refused += 1
            return web.Response(status=503, text="application is booting")
        return await handler(request)

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        record = {
            "app": self.name,
            "method": request.method,
            "path": request.path,
            "raw_path": request.raw_path,
            "query": request.query_string,
            "headers": dict(request.headers),
            "body_length": len(body),
            "body": body.decode(errors="replace") if len(body) < 4096 else "",
        }
        self.received.append(record)
        response = web.json_response(record)
        response.headers["X-Upstream"] = self.name
        response.set_cookie("upstream", self.name)
        return response

    async def health(self, request: web.Request) -> web.Response:
        self.health_checks += 1
        return web.Response(status=self.health_status, text="ok")

    async def stream(self, request: web.Request) -> web.StreamResponse:
        chunks = int(request.query.get("chunks", "5"))
        gap = float(request.query.get("gap", "0.01"))  # seconds of silence between chunks
        response = web.StreamResponse()
        response.content_type = "text/plain"
        await response.prepare(request)
        for index in range(chunks):
            await response.write(f"chunk {index}\n".encode())
            await asyncio.sleep(gap)
        await response.write_eof()
        return response

    async def hold(self, request: web.Request) -> web.Response:
        self.received.append({"app": self.name, "method": request.method, "path": "/hold"})
        await asyncio.wait_for(self.release.wait(), timeout=30)
        return web.Response(text="released")

    async def redirect(self, request: web.Request) -> web.Response:
        raise web.HTTPFound(f"{request.scheme}://{request.host}/landed")

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                await ws.send_str(f"echo: {message.data}")
            elif message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws
