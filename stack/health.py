"""Probes: is a component of the local stack up, and what does the stream job report on /metrics and Flink's REST API.

Every probe answers False/None for a port held by something that is not the expected
server (CI saw PyFlink's py4j gateway on one); none raises.
"""

from __future__ import annotations

import dataclasses
import http.client
from typing import Any

from stack.ports import split_address


def broker_healthy(bootstrap: str, timeout_s: float = 2.0) -> bool:
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": int(timeout_s * 1000), "log_level": 0})
    try:
        admin.list_topics(timeout=timeout_s)
    except Exception:
        return False
    return True


def redis_healthy(host: str, port: int, timeout_s: float = 2.0) -> bool:
    import redis

    client = redis.Redis(host=host, port=port, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def scrape(address: str, timeout_s: float = 5.0) -> dict[str, float] | None:
    """Prometheus text of http://address/metrics as {series: value}; None if unreachable."""
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{address}/metrics", timeout=timeout_s) as response:
            text = response.read().decode()
    except (OSError, ValueError, http.client.HTTPException):  # HTTPException: not an HTTP server
        return None
    series: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            series[name] = float(value)
    return series


# Series that do not add up across the stream job's processes: each process's own quantiles of its own rows.
_NOT_ADDITIVE = ("freshrank_stream_freshness_recent_seconds{",)


def scrape_all(addresses: list[str], timeout_s: float = 5.0) -> dict[str, float] | None:
    """The stream job's /metrics over all its processes (one per TaskManager); None if any is unreachable.

    Counters and gauges of counts add up. The freshness quantile gauges cannot be merged from
    per-process quantiles: the largest of them is reported, an upper bound of the job's quantile.
    """
    merged: dict[str, float] = {}
    for address in addresses:
        series = scrape(address, timeout_s)
        if series is None:
            return None
        for name, value in series.items():
            if name.startswith(_NOT_ADDITIVE):
                merged[name] = max(merged.get(name, value), value)
            else:
                merged[name] = merged.get(name, 0.0) + value
    return merged


def metrics_healthy(address: str | list[str]) -> bool:
    return scrape_all([address] if isinstance(address, str) else address) is not None


def stream_detail(addresses: str | list[str]) -> dict[str, float] | None:
    """What `freshrank status` shows of the stream job: freshness over the last minute, lag, events.

    `addresses`: every /metrics address of the job (one per TaskManager); counts are their sums.
    """
    series = scrape_all([addresses] if isinstance(addresses, str) else addresses)
    if series is None:
        return None
    return {
        "freshness_p50_ms": 1000 * series.get('freshrank_stream_freshness_recent_seconds{quantile="0.5"}', 0.0),
        "freshness_p99_ms": 1000 * series.get('freshrank_stream_freshness_recent_seconds{quantile="0.99"}', 0.0),
        "consumer_lag": sum(v for k, v in series.items() if k.startswith("freshrank_stream_consumer_lag{")),
        "events_admitted": series.get('freshrank_stream_events_total{outcome="admitted"}', 0.0),
        "rows_written": sum(v for k, v in series.items() if k.startswith("freshrank_stream_rows_written_total{")),
        "task_restarts": series.get("freshrank_stream_task_restarts_total", 0.0),
        "task_restarts_recent": series.get("freshrank_stream_task_restarts_recent", 0.0),
        "dlq_records": _total(series, "freshrank_stream_dlq_records_total{"),
        "dlq_write_failures": series.get("freshrank_stream_dlq_write_failures_total", 0.0),
        "sink_retries": _total(series, "freshrank_stream_sink_retries_total{"),
        "offset_resets": _total(series, "freshrank_stream_offset_resets_total{"),
        "reading_paused": sum(1.0 for k, v in series.items() if k.startswith("freshrank_stream_reading_paused{") and v),
    }


def _total(series: dict[str, float], prefix: str) -> float:
    return sum(v for k, v in series.items() if k.startswith(prefix))


def stream_problems(detail: dict[str, float] | None) -> list[str]:
    """Why a running stream job is not healthy (empty: healthy). A job in a restart loop still serves /metrics."""
    if detail is None:
        return ["metrics unreachable"]
    problems = []
    if detail["task_restarts_recent"]:
        problems.append(f"{detail['task_restarts_recent']:.0f} task restarts in the last 5 min")
    if detail["reading_paused"]:
        problems.append("reading paused (DLQ or online store refusing writes, or a layout change)")
    return problems


def flink_detail(dashboard: str) -> dict[str, Any]:
    """What `freshrank status` shows from the Flink REST API; `reachable` False and an `error` if it does not answer."""
    from streaming.errors import FlinkRestUnavailable
    from streaming.flink_rest import job_status

    try:
        job = job_status(dashboard)
    except FlinkRestUnavailable as error:
        return {"dashboard": dashboard, "reachable": False, "error": str(error)}
    return {"dashboard": dashboard, "reachable": True, **dataclasses.asdict(job)}


def flink_problems(flink: dict[str, Any] | None) -> list[str]:
    """A job the REST API shows in any state but RUNNING (restarting, failing) is not healthy.

    An unreachable REST API is shown, not counted: the features flow without it, and /metrics
    already says whether the operators run.
    """
    if flink is None or not flink["reachable"] or flink["state"] == "RUNNING":
        return []
    return [f"Flink job {flink['state']}"]


def http_healthy(address: str, path: str = "/healthz", timeout_s: float = 2.0) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{address}{path}", timeout=timeout_s) as response:
            return bool(response.status == 200)
    except (OSError, http.client.HTTPException):  # HTTPException: not an HTTP server
        return False


def component_health(name: str, address: str, dashboard: str | None = None, metrics: list[str] | None = None) -> bool:
    if name == "broker":
        return broker_healthy(address)
    if name == "redis":
        return redis_healthy(*split_address(address))
    if name == "stream":
        flink = flink_detail(dashboard) if dashboard else None
        return not stream_problems(stream_detail(metrics or address)) and not flink_problems(flink)
    if name == "serve":
        return http_healthy(address)
    return False
