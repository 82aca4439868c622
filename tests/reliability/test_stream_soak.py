"""Soak: many distinct users over days of event time; state, checkpoints and memory must level off.

Events are fast-forwarded: each record's timestamp is its event time, spread over
`SOAK_DAYS` days up to now, so the partitions' ingest clocks cross several days in
a minute. A user whose newest event falls more than `EVICT_AFTER_MS` behind its
partition's clock leaves state, so the job ends holding only the last ~2 days of
users whatever the total. `make test-reliability` runs a larger soak
(FRESHRANK_SOAK_USERS) and writes its figures (FRESHRANK_SOAK_REPORT) as JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from features.admission import EVICT_AFTER_MS
from features.events import EventType, InteractionEvent
from sdk.clock import wall_clock_ms
from stack.processes import Component
from tests.integration.streamjob import StreamJob, encoded, produce_raw, wait_until
from tests.reliability.conftest import create_topic

USERS = int(os.environ.get("FRESHRANK_SOAK_USERS", "20000"))
SOAK_DAYS = 12
CHUNKS = 6
DAY_MS = 86_400_000
USERS_VIEW = 'freshrank_stream_entities{view="user_stream_features"}'
EVICTED = 'freshrank_stream_entities_evicted_total{view="user_stream_features"}'


def newest_checkpoint(checkpoints: Path) -> Path | None:
    return max(checkpoints.glob("*/chk-*/_metadata"), key=lambda p: p.stat().st_mtime, default=None)


def checkpoint_bytes(metadata: Path) -> int:
    """Size of a completed checkpoint of the hashmap backend (its chk dir holds the full state)."""
    return sum(f.stat().st_size for f in metadata.parent.rglob("*") if f.is_file())


def rss_bytes(pid: int) -> int:
    """Resident memory of a process and its children (the Flink JVM runs the Python operators)."""
    out = subprocess.run(["ps", "-o", "rss=", "--ppid", str(pid), "-p", str(pid)], capture_output=True, text=True)
    return 1024 * sum(int(line) for line in out.stdout.split())


def test_distinct_users_over_days_of_event_time_leave_state(
    start_job: Callable[..., StreamJob], bootstrap: str, redis_server: Component, tmp_path: Path
) -> None:
    topic = create_topic(bootstrap, 4)
    end = wall_clock_ms() - 60_000
    start = end - SOAK_DAYS * DAY_MS
    per_day = USERS / SOAK_DAYS
    events = []
    for user in range(USERS):
        t = start + (end - start) * user // USERS
        for k in range(2):
            events.append(InteractionEvent(f"e{user}-{k}", f"u{user}", f"i{user % 997}", EventType.VIEW, t + k, 1_000))
    job = start_job(topic)
    assert job.process is not None
    checkpoints = tmp_path / "checkpoints"
    samples: list[dict[str, float]] = []
    chunk = len(events) // CHUNKS
    for first in range(0, chunk * CHUNKS, chunk):
        part = events[first : first + chunk]
        produce_raw(bootstrap, topic, list(encoded(part)), [e.event_time_ms for e in part])
        sent = first + len(part)
        wait_until(
            lambda sent=sent: job.metric('freshrank_stream_events_total{outcome="admitted"}') >= sent,
            300,
            "the chunk to be admitted",
        )
        day = (part[-1].event_time_ms - start) / DAY_MS
        # Users still held: those within EVICT_AFTER_MS of the newest, plus slack for one eviction round.
        bound = min(day, EVICT_AFTER_MS / DAY_MS) * per_day * 1.1 + 100
        wait_until(lambda bound=bound: job.metric(USERS_VIEW) <= bound, 120, f"users in state <= {bound:.0f}")
        evicted_at = time.time()
        wait_until(
            lambda at=evicted_at: (c := newest_checkpoint(checkpoints)) is not None and c.stat().st_mtime > at,
            60,
            "a checkpoint after the eviction",
        )
        metadata = newest_checkpoint(checkpoints)
        assert metadata is not None
        samples.append(
            {
                "events": sent,
                "event_days": round(day, 2),
                "users_seen": sent / 2,
                "users_in_state": job.metric(USERS_VIEW),
                "users_evicted": job.metric(EVICTED),
                "checkpoint_bytes": checkpoint_bytes(metadata),
                "rss_bytes": rss_bytes(job.process.pid),
            }
        )
    report = os.environ.get("FRESHRANK_SOAK_REPORT")
    if report:
        Path(report).write_text(json.dumps({"users": USERS, "days": SOAK_DAYS, "samples": samples}, indent=2))
    # Level: once the event clock is past the eviction horizon (day 4 on), state stops growing.
    steady = [s for s in samples if s["event_days"] >= 4]
    sizes = [s["checkpoint_bytes"] for s in steady]
    assert max(sizes) <= 1.3 * min(sizes), samples
    assert samples[-1]["users_evicted"] >= USERS - 1.1 * per_day * EVICT_AFTER_MS / DAY_MS - 100, samples
    assert job.metric("freshrank_stream_task_restarts_total") == 0
