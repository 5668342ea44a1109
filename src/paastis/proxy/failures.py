"""Every answer paastis gives instead of the app's: one table of statuses, texts and headers."""

from __future__ import annotations

import enum
from dataclasses import dataclass

# What `Allow` lists: every method paastis forwards (CONNECT is refused).
ALLOWED_METHODS = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS"
# Seconds a client is told to wait before retrying a sleeping or slow-to-wake app.
RETRY_AFTER = "10"


@dataclass(frozen=True)
class FailureKind:
    status: int
    text: str  # formatted with `app` and `detail`
    headers: tuple[tuple[str, str], ...] = ()


class Failure(enum.Enum):
    """Why paastis answers a request itself. The text names the app where there is one."""

    BAD_REQUEST = FailureKind(400, "bad request: {detail}")
    BAD_HOST = FailureKind(400, "{detail}")
    UNKNOWN_APP = FailureKind(404, "no app named {app}")
    METHOD_NOT_ALLOWED = FailureKind(
        405,
        "{detail} is not supported: paastis is not a forward proxy",
        (("Allow", ALLOWED_METHODS),),
    )
    HEAD_TIMEOUT = FailureKind(408, "the request head did not arrive in time")
    HEAD_TOO_LARGE = FailureKind(431, "{detail}")
    TRANSFER_CODING = FailureKind(501, "transfer coding {detail} is not supported")
    VERSION = FailureKind(505, "HTTP version {detail} is not supported")
    LOOP = FailureKind(508, "forwarding loop: the upstream of {app} points back at paastis")
    PROVIDER_UNREACHABLE = FailureKind(502, "cannot reach the provider for {app}")
    WAKE_FAILED = FailureKind(502, "the provider failed to wake {app}")
    NO_UPSTREAM = FailureKind(502, "no upstream known for {app}")
    UPSTREAM_UNREACHABLE = FailureKind(502, "{app} is unreachable")
    UPSTREAM_BROKE = FailureKind(502, "the answer of {app} broke off")
    UPSTREAM_TIMEOUT = FailureKind(504, "{app} did not answer in time")
    WAKE_TIMEOUT = FailureKind(
        503, "{app} did not wake up in time", (("Retry-After", RETRY_AFTER),)
    )
    ASLEEP = FailureKind(
        503,
        "{app} is asleep",
        (("Retry-After", RETRY_AFTER), ("X-Paastis-App-State", "sleeping")),
    )
    NOT_RUNNING = FailureKind(503, "{app} is not running")
    INTERNAL = FailureKind(500, "internal error")

    @property
    def status(self) -> int:
        return self.value.status

    def text(self, app: str = "", detail: str = "") -> str:
        return "paastis: " + self.value.text.format(app=app, detail=detail) + "\n"
