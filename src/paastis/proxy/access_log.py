"""The access log line and the request metrics of every proxied request."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from paastis.metrics import Metrics

access_log = logging.getLogger("paastis.access")

STATUS_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


@dataclass(slots=True)
class RequestOutcome:
    """What became of one request, filled in as it is served."""

    app: str = ""  # "" for hosts that name no known app: they must not create metric series
    status: int = 500
    cold: bool = False


class RequestRecorder:
    """Counts and logs each request; metric children are looked up once per app."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self._requests: dict[tuple[str, int], Any] = {}
        self._in_flight: dict[str, Any] = {}

    def in_flight(self, app: str) -> Any:
        """The app's in-flight gauge (inc() when a request starts, dec() when it ends)."""
        gauge = self._in_flight.get(app)
        if gauge is None:
            gauge = self._in_flight[app] = self._metrics.in_flight.labels(app)
        return gauge

    def record(self, request: web.BaseRequest, outcome: RequestOutcome, duration: float) -> None:
        status_class = min(outcome.status // 100, 5)
        key = (outcome.app, status_class)
        counter = self._requests.get(key)
        if counter is None:
            counter = self._requests[key] = self._metrics.requests.labels(
                outcome.app, STATUS_CLASSES[status_class]
            )
        counter.inc()
        self._metrics.request_duration.observe(duration)
        if access_log.isEnabledFor(logging.INFO):
            log_request(request, outcome, duration)


def log_request(request: web.BaseRequest, outcome: RequestOutcome, duration: float) -> None:
    path = request.path
    access_log.info(
        "%s %s %s -> %s in %.3fs%s",
        outcome.app or "-",
        request.method,
        path,
        outcome.status,
        duration,
        " (cold start)" if outcome.cold else "",
        extra={
            "app": outcome.app,
            "method": request.method,
            "path": path,
            "status": outcome.status,
            "duration": round(duration, 4),
            "cold_start": outcome.cold,
        },
    )
