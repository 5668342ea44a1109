"""A listening socket served by aiohttp's low-level server, closed gracefully in a given time."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger("paastis.server")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
ServerFactory = Callable[[Handler], web.Server]

# Once the time is up, how long the handlers still running get to unwind after being cancelled
# (aiohttp waits this long twice: for the handler, then for its cancellation).
CANCEL_GRACE = 0.25


class Listener:
    """Serves a handler on one address; `close()` drains it within a given time."""

    def __init__(self, handler: Handler, server: ServerFactory) -> None:
        self._handler = handler
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        # The caller bounds the whole close; aiohttp only gets the last instant to cancel.
        self._runner = web.ServerRunner(server(self._counted), shutdown_timeout=CANCEL_GRACE)

    @classmethod
    async def open(
        cls, handler: Handler, host: str, port: int, *, server: ServerFactory | None = None
    ) -> Listener:
        """Listens on `host:port`; `server` builds the aiohttp low-level server for a handler
        (default: a plain one that cancels a handler whose client went away)."""
        listener = cls(handler, server or _plain_server)
        await listener._runner.setup()
        try:
            await web.TCPSite(listener._runner, host, port).start()
        except BaseException:
            await listener._runner.cleanup()
            raise
        return listener

    @property
    def port(self) -> int:
        return int(self._runner.addresses[0][1])

    async def close(self, within: float) -> None:
        """Refuses new connections at once, lets the requests under way finish for at most
        `within` seconds, then cancels what is left and closes every connection."""
        for site in list(self._runner.sites):
            await site.stop()
        server = self._runner.server
        if server is not None:
            # Idle keep-alive connections take no new request; busy ones close once answered.
            server.pre_shutdown()
        try:
            async with asyncio.timeout(within):
                await self._idle.wait()
        except TimeoutError:
            log.warning(
                "shutdown deadline reached: cancelling %d request(s) still in flight",
                self._in_flight,
            )
        await self._runner.cleanup()

    async def _counted(self, request: web.BaseRequest) -> web.StreamResponse:
        self._in_flight += 1
        self._idle.clear()
        try:
            return await self._handler(request)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()


def _plain_server(handler: Handler) -> web.Server:
    return web.Server(handler, handler_cancellation=True)
