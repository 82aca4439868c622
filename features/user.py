"""Per-user feature state: windowed counts and rates, last items, category affinity, sessions.

`UserFeatures` is the aggregator the stream job keeps (as bytes) in keyed state and
the training replay runs over the event log, so online and offline features are the
same code. Exact semantics of every output are in `features.definitions.USER_FEATURES`.

Guarantees the stream job relies on:

* Order independence: every part of the state is a function of the *set* of applied
  events (integer bucket sums, max/min, a top-N by (event_time_ms, event_id), session
  runs rebuilt from per-bucket first/last times), so applying any permutation of the
  same events gives the same `values()` and byte-identical `to_bytes()`.
* Bounded state: windows keep at most n buckets each, the last-items list at most
  `LAST_ITEMS_MAX` entries, affinity at most 24 hourly buckets of the user's
  categories. An event that no structure can still count at the newest event
  (bucket older than the 24 h window of the newest event) changes nothing.
* `apply` assumes unique event ids (the job and `replay_user` deduplicate): applying
  the same event twice counts it twice. It takes validated events; a negative
  watch_ms is treated as missing rather than raised on.
* Serialised state (`to_bytes`) starts with a format version byte and a kind byte;
  `from_bytes` raises `StateFormatError` for anything it cannot read.

Never does I/O and never reads a clock: `as_of_ms` is always a parameter.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from features.definitions import (
    AFFINITY_DECAY,
    AFFINITY_EVENT_WEIGHTS,
    AFFINITY_TOP_K,
    AFFINITY_WINDOW,
    LAST_ITEMS_MAX,
    SESSION_GAP_MS,
    USER_FEATURE_NAMES,
    USER_RETENTION_WINDOW,
    USER_WINDOWS,
    FeatureValue,
)
from features.events import EventType, InteractionEvent, point_in_time
from features.windows import (
    KeyedWindowCounter,
    SlidingWindowCounter,
    StateReader,
    StateWriter,
)

FORMAT_VERSION = 1
_KIND = b"U"

# Bucket fields: one count per event type (EventType declaration order), watch_ms, all events.
_TYPE_FIELD = {event_type: index for index, event_type in enumerate(EventType)}
_N_TYPES = len(_TYPE_FIELD)
_WATCH_FIELD = _N_TYPES
_EVENTS_FIELD = _N_TYPES + 1
_WIDTH = _N_TYPES + 2
_IMPRESSION, _CLICK, _VIEW, _COMPLETE = (
    _TYPE_FIELD[t] for t in (EventType.IMPRESSION, EventType.CLICK, EventType.VIEW, EventType.COMPLETE)
)
_COUNT_ONLY = {event_type: ((field, 1), (_EVENTS_FIELD, 1)) for event_type, field in _TYPE_FIELD.items()}

_RETENTION_INDEX = USER_WINDOWS.index(USER_RETENTION_WINDOW)
_RETENTION_B = USER_RETENTION_WINDOW.bucket_ms
_RETENTION_N = USER_RETENTION_WINDOW.n_buckets


def _score_order(entry: tuple[str, int]) -> tuple[int, str]:
    return (-entry[1], entry[0])


class UserFeatures:
    """Mutable per-user state; see the module docstring for its guarantees."""

    __slots__ = ("_newest", "_windows", "_recent", "_affinity")

    def __init__(
        self,
        newest: int | None,
        windows: tuple[SlidingWindowCounter, ...],
        recent: list[tuple[int, str, str]],
        affinity: KeyedWindowCounter,
    ) -> None:
        self._newest = newest
        self._windows = windows
        # (event_time_ms, event_id, item_id), one entry per item, newest first.
        self._recent = recent
        self._affinity = affinity

    @classmethod
    def empty(cls) -> UserFeatures:
        windows = tuple(
            SlidingWindowCounter(spec, _WIDTH, track_extent=index == _RETENTION_INDEX)
            for index, spec in enumerate(USER_WINDOWS)
        )
        return cls(None, windows, [], KeyedWindowCounter(AFFINITY_WINDOW))

    @property
    def newest_event_ms(self) -> int | None:
        """Event time of the newest applied event, None if none was applied."""
        return self._newest

    def apply(self, event: InteractionEvent, category: str | None) -> None:
        """Fold one event in; `category` is the item's catalog category (None or "" if unknown)."""
        t = event.event_time_ms
        event_type = event.event_type
        watch = event.watch_ms
        if watch is not None and watch > 0:  # validated events never have a negative watch_ms
            field = _TYPE_FIELD[event_type]
            deltas: tuple[tuple[int, int], ...] = ((field, 1), (_EVENTS_FIELD, 1), (_WATCH_FIELD, watch))
        else:
            deltas = _COUNT_ONLY[event_type]
        retained = False
        for index, window in enumerate(self._windows):
            accepted = window.add(t, deltas)
            if index == _RETENTION_INDEX:
                retained = accepted
        if not retained:
            return  # older than anything the state still needs: changes nothing
        if self._newest is None or t > self._newest:
            self._newest = t
        self._remember_item(t, event.event_id, event.item_id)
        weight = AFFINITY_EVENT_WEIGHTS.get(event_type) if category else None
        if weight and category:
            self._affinity.add(t, category, weight)
        else:
            self._affinity.advance(t)  # affinity is anchored at the newest event of any kind

    def _remember_item(self, t: int, event_id: str, item_id: str) -> None:
        recent = self._recent
        retention_head = self._windows[_RETENTION_INDEX].head
        assert retention_head is not None
        cutoff = retention_head - _RETENTION_N  # entries in buckets <= cutoff no longer count
        while recent and recent[-1][0] // _RETENTION_B <= cutoff:
            recent.pop()
        key = (t, event_id)
        for index, (seen_t, seen_id, seen_item) in enumerate(recent):
            if seen_item == item_id:
                if key > (seen_t, seen_id):
                    recent[index] = (t, event_id, item_id)
                    recent.sort(reverse=True)
                return
        if len(recent) < LAST_ITEMS_MAX:
            recent.append((t, event_id, item_id))
            recent.sort(reverse=True)
        elif key > recent[-1][:2]:
            recent[-1] = (t, event_id, item_id)
            recent.sort(reverse=True)

    def _affinity_top(self) -> tuple[list[str], list[float]]:
        # Exact integer scores: the ranking and the shares do not depend on apply order.
        categories, scores = self._affinity.decayed_sums(AFFINITY_DECAY)
        total = sum(scores)
        top = sorted(zip(categories, scores, strict=True), key=_score_order)[:AFFINITY_TOP_K]
        return [category for category, _ in top], [score / total for _, score in top]

    def values(self, as_of_ms: int) -> dict[str, FeatureValue]:
        """Every user feature as of `as_of_ms`, keyed and ordered as `USER_FEATURES`."""
        newest = self._newest
        t = as_of_ms if newest is None or as_of_ms > newest else newest
        out: list[FeatureValue] = []
        for window in self._windows:
            c = window.totals(t)
            out += c[:_N_TYPES]
            impressions, completes = c[_IMPRESSION], c[_COMPLETE]
            watches = c[_VIEW] + completes
            out += (
                c[_WATCH_FIELD] / 1000,
                c[_CLICK] / impressions if impressions else 0.0,
                completes / watches if watches else 0.0,
            )
        categories, scores = self._affinity_top()
        if newest is None or t - newest >= SESSION_GAP_MS:
            session_events, session_seconds = 0, 0.0
        else:
            retention = self._windows[_RETENTION_INDEX]
            session_events, start = retention.run_at_head(t, SESSION_GAP_MS, _EVENTS_FIELD)
            session_seconds = (newest - start) / 1000
        out += (
            [item for _, _, item in self._recent],
            categories,
            scores,
            session_events,
            session_seconds,
            (t - newest) / 1000 if newest is not None else -1.0,
        )
        return dict(zip(USER_FEATURE_NAMES, out, strict=True))

    def next_change_ms(self, as_of_ms: int) -> int | None:
        """The next time > as_of_ms at which `values()` changes without new events (a bucket leaving a
        window, the session ending), None if nothing is left to expire. user_seconds_since_last_event
        changes continuously and is deliberately not scheduled."""
        newest = self._newest
        if newest is None:
            return None
        t = as_of_ms if as_of_ms > newest else newest
        best: int | None = newest + SESSION_GAP_MS if t < newest + SESSION_GAP_MS else None
        for window in self._windows:
            when = window.next_change_ms(t)
            if when is not None and (best is None or when < best):
                best = when
        return best

    def to_bytes(self) -> bytes:
        """Compact, canonical serialisation: equal states give equal bytes."""
        out = StateWriter()
        if self._newest is None:
            out.put(0)
        else:
            out.put(1, self._newest)
        for window in self._windows:
            window.encode(out)
        out.put(len(self._recent))
        out.put_ints([t for t, _, _ in self._recent])
        out.put_strings([text for _, event_id, item_id in self._recent for text in (event_id, item_id)])
        self._affinity.encode(out)
        return out.to_bytes(FORMAT_VERSION, _KIND)

    @classmethod
    def from_bytes(cls, data: bytes) -> UserFeatures:
        reader = StateReader(data, FORMAT_VERSION, _KIND)
        has_newest = reader.take()
        newest = reader.take() if has_newest else None
        windows = tuple(
            SlidingWindowCounter.decode(spec, _WIDTH, reader, track_extent=index == _RETENTION_INDEX)
            for index, spec in enumerate(USER_WINDOWS)
        )
        n_recent = reader.take()
        times = reader.take_ints(n_recent)
        texts = reader.take_strings(2 * n_recent)
        recent = [(t, texts[2 * p], texts[2 * p + 1]) for p, t in enumerate(times)]
        affinity = KeyedWindowCounter.decode(AFFINITY_WINDOW, reader)
        reader.done()
        return cls(newest, windows, recent, affinity)


def replay_user(
    events: Iterable[InteractionEvent], categories: Mapping[str, str], as_of_ms: int
) -> dict[str, FeatureValue]:
    """The user's features as of `as_of_ms` from an event log: what the stream job would emit.

    Deduplicates by event_id (first occurrence wins, as the job's dedup does), skips
    events after `as_of_ms` (point-in-time correctness for training), applies the rest
    in the given order and returns `values(as_of_ms)`. All events must share one user_id.
    """
    state = UserFeatures.empty()
    for event in point_in_time(events, as_of_ms, lambda e: e.user_id, "users"):
        state.apply(event, categories.get(event.item_id))
    return state.values(as_of_ms)
