"""Prometheus metrics of the stream job, served from the process that runs the Python operators.

In thread mode the operators run inside the Flink JVM's embedded Python, not in
the `freshrank stream` client process, so the HTTP server is started lazily
by the first operator that opens (once per process).
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from collections import deque

from prometheus_client import Counter, Gauge, Histogram, start_http_server, values

# Importing Feast sets PROMETHEUS_MULTIPROCESS_DIR (for its gunicorn feature server), which made every
# update of the metrics below write to an mmap'ed file after a pid check (seen in py-spy, ~5 % of the
# job's GIL time). The job's metrics live in one process: keep them in memory.
values.ValueClass = values.MutexValue

EVENTS = Counter(
    "freshrank_stream_events_total",
    "Records read from Kafka, by outcome: admitted, duplicate, late, invalid.",
    ["outcome"],
)
ROWS_WRITTEN = Counter("freshrank_stream_rows_written_total", "Feature rows written to the online store.", ["view"])
SINK_RETRIES = Counter(
    "freshrank_stream_sink_retries_total",
    "Online store writes retried, by cause: unavailable (down, timeout), oom, readonly, error.",
    ["reason"],
)
DLQ_RECORDS = Counter("freshrank_stream_dlq_records_total", "Records confirmed on the DLQ, by reason kind.", ["kind"])
DLQ_WRITE_FAILURES = Counter(
    "freshrank_stream_dlq_write_failures_total", "DLQ writes that got a failed delivery report (retried)."
)
DLQ_TRUNCATED = Counter("freshrank_stream_dlq_truncated_total", "DLQ records cut to the size limit.")
READING_PAUSED = Gauge(
    "freshrank_stream_reading_paused",
    "1 while reading is stopped: dlq (DLQ unwritable), online_store (Redis refusing writes), layout, schema_registry.",
    ["reason"],
)
CONSUMER_LAG = Gauge(
    "freshrank_stream_consumer_lag", "High watermark minus next offset to read (negative: log reset).", ["partition"]
)
OFFSET_RESETS = Counter(
    "freshrank_stream_offset_resets_total",
    "Stored offsets found out of range and reset to the earliest, by cause: retention, log_reset.",
    ["partition", "cause"],
)
RECORDS_SKIPPED = Counter(
    "freshrank_stream_records_skipped_total", "Records no longer in the log when an offset was reset.", ["partition"]
)
SCHEMA_LOOKUP_FAILURES = Counter(
    "freshrank_stream_schema_lookup_failures_total",
    "Polls stopped because the schema registry could not be asked for a writer schema (retried).",
)
CLOCK_SKEW_CLAMPED = Counter(
    "freshrank_stream_clock_skew_clamped_total", "Admitted events whose event time was clamped to ingest + max skew."
)
ENTITIES_EVICTED = Counter("freshrank_stream_entities_evicted_total", "Idle entities removed from state.", ["view"])
ENTITIES = Gauge("freshrank_stream_entities", "Entities in this process's state.", ["view"])
TASK_STARTS = Counter(
    "freshrank_stream_task_starts_total", "Operator instances opened in this process (restores count).", ["operator"]
)
TASK_RESTARTS = Counter(
    "freshrank_stream_task_restarts_total", "Operator instances re-opened after a failure (Flink failovers)."
)
CATALOG_RELOAD_FAILURES = Counter(
    "freshrank_stream_catalog_reload_failures_total", "Catalog reloads that failed (the old catalog was kept)."
)
LAYOUT_MISMATCH = Gauge(
    "freshrank_stream_layout_mismatch", "1 when partitions or item buckets differ from the state's; reading stops."
)
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

RESTART_WINDOW_S = 300.0
TASK_RESTARTS_RECENT = Gauge(
    "freshrank_stream_task_restarts_recent",
    f"Operator re-opens (Flink failovers) in the last {RESTART_WINDOW_S:.0f} s: above 0, the job is not healthy.",
)

_server_lock = threading.Lock()
_server_port: int | None = None
_opened: set[tuple[str, int]] = set()
_restarts_at: list[float] = []


def _recent_restarts() -> float:
    cutoff = time.monotonic() - RESTART_WINDOW_S
    with _server_lock:
        _restarts_at[:] = [at for at in _restarts_at if at > cutoff]
        return float(len(_restarts_at))


TASK_RESTARTS_RECENT.set_function(_recent_restarts)


def task_opened(operator: str, subtask: int, attempt: int) -> None:
    """Count an operator start; attempt > 0 (or a second start of one subtask here) is a Flink failover.

    In thread mode every restore re-opens the operators in the same interpreter, so
    a job in a restart loop shows here even though the process (and /metrics) stays up.
    """
    TASK_STARTS.labels(operator).inc()
    with _server_lock:
        if attempt > 0 or (operator, subtask) in _opened:
            TASK_RESTARTS.inc()
            _restarts_at.append(time.monotonic())
        _opened.add((operator, subtask))


# Set in each TaskManager's environment by a local standalone cluster (streaming/cluster.py): the operators'
# settings are pickled once for every TaskManager, so the port of this process's /metrics comes from here.
TASK_MANAGER_METRICS_PORT_ENV = "FRESHRANK_TASK_MANAGER_METRICS_PORT"


def metrics_addresses(host: str, metrics_port: int, task_managers: int) -> list[str]:
    """The job's /metrics addresses: TaskManager i of a local cluster serves `metrics_port + i`; the mini-cluster
    (task_managers 0) serves `metrics_port` from its one process."""
    return [f"{host}:{metrics_port + index}" for index in range(max(1, task_managers))]


def serve(port: int, addr: str = "127.0.0.1") -> None:
    """Start the /metrics HTTP server once per process (port 0: don't serve).

    In a TaskManager of a local standalone cluster, FRESHRANK_TASK_MANAGER_METRICS_PORT replaces `port`
    (TaskManager i serves `port + i`), so every TaskManager on one host has its own.
    """
    global _server_port
    override = os.environ.get(TASK_MANAGER_METRICS_PORT_ENV)
    if port and override:
        port = int(override)
    with _server_lock:
        if port and _server_port is None:
            try:
                start_http_server(port, addr=addr)
            except OSError as error:
                # Another Python worker of this job already serves the port.
                logging.getLogger("freshrank.stream").info("metrics port %s: %s", port, error)
            _server_port = port


_SLOTS_PER_S = 10
"""Samples leave the gauges' horizon a tenth of a second at a time (the benchmark reads the gauges right after
its run: a coarser step would let samples from before its measured span in)."""


class RecentFreshness:
    """Freshness samples of the last `horizon_s` (to a tenth of a second), for the p50/p99 gauges of `freshrank status`.

    Samples are whole milliseconds (the job's clocks are). A writer appends a batch's
    samples to the current tenth of a second's list; publishing counts each list per millisecond
    (collections.Counter, in C) and keeps a running count per millisecond over the
    horizon, so the quantiles are exact and come from walking the distinct values (a
    few thousand). Sorting every sample of a minute (200,000 at 5,000 events/s) once a
    second was 3.5 % of the job's interpreter (py-spy --gil, README "The interpreter's share").
    """

    def __init__(self, horizon_s: float = 60.0, every_s: float = 1.0) -> None:
        self.horizon_s = horizon_s
        self.every_s = every_s
        # Per tenth of a second of arrival: samples not yet counted, and the counts per ms of those counted.
        self._slots: deque[tuple[int, list[int], collections.Counter[int]]] = deque()
        self._totals: collections.Counter[int] = collections.Counter()
        self._published = -float("inf")
        # Both feature operators' threads observe and publish (thread mode: one interpreter).
        self._lock = threading.Lock()

    def observe_ms(self, freshness_ms: list[int], now: float | None = None) -> None:
        """Count the freshness (ms) of a batch of rows written at `now`."""
        now = time.monotonic() if now is None else now
        for ms in freshness_ms:
            FRESHNESS.observe(ms / 1000)
        slot = int(now * _SLOTS_PER_S)
        with self._lock:
            slots = self._slots
            if not slots or slots[-1][0] < slot:
                slots.append((slot, [], collections.Counter()))
            slots[-1][1].extend(freshness_ms)

    def publish(self, now: float | None = None) -> None:
        """Recompute the gauges, at most once per `every_s`."""
        now = time.monotonic() if now is None else now
        with self._lock:
            if now - self._published < self.every_s:
                return
            self._published = now
            totals = self._totals
            for _, pending, counts in self._slots:
                if pending:
                    new = collections.Counter(pending)
                    pending.clear()
                    counts.update(new)
                    totals.update(new)
            while self._slots and self._slots[0][0] + 1 <= (now - self.horizon_s) * _SLOTS_PER_S:
                totals.subtract(self._slots.popleft()[2])
            for ms in [ms for ms, count in totals.items() if count <= 0]:
                del totals[ms]
            values = sorted(totals.items())
        n = sum(count for _, count in values)
        FRESHNESS_SAMPLES.set(n)
        for label, q in (("0.5", 0.5), ("0.99", 0.99), ("1", 1.0)):
            FRESHNESS_RECENT.labels(label).set(_nth(values, min(n - 1, int(q * n))) / 1000 if n else 0.0)


def _nth(counts: list[tuple[int, int]], index: int) -> int:
    """The value at 0-based `index` of the sorted samples that (value, count) pairs in value order describe."""
    seen = 0
    for value, count in counts:
        seen += count
        if seen > index:
            return value
    raise IndexError(index)


_recent: RecentFreshness | None = None


def recent_freshness(horizon_s: float) -> RecentFreshness:
    """The process's one tracker of the freshness gauges: every writer's rows count in the same quantiles
    (two trackers, one per operator, overwrote each other's gauges)."""
    global _recent
    with _server_lock:
        if _recent is None:
            _recent = RecentFreshness(horizon_s)
        return _recent
