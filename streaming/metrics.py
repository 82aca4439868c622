"""Prometheus metrics of the stream job, served from the process that runs the Python operators.

In thread mode the operators run inside the Flink JVM's embedded Python, not in
the `freshrank stream` client process, so the HTTP server is started lazily
by the first operator that opens (once per process).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from prometheus_client import Counter, Gauge, Histogram, start_http_server

EVENTS = Counter(
    "freshrank_stream_events_total",
    "Records read from Kafka, by outcome: admitted, duplicate, late, invalid.",
    ["outcome"],
)
ROWS_WRITTEN = Counter("freshrank_stream_rows_written_total", "Feature rows written to the online store.", ["view"])
SINK_RETRIES = Counter("freshrank_stream_sink_retries_total", "Online store writes retried because Redis was down.")
DLQ_RECORDS = Counter("freshrank_stream_dlq_records_total", "Records sent to the DLQ, by reason kind.", ["kind"])
CONSUMER_LAG = Gauge("freshrank_stream_consumer_lag", "High watermark minus next offset to read.", ["partition"])
FRESHNESS = Histogram(
    "freshrank_stream_freshness_seconds",
    "Time a row became readable in the online store minus the event time of the newest event it includes.",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
)
FRESHNESS_SAMPLES = Gauge("freshrank_stream_freshness_recent_samples", "Rows behind the freshness quantiles.")
FRESHNESS_RECENT = Gauge(
    "freshrank_stream_freshness_recent_seconds",
    "Freshness quantiles over the recent window of writes (FRESHRANK_STREAM_FRESHNESS_WINDOW_S, default 60 s).",
    ["quantile"],
)

_server_lock = threading.Lock()
_server_port: int | None = None


def serve(port: int) -> None:
    """Start the /metrics HTTP server once per process (port 0: don't serve)."""
    global _server_port
    with _server_lock:
        if port and _server_port is None:
            try:
                start_http_server(port, addr="127.0.0.1")
            except OSError as error:
                # Another Python worker of this job already serves the port.
                logging.getLogger("freshrank.stream").info("metrics port %s: %s", port, error)
            _server_port = port


class RecentFreshness:
    """Freshness samples of the last `horizon_s`, for p50/p99 gauges that `freshrank status` shows."""

    def __init__(self, horizon_s: float = 60.0, every_s: float = 1.0) -> None:
        self.horizon_s = horizon_s
        self.every_s = every_s
        self._samples: deque[tuple[float, float]] = deque()
        self._published = -float("inf")

    def observe(self, freshness_s: float, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        FRESHNESS.observe(freshness_s)
        self._samples.append((now, freshness_s))

    def publish(self, now: float | None = None) -> None:
        """Recompute the gauges, at most once per `every_s`: sorting a minute of samples per batch cost a quarter
        of the job's CPU at 1,000 events/s."""
        now = time.monotonic() if now is None else now
        if now - self._published < self.every_s:
            return
        self._published = now
        while self._samples and self._samples[0][0] < now - self.horizon_s:
            self._samples.popleft()
        values = sorted(v for _, v in self._samples)
        FRESHNESS_SAMPLES.set(len(values))
        for label, q in (("0.5", 0.5), ("0.99", 0.99), ("1", 1.0)):
            FRESHNESS_RECENT.labels(label).set(values[min(len(values) - 1, int(q * len(values)))] if values else 0.0)
