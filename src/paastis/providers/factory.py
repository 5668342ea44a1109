"""Builds the configured provider adapter (the one place that knows every adapter)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aiohttp

from paastis.config import ProviderSettings
from paastis.providers import Provider
from paastis.providers.api import ProviderCallCounter
from paastis.providers.local import LocalAppSpec, LocalProvider


def build_provider(
    settings: ProviderSettings,
    *,
    local_apps: Mapping[str, LocalAppSpec],
    session: aiohttp.ClientSession,
    counter: ProviderCallCounter,
    tuning: Mapping[str, Any] | None = None,
) -> Provider:
    """`tuning` passes adapter-specific keywords (poll intervals, retry policy) through."""
    extra = dict(tuning or {})
    if settings.name == "scalingo":
        from paastis.providers.scalingo import ScalingoProvider

        assert settings.scalingo_api_token is not None  # checked by the configuration
        return ScalingoProvider(
            api_token=settings.scalingo_api_token,
            region=settings.region or "osc-fr1",
            api_url=settings.scalingo_api_url,
            auth_url=settings.scalingo_auth_url,
            operation_timeout=settings.operation_timeout,
            session=session,
            counter=counter,
            **extra,
        )
    if settings.name == "heroku":
        from paastis.providers.heroku import HerokuProvider

        assert settings.heroku_api_token is not None
        return HerokuProvider(
            api_token=settings.heroku_api_token,
            api_url=settings.heroku_api_url,
            region=settings.region,
            operation_timeout=settings.operation_timeout,
            session=session,
            counter=counter,
            **extra,
        )
    if settings.name == "clever-cloud":
        from paastis.providers.clever_cloud import CleverCloudProvider, CleverOAuthCredentials

        oauth = None
        if not settings.clever_api_token:
            oauth = CleverOAuthCredentials(
                consumer_key=settings.clever_consumer_key or "",
                consumer_secret=settings.clever_consumer_secret or "",
                token=settings.clever_token or "",
                token_secret=settings.clever_secret or "",
            )
        return CleverCloudProvider(
            api_host=settings.clever_api_host,
            session=session,
            counter=counter,
            oauth=oauth,
            api_token=settings.clever_api_token,
            region=settings.region,
            operation_timeout=settings.operation_timeout,
            **extra,
        )
    return LocalProvider(local_apps, operation_timeout=settings.operation_timeout, **extra)
