"""The provider interface: what paastis needs from a PaaS, whatever the PaaS."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

# Quantity per process type (Scalingo container types, Heroku formation entries).
Formation = dict[str, int]


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

    async def list_apps(self) -> list[PaasApp]:
        """Every app of the account with its state, in as few calls as the API allows."""
        ...

    async def get_app(self, name: str) -> PaasApp:
        """One app with its current state; raises AppNotFound."""
        ...

    async def start(self, name: str, formation: Formation | None) -> None:
        """Start the app (restoring `formation`, web x 1 when None) and return once it runs.

        Raises WakeTimeout past `operation_timeout`, OperationFailed or another ProviderError.
        """
        ...

    async def stop(self, name: str) -> Formation | None:
        """Scale every process type to zero; returns the formation it had, to restore later."""
        ...

    async def close(self) -> None: ...
