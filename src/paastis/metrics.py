"""Prometheus metrics of one paastis process (a registry per process, no global state)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from paastis.providers.api import ProviderCallCounter

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
WAKE_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        r = self.registry
        self.requests = Counter(
            "paastis_requests", "Proxied requests", ["app", "status_class"], registry=r
        )
        self.request_duration = Histogram(
            "paastis_request_duration_seconds",
            "Duration of proxied requests",
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "paastis_requests_in_flight", "Requests and streams open", ["app"], registry=r
        )
        self.wakes = Counter("paastis_wakes", "App wakes", ["app", "outcome"], registry=r)
        self.wake_duration = Histogram(
            "paastis_wake_duration_seconds", "Duration of wakes", buckets=WAKE_BUCKETS, registry=r
        )
        self.stops = Counter("paastis_stops", "App stops", ["app", "outcome"], registry=r)
        self.tick_duration = Histogram(
            "paastis_scheduler_tick_duration_seconds",
            "Duration of scheduler ticks",
            buckets=WAKE_BUCKETS,
            registry=r,
        )

    def watch_provider_calls(self, counter: ProviderCallCounter) -> None:
        self.registry.register(ProviderCallsCollector(counter))

    def watch_apps(
        self,
        states: Callable[[], dict[str, int]],
        asleep: Callable[[], Iterable[tuple[str, float]]],
    ) -> None:
        """Registers gauges read when scraped: apps by state, seconds each app slept."""
        self.registry.register(AppsCollector(states, asleep))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class ProviderCallsCollector(Collector):
    def __init__(self, counter: ProviderCallCounter) -> None:
        self.counter = counter

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            "paastis_provider_calls",
            "Provider API calls",
            labels=["provider", "operation", "status"],
        )
        for (provider, operation, status), count in sorted(self.counter.calls.items()):
            family.add_metric([provider, operation, status], count)
        yield family


class AppsCollector(Collector):
    def __init__(
        self,
        states: Callable[[], dict[str, int]],
        asleep: Callable[[], Iterable[tuple[str, float]]],
    ) -> None:
        self.states = states
        self.asleep = asleep

    def collect(self) -> Iterable[Metric]:
        apps = GaugeMetricFamily("paastis_apps", "Apps by state", labels=["state"])
        for state, count in sorted(self.states().items()):
            apps.add_metric([state], count)
        yield apps
        slept = CounterMetricFamily(
            "paastis_app_asleep_seconds",
            "Seconds each app spent stopped by paastis (what it saved)",
            labels=["app"],
        )
        for app, seconds in sorted(self.asleep()):
            slept.add_metric([app], seconds)
        yield slept
