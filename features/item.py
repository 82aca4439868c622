"""Per-item feature state: windowed impressions, clicks and completions, smoothed CTR, trending velocity.

`ItemFeatures` is the aggregator the stream job keeps (as bytes) per item and the
training replay runs over the event log. Exact semantics of every output are in
`features.definitions.ITEM_FEATURES`.

The state is two bucketed windows (see `features/windows.py`) of integer sums plus
the newest event time, so it is a function of the set of applied events (order
independent, byte-identical `to_bytes()`), holds at most n buckets per window, and an
event whose bucket already left a window at the newest event is ignored by that window.
`apply` assumes unique event ids (the job and `replay_item` deduplicate).

Never does I/O and never reads a clock: `as_of_ms` is always a parameter.
"""

from __future__ import annotations

from collections.abc import Iterable

from features.definitions import (
    CTR_PRIOR_ALPHA,
    CTR_PRIOR_BETA,
    ITEM_FEATURE_NAMES,
    ITEM_WINDOWS,
    TRENDING_EVENT_TYPES,
    TRENDING_PSEUDO_EVENTS_PER_HOUR,
    FeatureValue,
)
from features.events import EventType, InteractionEvent, point_in_time
from features.windows import SlidingWindowCounter, StateReader, StateWriter

FORMAT_VERSION = 1
_KIND = b"I"

_IMPRESSIONS, _CLICKS, _COMPLETIONS, _ACTIVITY = range(4)
_WIDTH = 4
_FIELDS = {EventType.IMPRESSION: _IMPRESSIONS, EventType.CLICK: _CLICKS, EventType.COMPLETE: _COMPLETIONS}


def _deltas(event_type: EventType) -> tuple[tuple[int, int], ...]:
    deltas = [(_FIELDS[event_type], 1)] if event_type in _FIELDS else []
    if event_type in TRENDING_EVENT_TYPES:
        deltas.append((_ACTIVITY, 1))
    return tuple(deltas)


_DELTAS = {event_type: _deltas(event_type) for event_type in EventType}
_SHORT, _LONG = ITEM_WINDOWS
# The long window's hourly average is A_long / (its length in hours).
_LONG_HOURS = _LONG.length_ms / 3_600_000
_PRIOR = TRENDING_PSEUDO_EVENTS_PER_HOUR


class ItemFeatures:
    """Mutable per-item state; see the module docstring for its guarantees."""

    __slots__ = ("_newest", "_windows")

    def __init__(self, newest: int | None, windows: tuple[SlidingWindowCounter, ...]) -> None:
        self._newest = newest
        self._windows = windows

    @classmethod
    def empty(cls) -> ItemFeatures:
        return cls(None, tuple(SlidingWindowCounter(spec, _WIDTH) for spec in ITEM_WINDOWS))

    @property
    def newest_event_ms(self) -> int | None:
        """Event time of the newest applied event (of any type), None if none was applied."""
        return self._newest

    def apply(self, event: InteractionEvent) -> None:
        t = event.event_time_ms
        if self._newest is None or t > self._newest:
            self._newest = t
        deltas = _DELTAS[event.event_type]
        if deltas:
            for window in self._windows:
                window.add(t, deltas)

    def values(self, as_of_ms: int) -> dict[str, FeatureValue]:
        """Every item feature as of `as_of_ms` (answered as of the newest event if that is later),
        keyed and ordered as `ITEM_FEATURES`."""
        newest = self._newest
        t = as_of_ms if newest is None or as_of_ms > newest else newest
        out: list[FeatureValue] = []
        activity: list[int] = []
        for window in self._windows:
            c = window.totals(t)
            out += (
                c[_IMPRESSIONS],
                c[_CLICKS],
                c[_COMPLETIONS],
                (c[_CLICKS] + CTR_PRIOR_ALPHA) / (c[_IMPRESSIONS] + CTR_PRIOR_ALPHA + CTR_PRIOR_BETA),
            )
            activity.append(c[_ACTIVITY])
        short, long = activity
        out.append((short + _PRIOR) / (long / _LONG_HOURS + _PRIOR))
        return dict(zip(ITEM_FEATURE_NAMES, out, strict=True))

    def next_change_ms(self, as_of_ms: int) -> int | None:
        """The next time > as_of_ms at which `values()` changes without new events (a bucket leaving
        a window), None if nothing is left to expire."""
        newest = self._newest
        if newest is None:
            return None
        t = as_of_ms if as_of_ms > newest else newest
        changes = [when for window in self._windows if (when := window.next_change_ms(t)) is not None]
        return min(changes) if changes else None

    def to_bytes(self) -> bytes:
        """Compact, canonical serialisation: equal states give equal bytes."""
        out = StateWriter()
        if self._newest is None:
            out.put(0)
        else:
            out.put(1, self._newest)
        for window in self._windows:
            window.encode(out)
        return out.to_bytes(FORMAT_VERSION, _KIND)

    @classmethod
    def from_bytes(cls, data: bytes) -> ItemFeatures:
        reader = StateReader(data, FORMAT_VERSION, _KIND)
        has_newest = reader.take()
        newest = reader.take() if has_newest else None
        windows = tuple(SlidingWindowCounter.decode(spec, _WIDTH, reader) for spec in ITEM_WINDOWS)
        reader.done()
        return cls(newest, windows)


def replay_item(events: Iterable[InteractionEvent], as_of_ms: int) -> dict[str, FeatureValue]:
    """The item's features as of `as_of_ms` from an event log: what the stream job would emit.

    Deduplicates by event_id (first occurrence wins), skips events after `as_of_ms`
    (point-in-time correctness), applies the rest and returns `values(as_of_ms)`.
    All events must share one item_id.
    """
    state = ItemFeatures.empty()
    for event in point_in_time(events, as_of_ms, lambda e: e.item_id, "items"):
        state.apply(event)
    return state.values(as_of_ms)
