"""Per-user admission of events into the features: deduplication by event_id and the lateness bound.

Why per user: the topic is keyed by user_id, so one user's events sit in one
partition in a fixed order. Deciding "duplicate" and "late" against that
user's own history therefore gives the same answer in the stream job, after
a crash and replay, and in the training replay — whatever the interleaving of
partitions. A global watermark over a multi-partition reader would not.

Rule, applied to a user's events in log order:
- `late` if event_time_ms < newest admitted event_time_ms - lateness_ms;
- else `duplicate` if an admitted event with the same event_id is remembered;
- else `admitted`.
Only ids of admitted events within the lateness bound of the newest are
remembered; an older duplicate is necessarily late, so the state stays small
and no duplicate is ever counted twice. Late events are counted, sent to the
DLQ with reason `late`, and left out of every feature.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from enum import StrEnum

from features.events import InteractionEvent

_FORMAT = 1
_HEADER = struct.Struct(">BqI")
_ENTRY = struct.Struct(">qH")


class Admission(StrEnum):
    ADMITTED = "admitted"
    DUPLICATE = "duplicate"
    LATE = "late"


class AdmissionGate:
    """One user's dedup memory and lateness watermark."""

    __slots__ = ("lateness_ms", "newest_ms", "_seen")

    def __init__(self, lateness_ms: int, newest_ms: int | None = None, seen: dict[str, int] | None = None) -> None:
        self.lateness_ms = lateness_ms
        self.newest_ms = newest_ms
        self._seen: dict[str, int] = seen if seen is not None else {}

    def admit(self, event: InteractionEvent) -> Admission:
        newest = self.newest_ms
        if newest is not None and event.event_time_ms < newest - self.lateness_ms:
            return Admission.LATE
        if event.event_id in self._seen:
            return Admission.DUPLICATE
        self._seen[event.event_id] = event.event_time_ms
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

    def __len__(self) -> int:
        return len(self._seen)

    def to_bytes(self) -> bytes:
        parts = [_HEADER.pack(_FORMAT, self.newest_ms if self.newest_ms is not None else -1, len(self._seen))]
        for event_id, event_time_ms in self._seen.items():
            encoded = event_id.encode()
            parts.append(_ENTRY.pack(event_time_ms, len(encoded)))
            parts.append(encoded)
        return b"".join(parts)

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


def admitted_events(events_in_log_order: Iterable[InteractionEvent], lateness_ms: int) -> Iterator[InteractionEvent]:
    """The events the stream job lets into the features, given each user's events in log order."""
    gates: dict[str, AdmissionGate] = {}
    for event in events_in_log_order:
        gate = gates.setdefault(event.user_id, AdmissionGate(lateness_ms))
        if gate.admit(event) is Admission.ADMITTED:
            yield event
