"""What the three API emulators share: the call log, `count()`, fault injection, the clock.

Each emulator names its routes (Scalingo: `scale`, Heroku: `/apps/{app}/dynos`, Clever
Cloud: `deployment`) and says how it answers an injected fault; the rest is here:

    emulator.fail_next("scale", 500, times=2, app="shop")   # the next 2 scales of shop fail
    emulator.fail_next("instances", 500, method="POST", after_handling=True)  # applied, then 500
    emulator.count("scale", app="shop")                      # requests received, failed included
    emulator.statuses("scale")                               # what they were answered, in order

Time is `clock()` when one is given (a test's ManualClock), else the event loop's clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Clock = Callable[[], float]


@dataclass(frozen=True)
class Call:
    """One request an emulator received, and the status it answered."""

    method: str
    path: str
    route: str
    app: str | None  # the app the path names, as sent (a name or an id)
    at: float  # the emulator's clock
    status: int = 0


@dataclass
class Fault:
    route: str
    status: int
    times: int
    method: str | None = None
    app: str | None = None
    body: Any = None  # a str is sent as text/plain, anything else as JSON; None: the default
    retry_after: str | None = None
    skip: int = 0  # matching requests let through before the faults begin
    after_handling: bool = False  # the request takes effect, and only its answer fails

    def matches(self, call: Call) -> bool:
        return (
            self.times > 0
            and self.route == call.route
            and self.method in (None, call.method)
            and self.app in (None, call.app)
        )


class Emulator:
    """The base of an API emulator: a middleware that logs, injects faults and guards."""

    def __init__(self, *, boot_delay: float, clock: Clock | None = None) -> None:
        # Seconds between a start the platform accepted and the app serving.
        self.boot_delay = boot_delay
        self.clock: Clock = clock or _loop_time
        self.log: list[Call] = []
        self._faults: list[Fault] = []

    # -- what each emulator says -----------------------------------------------------------

    def route_of(self, request: web.Request) -> str:
        """The name tests use for the endpoint the request matched."""
        raise NotImplementedError

    def default_fault_body(self, status: int) -> Any:
        raise NotImplementedError

    async def guard(self, request: web.Request, route: str) -> web.StreamResponse | None:
        """An answer given before the handler (authentication, rate limit), or None."""
        return None

    def finish(self, response: web.StreamResponse) -> None:
        """Last touches on every answer (e.g. a rate-limit header)."""

    def is_serving(self, name: str) -> bool:
        """Whether the app's web processes are up, so that its upstream answers."""
        raise NotImplementedError

    # -- arrange and inspect ---------------------------------------------------------------

    def now(self) -> float:
        return self.clock()

    def fail_next(
        self,
        route: str,
        status: int = 500,
        *,
        times: int = 1,
        method: str | None = None,
        app: str | None = None,
        body: Any = None,
        retry_after: str | float | None = None,
        skip: int = 0,
        after_handling: bool = False,
    ) -> None:
        """The next `times` requests to `route` (for `method` and `app`, when given) answer
        `status`, after `skip` matching ones that succeed. With `after_handling`, each of
        them takes effect first, as a request whose answer got lost would."""
        header = (
            retry_after
            if retry_after is None or isinstance(retry_after, str)
            else f"{retry_after:g}"
        )
        self._faults.append(
            Fault(route, status, times, method, app, body, header, skip, after_handling)
        )

    def calls(
        self, route: str | None = None, *, method: str | None = None, app: str | None = None
    ) -> list[Call]:
        return [
            c
            for c in self.log
            if route in (None, c.route) and method in (None, c.method) and app in (None, c.app)
        ]

    def count(
        self, route: str | None = None, *, method: str | None = None, app: str | None = None
    ) -> int:
        """Requests received (failed ones included), optionally for one route, method, app."""
        return len(self.calls(route, method=method, app=app))

    def statuses(
        self, route: str | None = None, *, method: str | None = None, app: str | None = None
    ) -> list[int]:
        """The statuses answered, in order."""
        return [c.status for c in self.calls(route, method=method, app=app)]

    @property
    def total_calls(self) -> int:
        return len(self.log)

    def last_call_times(self, route: str, *, method: str | None = None) -> dict[str, float]:
        """Per app, the clock time of its latest request to `route`."""
        return {c.app: c.at for c in self.calls(route, method=method) if c.app}

    # -- serving ---------------------------------------------------------------------------

    def web_application(self, **kwargs: Any) -> web.Application:
        return web.Application(middlewares=[self._middleware], **kwargs)

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        call = Call(
            request.method,
            request.path,
            self.route_of(request),
            request.match_info.get("app"),
            self.now(),
        )
        index = len(self.log)
        self.log.append(call)
        fault = self._take_fault(call)
        response: web.StreamResponse | None = None
        try:
            if fault is not None and not fault.after_handling:
                response = self._fault_response(fault)
            else:
                response = await self.guard(request, call.route)
            if response is None:
                response = await handler(request)
                if fault is not None:
                    response = self._fault_response(fault)
        except web.HTTPException as exc:
            self.log[index] = replace(call, status=exc.status)
            raise
        self.finish(response)
        self.log[index] = replace(call, status=response.status)
        return response

    def _take_fault(self, call: Call) -> Fault | None:
        for fault in self._faults:
            if fault.matches(call):
                if fault.skip > 0:
                    fault.skip -= 1
                    return None
                fault.times -= 1
                return fault
        return None

    def _fault_response(self, fault: Fault) -> web.Response:
        body = self.default_fault_body(fault.status) if fault.body is None else fault.body
        headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else None
        if isinstance(body, str):
            return web.Response(status=fault.status, text=body, headers=headers)
        return web.json_response(body, status=fault.status, headers=headers)


def _loop_time() -> float:
    return asyncio.get_running_loop().time()
