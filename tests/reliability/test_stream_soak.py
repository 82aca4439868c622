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
from collections.abc import Callable
from pathlib import Path

from cli.stack import Component
from features.admission import EVICT_AFTER_MS
from features.events import EventType, InteractionEvent
from sdk.publisher import wall_clock_ms
from tests.integration.streamjob import StreamJob, encoded, produce_raw, wait_until
from tests.reliability.conftest import create_topic

USERS = int(os.environ.get("FRESHRANK_SOAK_USERS", "20000"))
SOAK_DAYS = 6
DAY_MS = 86_400_000


def checkpoint_bytes(checkpoints: Path) -> int:
    """Size of the newest completed checkpoint (its chk dir plus the shared files it may reference)."""
    newest = max(checkpoints.glob("*/chk-*/_metadata"), key=lambda p: p.stat().st_mtime, default=None)
    if newest is None:
        return 0
    return sum(f.stat().st_size for f in newest.parent.rglob("*") if f.is_file())


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
    events = []
    for user in range(USERS):
        t = start + (end - start) * user // USERS
        for k in range(2):
            events.append(InteractionEvent(f"e{user}-{k}", f"u{user}", f"i{user % 997}", EventType.VIEW, t + k, 1_000))
    job = start_job(topic)
    samples: list[dict[str, float]] = []
    chunk = max(1, len(events) // 6)
    for first in range(0, len(events), chunk):
        part = events[first : first + chunk]
        produce_raw(bootstrap, topic, list(encoded(part)), [e.event_time_ms for e in part])
        sent = first + len(part)
        wait_until(
            lambda sent=sent: job.metric('freshrank_stream_events_total{outcome="admitted"}') >= sent,
            300,
            "the chunk to be admitted",
        )
        assert job.process is not None
        samples.append(
            {
                "events": first + len(part),
                "event_days": (part[-1].event_time_ms - start) / DAY_MS,
                "users_in_state": job.metric('freshrank_stream_entities{view="user_stream_features"}'),
                "users_evicted": job.metric('freshrank_stream_entities_evicted_total{view="user_stream_features"}'),
                "checkpoint_bytes": checkpoint_bytes(tmp_path / "checkpoints"),
                "rss_bytes": rss_bytes(job.process.pid),
            }
        )
    # Users still held: those within EVICT_AFTER_MS of the newest, plus one eviction round of slack.
    recent = USERS * EVICT_AFTER_MS / (SOAK_DAYS * DAY_MS)
    wait_until(
        lambda: job.metric('freshrank_stream_entities{view="user_stream_features"}') <= 1.1 * recent + 100,
        120,
        f"users in state to fall to about {recent:.0f}",
    )
    final_checkpoint = checkpoint_bytes(tmp_path / "checkpoints")
    report = os.environ.get("FRESHRANK_SOAK_REPORT")
    if report:
        Path(report).write_text(json.dumps({"users": USERS, "days": SOAK_DAYS, "samples": samples}, indent=2))
    assert job.metric('freshrank_stream_entities_evicted_total{view="user_stream_features"}') >= USERS - 1.1 * recent
    # The checkpoint holds the recent users only: no bigger than at the half-way sample.
    halfway = samples[len(samples) // 2]["checkpoint_bytes"]
    assert 0 < final_checkpoint <= 1.5 * halfway, (final_checkpoint, samples)
    assert job.metric("freshrank_stream_task_restarts_total") == 0
