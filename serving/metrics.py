"""Prometheus metrics of the feed API, in a registry per app (tests build many apps in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# Request path stages run in tens of microseconds to a few milliseconds; buckets fine enough that a
# stage's p99 read from them (the serving benchmark interpolates inside a bucket) is within ~25 %.
STAGE_BUCKETS = (
    0.00005, 0.0001, 0.00015, 0.0002, 0.0003, 0.0004, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.004,
    0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
AGE_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600, 86_400)


class ServingMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "freshrank_serve_requests",
            "HTTP requests by route template and status code.",
            ["route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "freshrank_serve_request_seconds",
            "Time from request start to the end of the response, by route template.",
            ["route"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.stage_seconds = Histogram(
            "freshrank_serve_stage_seconds",
            "Time spent in each stage of a ranking request.",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.fallbacks = Counter(
            "freshrank_serve_fallbacks",
            "Fallbacks that fired, as reported in the response's `degraded` list (stage:reason).",
            ["reason"],
            registry=r,
        )
        self.feature_age = Histogram(
            "freshrank_serve_feature_age_seconds",
            "Age of features at read time (now - as_of_ms): the user row, and the oldest item row of a request.",
            ["entity"],
            buckets=AGE_BUCKETS,
            registry=r,
        )
        self.item_cache_items = Gauge(
            "freshrank_serve_item_cache_items", "Items whose features are held in process.", registry=r
        )
        self.item_cache_refresh_age = Gauge(
            "freshrank_serve_item_cache_refresh_age_seconds",
            "Seconds since the item cache last refreshed successfully (-1: never).",
            registry=r,
        )
        self.item_cache_refreshes = Counter(
            "freshrank_serve_item_cache_refreshes", "Background item-feature refreshes.", ["outcome"], registry=r
        )
        self.item_cache_misses_dropped = Counter(
            "freshrank_serve_item_cache_misses_dropped",
            "Missed candidate items not queued for a read because the queue was full (a flood of unknown ids).",
            registry=r,
        )
        self.corrupt_rows = Counter(
            "freshrank_serve_corrupt_rows",
            "Stored feature rows that could not be decoded and were skipped, by entity (user, item).",
            ["entity"],
            registry=r,
        )
        self.background_errors = Counter(
            "freshrank_serve_background_errors",
            "Failed steps of background tasks (each logged and retried; the task keeps running).",
            ["task"],
            registry=r,
        )
        self.in_flight = Gauge(
            "freshrank_serve_in_flight_requests",
            "Requests in progress in this worker (ops endpoints excluded).",
            registry=r,
        )
        self.shed = Counter(
            "freshrank_serve_shed",
            "Requests refused by the worker itself: overloaded (503, max_in_flight) or timeout (504).",
            ["reason"],
            registry=r,
        )
        self.model_loads = Counter(
            "freshrank_serve_model_loads",
            "Model versions loaded or refused by the registry watcher.",
            ["outcome"],
            registry=r,
        )
        self.model_version = Gauge(
            "freshrank_serve_model_version", "Model version each A/B arm serves (-1: none).", ["arm"], registry=r
        )
        self.events = Counter(
            "freshrank_serve_events",
            "Events through POST /v1/events: accepted, rejected, delivered, failed (delivery).",
            ["outcome"],
            registry=r,
        )
        self.explored = Counter("freshrank_serve_exploration_items", "Items placed in exploration slots.", registry=r)
