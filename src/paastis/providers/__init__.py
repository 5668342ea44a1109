"""The provider interface: what paastis needs from a PaaS, whatever the PaaS."""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol, TypedDict

# Quantity per process type (Scalingo container types, Heroku formation entries).
Formation = dict[str, int]


class Autoscaler(TypedDict):
    """A Scalingo autoscaler a stop found enabled, to enable again at the next wake."""

    id: str
    container_type: str
    min_containers: int


class Remembered(TypedDict, total=False):
    """What a stop hands back for the next wake. Plain JSON: the registry persists it.

    `{"formation": {"web": 2, "worker": 1},
      "autoscalers": [{"id": "as-1", "container_type": "web", "min_containers": 2}]}`

    `upstream_url` is where the app answers, for a provider whose listing does not say
    (Clever Cloud): the next wake then needs no lookup before its start.
    """

    formation: Formation
    autoscalers: list[Autoscaler]
    upstream_url: str


@dataclass(frozen=True)
class Backoff:
    """How often a provider is asked whether a start is done: after `first` seconds, then
    each delay `factor` times the previous, never above `cap`. Calls are never closer than
    `min_gap` seconds, even when the upstream's readiness asks for an early look."""

    first: float
    factor: float = 2.0
    cap: float = 10.0
    min_gap: float = 1.0

    def delays(self) -> Iterator[float]:
        delay = self.first
        while True:
            yield delay
            delay = min(self.cap, delay * self.factor)

    def quicker(self) -> Backoff:
        """The same pace, starting again from `min_gap` (once the upstream answers)."""
        return Backoff(max(self.min_gap, 1e-3), self.factor, self.cap, self.min_gap)


@dataclass(frozen=True)
class Startup:
    """A start the platform accepted. `running()` asks it once (about one API call) whether
    the app runs now; it raises OperationFailed when the platform says the start failed."""

    running: Callable[[], Awaitable[bool]]


class AppState(enum.StrEnum):
    RUNNING = "running"
    STARTING = "starting"
    STOPPED = "stopped"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class PaasApp:
    """One application as the provider reports it."""

    name: str
    provider: str
    state: AppState
    upstream_url: str | None
    id: str | None = None
    region: str | None = None
    # Other request keys that address this app (e.g. Clever Cloud's `app-<uuid>`).
    aliases: tuple[str, ...] = ()
    created_at: datetime | None = None
    updated_at: datetime | None = None
    last_deployed_at: datetime | None = None
    force_https: bool | None = None
    sticky_session: bool | None = None
    git_url: str | None = None
    # The raw status string of the provider, for logs and the system API.
    status: str | None = field(default=None, compare=False)


class ProviderError(Exception):
    """A provider call failed; a proxied client gets 502."""

    def __init__(self, message: str, *, provider: str = "", app: str | None = None) -> None:
        super().__init__(message)
        self.provider = provider
        self.app = app


class ProviderAuthError(ProviderError):
    """The provider rejected our credentials (401/403)."""


class ProviderUnavailable(ProviderError):
    """The provider kept failing (5xx, connection errors, 429) after every retry."""


class AppNotFound(ProviderError):
    """The provider does not know this app."""


class WakeTimeout(ProviderError):
    """The app did not reach `running` within the operation timeout; a client gets 503."""


class OperationFailed(ProviderError):
    """The provider reported the start or stop itself as failed (e.g. a failed deployment)."""


class Provider(Protocol):
    """One PaaS account (and region). Knows nothing of HTTP routing or the registry."""

    name: str
    region: str | None
    # Seconds a start may take before it counts as timed out.
    operation_timeout: float
    # The pace at which a start is followed (`Startup.running`), inside the rate limit.
    poll: Backoff

    async def list_apps(self) -> list[PaasApp]:
        """Every app of the account with its state, in as few calls as the API allows."""
        ...

    async def get_app(self, name: str) -> PaasApp:
        """One app with its current state; raises AppNotFound."""
        ...

    async def start(self, name: str, remembered: Remembered | None) -> Startup:
        """Asks the platform to start the app (restoring what a stop `remembered`, web x 1
        when None) and returns once the platform accepted, not once the app runs.

        Raises OperationFailed, AppNotFound or another ProviderError.
        """
        ...

    async def stop(self, name: str) -> Remembered | None:
        """Scales every process type to zero; returns what the next wake must restore."""
        ...

    async def close(self) -> None: ...
