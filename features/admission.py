"""Per-user admission of events into the features: deduplication by event_id and the lateness bound.

Why per user: the topic is keyed by user_id, so one user's events sit in one
partition in a fixed order. Deciding "duplicate" and "late" against that
user's own history therefore gives the same answer in the stream job, after
a crash and replay, and in the training replay — whatever the interleaving of
partitions. A global watermark over a multi-partition reader would not.

Rule, applied to a user's events in log order, each with its ingest time
(the Kafka record's timestamp: deterministic given the log, so a restored job
and the training replay decide alike; None where a log has no ingest times):
- clock skew: an event_time more than `max_skew_ms` ahead of its ingest time
  is clamped to ingest + max_skew_ms before anything else (`clamp_to_ingest`),
  so one event from a client whose clock runs an hour ahead cannot move the
  user's watermark (and window heads) into the future and make the user's
  next present-time events late;
- `late` if event_time_ms < newest admitted event_time_ms - lateness_ms;
- `late` also if event_time_ms < ingest time - STALE_MS: no window can count
  it as of its ingest time, and this rule is what lets an idle user leave
  state (`evictable`) without changing any later answer;
- else `duplicate` if an admitted event with the same event_id is remembered;
- else `admitted`.
Only ids of admitted events within the lateness bound of the newest are
remembered; an older duplicate is necessarily late, so the state stays small
and no duplicate is ever counted twice. Late events are counted, sent to the
DLQ with reason `late`, and left out of every feature.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import itertools
import struct
from collections.abc import Iterable, Iterator
from enum import StrEnum

from features.definitions import DAY_MS, USER_RETENTION_WINDOW
from features.events import InteractionEvent

MAX_INGEST_SKEW_MS = 60_000
"""Default allowance of event time ahead of ingest time (client clocks run a little fast)."""
STALE_MS = DAY_MS + USER_RETENTION_WINDOW.bucket_ms
"""An event older than its ingest time by more than this counts in no window (the longest is 24 h): late."""

_FORMAT = 1
_HEADER = struct.Struct(">BqI")
_ENTRY = struct.Struct(">qH")


def _entry(event_id: str, event_time_ms: int) -> bytes:
    """One remembered id as `AdmissionGate.to_bytes` lays it out: event time, id length, utf-8 id."""
    encoded = event_id.encode()
    return _ENTRY.pack(event_time_ms, len(encoded)) + encoded


def _encode_entries(seen: dict[str, int]) -> bytes:
    """The remembered ids as `AdmissionGate.to_bytes` lays them out after its header, in insertion order."""
    return b"".join([_entry(event_id, event_time_ms) for event_id, event_time_ms in seen.items()])


class Admission(StrEnum):
    ADMITTED = "admitted"
    DUPLICATE = "duplicate"
    LATE = "late"


class AdmissionGate:
    """One user's dedup memory and lateness watermark."""

    __slots__ = ("lateness_ms", "newest_ms", "_seen", "_encoded")

    def __init__(self, lateness_ms: int, newest_ms: int | None = None, seen: dict[str, int] | None = None) -> None:
        self.lateness_ms = lateness_ms
        self.newest_ms = newest_ms
        self._seen: dict[str, int] = seen if seen is not None else {}
        # The entries of `_seen` as `to_bytes` writes them, in the same order, kept as ids are added: the
        # job saves a gate on every poll that changes it, and re-encoding a few hundred ids each time cost
        # a few percent of the job's interpreter (py-spy --gil, README "The interpreter's share").
        self._encoded = bytearray(_encode_entries(self._seen))

    def admit(self, event: InteractionEvent, ingest_ms: int | None = None) -> Admission:
        """Decide one event (already clamped by `clamp_to_ingest`); `ingest_ms` is its record timestamp."""
        newest = self.newest_ms
        if newest is not None and event.event_time_ms < newest - self.lateness_ms:
            return Admission.LATE
        if ingest_ms is not None and event.event_time_ms < ingest_ms - STALE_MS:
            return Admission.LATE
        if event.event_id in self._seen:
            return Admission.DUPLICATE
        self._seen[event.event_id] = event.event_time_ms
        self._encoded += _entry(event.event_id, event.event_time_ms)
        if newest is None or event.event_time_ms > newest:
            self.newest_ms = event.event_time_ms
            self._forget_before(event.event_time_ms - self.lateness_ms)
        return Admission.ADMITTED

    def _forget_before(self, cutoff_ms: int) -> None:
        # Ids arrive roughly in time order, so the first remembered one is about the oldest:
        # rebuilding only when it has expired keeps admit() amortised O(1). Remembering an
        # expired id a little longer changes no answer (its duplicates are late anyway).
        if next(iter(self._seen.values())) < cutoff_ms:
            self._seen = {eid: t for eid, t in self._seen.items() if t >= cutoff_ms}
            self._encoded = bytearray(_encode_entries(self._seen))

    def __len__(self) -> int:
        return len(self._seen)

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(_FORMAT, self.newest_ms if self.newest_ms is not None else -1, len(self._seen))
        return header + self._encoded

    @classmethod
    def from_bytes(cls, data: bytes, lateness_ms: int) -> AdmissionGate:
        version, newest, count = _HEADER.unpack_from(data)
        if version != _FORMAT:
            raise ValueError(f"admission state format {version} is not {_FORMAT}")
        offset = _HEADER.size
        seen: dict[str, int] = {}
        for _ in range(count):
            event_time_ms, length = _ENTRY.unpack_from(data, offset)
            offset += _ENTRY.size
            seen[data[offset : offset + length].decode()] = event_time_ms
            offset += length
        return cls(lateness_ms, None if newest == -1 else newest, seen)

    def evictable(self, partition_clock_ms: int) -> bool:
        """True when forgetting this gate changes no later decision (see `EVICT_AFTER_MS`)."""
        return self.newest_ms is None or partition_clock_ms - self.newest_ms > EVICT_AFTER_MS


EVICT_AFTER_MS = 2 * STALE_MS + 300_000
"""An entity whose newest event is this far behind its partition's clock may leave state.

Why this is exact: a later record of the entity has an ingest time I >= clock - D,
where D (record timestamps out of order within a partition) is assumed below
5 min; an event it carries is admitted only if t >= I - STALE_MS, so
t > newest + STALE_MS: newer than anything the forgotten gate remembers (no
duplicate or late answer changes) and beyond every window of the forgotten
aggregate (the longest is 24 h), which therefore adds nothing to any value.
"""


def clamp_to_ingest(event: InteractionEvent, ingest_ms: int | None, max_skew_ms: int) -> InteractionEvent:
    """The event with its event_time clamped to `ingest_ms + max_skew_ms` (unchanged if within or unknown)."""
    if ingest_ms is None or event.event_time_ms <= ingest_ms + max_skew_ms:
        return event
    return dataclasses.replace(event, event_time_ms=ingest_ms + max_skew_ms)


def at_ingest(event: InteractionEvent, ingest_ms: int | None, max_skew_ms: int) -> InteractionEvent | None:
    """The event as admission sees it at its ingest time: clamped, or None if stale (late for any user state).

    Used where a log is replayed record by record (training's topic replay); the
    stream job applies the same two rules through `clamp_to_ingest` and `admit`.
    """
    event = clamp_to_ingest(event, ingest_ms, max_skew_ms)
    if ingest_ms is not None and event.event_time_ms < ingest_ms - STALE_MS:
        return None
    return event


def admitted_events(
    events_in_log_order: Iterable[InteractionEvent],
    lateness_ms: int,
    ingest_times: Iterable[int | None] | None = None,
    max_skew_ms: int = MAX_INGEST_SKEW_MS,
) -> Iterator[InteractionEvent]:
    """The events the stream job lets into the features (clamped as it clamps), given each user's log order.

    `ingest_times` are the records' timestamps, in the same order; without them (a parquet
    log, the synthetic world) events are taken as ingested at their own event time.
    """
    gates: dict[str, AdmissionGate] = {}
    times: Iterator[int | None] = iter(ingest_times) if ingest_times is not None else itertools.repeat(None)
    for event in events_in_log_order:
        ingest_ms = next(times)
        event = clamp_to_ingest(event, ingest_ms, max_skew_ms)
        gate = gates.setdefault(event.user_id, AdmissionGate(lateness_ms))
        if gate.admit(event, ingest_ms) is Admission.ADMITTED:
            yield event
