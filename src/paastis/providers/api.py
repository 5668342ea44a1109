"""One resilient JSON-over-HTTP client shared by the provider adapters.

Every call has a timeout, is counted by provider/operation/status, and is retried with
exponential backoff and jitter on connection errors, 5xx and 429 (honouring Retry-After),
a bounded number of times. A call that is not idempotent (Clever Cloud's redeploy) is never
resent once it may have reached the provider: only a refused connection or a 429 is retried.
401/403 raise ProviderAuthError with one clear message and a hint at the setting to check.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import aiohttp
from yarl import URL

from paastis.providers import AppNotFound, ProviderAuthError, ProviderError, ProviderUnavailable

log = logging.getLogger("paastis.provider")

RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Methods whose repetition changes nothing; callers vouch for other calls with `idempotent`.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})


class CallLimiter(Protocol):
    """Paces an adapter's calls (see ratelimit.SlidingWindow)."""

    def slot(self) -> AbstractAsyncContextManager[None]: ...

    def throttled(self) -> float:
        """A 429 came without Retry-After: seconds to wait, holding every caller meanwhile."""
        ...


class ProviderCallCounter:
    """Counts provider API calls by (provider, operation, status); the metrics read it."""

    def __init__(self) -> None:
        self.calls: Counter[tuple[str, str, str]] = Counter()

    def add(self, provider: str, operation: str, status: str) -> None:
        self.calls[(provider, operation, status)] += 1


@dataclass(frozen=True)
class ApiResponse:
    status: int
    headers: Mapping[str, str]
    body: Any  # parsed JSON, or the text when the body is not JSON


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_delay: float = 0.5
    max_delay: float = 20.0

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.max_delay)
        backoff = min(self.base_delay * 2**attempt, self.max_delay)
        return backoff / 2 + random.uniform(0, backoff / 2)


# Builds the Authorization (and other) headers per request, so tokens can be renewed.
HeaderFactory = Callable[[], Awaitable[Mapping[str, str]]]


class ApiClient:
    """Sends JSON requests to one provider API base URL."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        session: aiohttp.ClientSession,
        counter: ProviderCallCounter,
        headers: HeaderFactory,
        timeout: float = 15.0,
        retry: RetryPolicy | None = None,
        limiter: CallLimiter | None = None,
        label: str | None = None,
        auth_hint: str = "",
        auth_reasons: Mapping[str, str] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """`label` names the provider for people (`Clever Cloud`; `provider` is the metrics
        label); `auth_hint` ends the message of a rejected call ("check PROVIDER_X_TOKEN");
        `auth_reasons` explains a 401/403 by the error id of its body instead."""
        self.provider = provider
        self.label = label or provider
        self.base_url = base_url.rstrip("/")
        self._session = session
        self._counter = counter
        self._headers = headers
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retry = retry or RetryPolicy()
        self._limiter = limiter
        self._auth_hint = auth_hint
        self._auth_reasons = dict(auth_reasons or {})
        self._sleep = sleep
        # Called with every response; lets an adapter read rate-limit headers.
        self.on_response: Callable[[ApiResponse], None] | None = None

    async def request(
        self,
        method: str,
        path: str,
        *,
        operation: str,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201, 202, 204, 206),
        app: str | None = None,
        idempotent: bool | None = None,
    ) -> ApiResponse:
        """Sends one request (with retries); returns the response when its status is in `ok`.

        `idempotent` defaults to what the method promises (GET, PUT, DELETE: yes; POST,
        PATCH: no); an adapter sets it for a call it knows to be safe to repeat.
        """
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        safe = method.upper() in IDEMPOTENT_METHODS if idempotent is None else idempotent
        last_error = "no attempt"
        for attempt in range(self._retry.attempts):
            delay: float | None = None
            try:
                response = await self._send(method, url, operation, json, headers)
            except (aiohttp.ClientError, TimeoutError) as exc:
                self._counter.add(self.provider, operation, "error")
                last_error = f"{type(exc).__name__}: {exc}".rstrip(": ")
                # A refused connection never reached the provider; anything else may have.
                if not safe and not isinstance(exc, aiohttp.ClientConnectorError):
                    raise self._not_resent(operation, app, last_error) from None
            else:
                if self.on_response:
                    self.on_response(response)
                if response.status in ok:
                    return response
                self._raise_for_status(response, method, operation, app)
                last_error = f"HTTP {response.status}"
                if not safe and response.status != 429:  # a 429 was refused, not applied
                    raise self._not_resent(operation, app, last_error)
                delay = self._throttle_delay(response)
            if attempt + 1 < self._retry.attempts:
                if delay is None:
                    delay = self._retry.delay(attempt, None)
                log.warning(
                    "%s %s (%s %s) failed with %s; retrying in %.1fs",
                    self.provider, operation, method, redact_url(url), last_error, delay,
                )  # fmt: skip
                await self._sleep(delay)
        raise ProviderUnavailable(
            f"{self.provider} {operation} failed after {self._retry.attempts} attempts: "
            f"{last_error}",
            provider=self.provider,
            app=app,
        )

    def _throttle_delay(self, response: ApiResponse) -> float | None:
        """How long to wait before the next attempt, when the answer says (None: backoff)."""
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if retry_after is not None:
            return min(retry_after, self._retry.max_delay)
        if response.status == 429 and self._limiter is not None:
            return self._limiter.throttled()
        return None

    def _not_resent(self, operation: str, app: str | None, error: str) -> ProviderUnavailable:
        return ProviderUnavailable(
            f"{self.provider} {operation} failed with {error}; not resent, since it may have "
            "been applied",
            provider=self.provider,
            app=app,
        )

    async def _send(
        self, method: str, url: str, operation: str, body: Any, extra: Mapping[str, str] | None
    ) -> ApiResponse:
        if self._limiter is None:
            return await self._exchange(method, url, operation, body, extra)
        async with self._limiter.slot():
            return await self._exchange(method, url, operation, body, extra)

    async def _exchange(
        self, method: str, url: str, operation: str, body: Any, extra: Mapping[str, str] | None
    ) -> ApiResponse:
        headers = {"Accept": "application/json", **(await self._headers()), **(extra or {})}
        async with self._session.request(
            method, url, json=body, headers=headers, timeout=self._timeout
        ) as resp:
            text = await resp.text()
            self._counter.add(self.provider, operation, str(resp.status))
            parsed: Any = text
            if text and "json" in resp.headers.get("Content-Type", ""):
                try:
                    parsed = await resp.json(content_type=None)
                except ValueError:
                    parsed = text
            return ApiResponse(resp.status, resp.headers, parsed)

    def _raise_for_status(
        self, response: ApiResponse, method: str, operation: str, app: str | None
    ) -> None:
        """Raises for a final error status; returns for a retryable one."""
        status = response.status
        if status in RETRYABLE_STATUSES:
            return
        message = error_message(response.body)
        if status in (401, 403):
            raise self._auth_error(response, operation, message, app)
        if status == 404:
            raise AppNotFound(
                f"{self.provider} does not know {app or 'this resource'} ({operation}): {message}",
                provider=self.provider,
                app=app,
            )
        raise ProviderHttpError(
            f"{self.provider} {operation} ({method}) answered HTTP {status}: {message}",
            provider=self.provider,
            app=app,
            status=status,
            body=response.body,
        )

    def _auth_error(
        self, response: ApiResponse, operation: str, message: str, app: str | None
    ) -> ProviderAuthError:
        error_id = response.body.get("id") if isinstance(response.body, dict) else None
        reason = self._auth_reasons.get(error_id) if isinstance(error_id, str) else None
        if reason is not None:
            status = f"HTTP {response.status} {error_id}"
            text = f"{self.label} refused {operation} ({status}): {reason}"
        else:
            hint = f"; {self._auth_hint}" if self._auth_hint else ""
            text = (
                f"the {self.label} credentials were rejected (HTTP {response.status} on "
                f"{operation}{hint}): {message}"
            )
        return ProviderAuthError(text, provider=self.provider, app=app)


class ProviderHttpError(ProviderError):
    """A final (non-retryable) error status; adapters inspect it for provider quirks."""

    def __init__(
        self, message: str, *, provider: str, app: str | None, status: int, body: Any
    ) -> None:
        super().__init__(message, provider=provider, app=app)
        self.status = status
        self.body = body


def error_message(body: Any) -> str:
    """The human part of a provider's error body, whatever its shape."""
    if isinstance(body, dict):
        for key in ("message", "error", "errors"):
            if key in body:
                return str(body[key])
        return str(body)
    return str(body)[:200]


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def parse_time(value: Any) -> datetime | None:
    """An aware datetime from an API's ISO 8601 timestamp (UTC when it has no offset)."""
    if not isinstance(value, str) or not value:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def redact_url(url: str) -> str:
    """The URL without credentials or query string, fit for a log line."""
    parsed = URL(url)
    return str(parsed.with_user(None).with_password(None).with_query(None))
