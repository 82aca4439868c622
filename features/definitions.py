"""The feature contract: every online feature's name, type and exact meaning, and the constants behind them.

The Feast repo (`feature_repo/`) and the ranker's input layout are generated from
`USER_FEATURES` and `ITEM_FEATURES`, so a name here is a public, stable identifier:
rename nothing, only append. `UserFeatures.values()` / `ItemFeatures.values()` return
their keys in exactly this order.

Time semantics shared by every feature (see `features/windows.py` for the proof
sketches):

* `as_of` is always a parameter; nothing reads a clock. A query at an `as_of` earlier
  than the newest applied event is answered as of the newest applied event, so
  `values(t) == values(max(t, newest_event_ms))`.
* A sliding window of length W with bucket width b (b divides W, n = W / b buckets)
  counts, as of t = max(as_of, newest event), exactly the events whose bucket
  `floor(event_time_ms / b)` is greater than `floor(t / b) - n`; equivalently whose
  bucket start is greater than `floor(t / b) * b - W`. The oldest bucket leaves
  whole, so the window reaches back between W - b and W ms before t: b bounds the
  approximation to an exact W-millisecond window.
* State keeps only what some feature can still count at the newest event; an event
  older than that is ignored deterministically (see each structure's docstring).

This module must never do I/O or import an engine (pyflink, redis, kafka, onnx).
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Final, Literal

from features.events import EventType

FeatureDtype = Literal["int64", "float64", "string_list", "float_list"]
FeatureValue = int | float | list[str] | list[float]

SECOND_MS: Final = 1000
MINUTE_MS: Final = 60 * SECOND_MS
HOUR_MS: Final = 60 * MINUTE_MS
DAY_MS: Final = 24 * HOUR_MS


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    """One online feature: a stable snake_case name, its storage type and what it means exactly."""

    name: str
    dtype: FeatureDtype
    description: str


@dataclass(frozen=True, slots=True)
class WindowSpec:
    """A sliding window of `length_ms` made of `length_ms // bucket_ms` time buckets."""

    suffix: str
    length_ms: int
    bucket_ms: int

    def __post_init__(self) -> None:
        if self.bucket_ms <= 0 or self.length_ms <= 0 or self.length_ms % self.bucket_ms:
            raise ValueError(f"window {self.suffix}: bucket width must divide the length and be positive")

    @property
    def n_buckets(self) -> int:
        return self.length_ms // self.bucket_ms


def _human(ms: int) -> str:
    """10000 -> '10 s', 85500000 -> '23 h 45 min'."""
    parts = []
    for unit, size in (("h", HOUR_MS), ("min", MINUTE_MS), ("s", SECOND_MS), ("ms", 1)):
        if ms >= size:
            parts.append(f"{ms // size} {unit}")
            ms %= size
    return " ".join(parts) or "0 ms"


# Bucket widths bound the error of each window: the oldest bucket leaves whole, so a
# window covers between (length - bucket) and length of history.
USER_WINDOWS: Final = (
    WindowSpec("5m", 5 * MINUTE_MS, 10 * SECOND_MS),
    WindowSpec("1h", HOUR_MS, MINUTE_MS),
    WindowSpec("24h", DAY_MS, 15 * MINUTE_MS),
)
ITEM_WINDOWS: Final = (
    WindowSpec("1h", HOUR_MS, MINUTE_MS),
    WindowSpec("24h", DAY_MS, 15 * MINUTE_MS),
)

# The user's 24 h window also bounds the last-items list and sessions: an event that
# no longer counts in user_*_24h at the newest event is dropped from all three.
USER_RETENTION_WINDOW: Final = USER_WINDOWS[-1]

# A session is a run of events whose consecutive gaps are all < 30 min.
SESSION_GAP_MS: Final = 30 * MINUTE_MS
LAST_ITEMS_MAX: Final = 20

# Category affinity: hourly buckets over the 24 h up to the user's newest event,
# each weighted 2 ** (-age_hours / 6): a 6 h half-life. The weights are fixed
# point integers so every score is an exact integer and the ranking exact.
AFFINITY_WINDOW: Final = WindowSpec("24h", DAY_MS, HOUR_MS)
AFFINITY_HALF_LIFE_MS: Final = 6 * HOUR_MS
AFFINITY_DECAY: Final = tuple(
    round(2**20 * 2 ** (-age * AFFINITY_WINDOW.bucket_ms / AFFINITY_HALF_LIFE_MS))
    for age in range(AFFINITY_WINDOW.n_buckets)
)
AFFINITY_TOP_K: Final = 10
# Impressions and skips carry no interest signal and are left out.
AFFINITY_EVENT_WEIGHTS: Final = MappingProxyType(
    {EventType.CLICK: 1, EventType.VIEW: 1, EventType.LIKE: 2, EventType.SHARE: 3, EventType.COMPLETE: 2}
)

# Beta(alpha, beta) prior on an item's CTR: mean 5 %, worth 20 impressions.
CTR_PRIOR_ALPHA: Final = 1.0
CTR_PRIOR_BETA: Final = 19.0

# Trending velocity adds this many pseudo-events per hour to both sides of the ratio,
# so an item with little traffic sits near 1.0 instead of jumping on one event.
TRENDING_PSEUDO_EVENTS_PER_HOUR: Final = 1.0
# "Activity" for trending: impressions plus engagements; skips are not engagement.
TRENDING_EVENT_TYPES: Final = frozenset(t for t in EventType if t is not EventType.SKIP)

# Plural feature-name stem per event type, in EventType declaration order.
EVENT_TYPE_STEMS: Final = MappingProxyType(
    {
        EventType.IMPRESSION: "impressions",
        EventType.CLICK: "clicks",
        EventType.VIEW: "views",
        EventType.LIKE: "likes",
        EventType.SHARE: "shares",
        EventType.SKIP: "skips",
        EventType.COMPLETE: "completions",
    }
)


def _window_rule(w: WindowSpec) -> str:
    b, n = w.bucket_ms, w.n_buckets
    return (
        f"as of t = max(as_of, newest event), counts events with "
        f"floor(event_time_ms / {b}) > floor(t / {b}) - {n} "
        f"({_human(b)} buckets: the last {_human(w.length_ms - b)} to {_human(w.length_ms)})"
    )


def _user_features() -> tuple[FeatureSpec, ...]:
    specs: list[FeatureSpec] = []
    for w in USER_WINDOWS:
        rule = _window_rule(w)
        x = w.suffix
        for event_type, stem in EVENT_TYPE_STEMS.items():
            what = f"Number of '{event_type}' events of the user; {rule}."
            specs.append(FeatureSpec(f"user_{stem}_{x}", "int64", what))
        specs += [
            FeatureSpec(
                f"user_watch_seconds_{x}",
                "float64",
                f"Sum of watch_ms / 1000 over the user's events with a watch_ms (any type); {rule}.",
            ),
            FeatureSpec(
                f"user_ctr_{x}",
                "float64",
                f"user_clicks_{x} / user_impressions_{x}; 0.0 when there are no impressions. Not clamped: "
                "clicks whose impression was never logged can push it above 1.",
            ),
            FeatureSpec(
                f"user_completion_rate_{x}",
                "float64",
                f"user_completions_{x} / (user_views_{x} + user_completions_{x}); a watch ends as either a "
                "'view' (partial) or a 'complete'. 0.0 when both are zero.",
            ),
        ]
    age = f"H - floor(event_time_ms / {HOUR_MS})"
    decay = f"round(2 ** 20 * 2 ** (-({age}) / {AFFINITY_HALF_LIFE_MS // HOUR_MS}))"
    weights = ", ".join(f"{t}={v}" for t, v in AFFINITY_EVENT_WEIGHTS.items())
    specs += [
        FeatureSpec(
            "user_last_item_ids",
            "string_list",
            f"Up to {LAST_ITEMS_MAX} distinct item ids the user had any event with, newest first, each "
            "item ranked by its most recent (event_time_ms, event_id). Only events that count in "
            "user_*_24h at the user's newest event are considered; does not change with as_of.",
        ),
        FeatureSpec(
            "user_affinity_categories",
            "string_list",
            f"Top {AFFINITY_TOP_K} item categories by decayed affinity, highest first, ties by name. "
            "Affinity of category c = sum over the user's events on items of category c of "
            f"weight(event_type) * {decay}, where H is the hour bucket of the user's newest event "
            f"and only events with hour bucket > H - 24 count; weights {weights}, other types 0. "
            "Items without a catalog category are skipped. Does not change with as_of.",
        ),
        FeatureSpec(
            "user_affinity_scores",
            "float_list",
            "Affinity of each user_affinity_categories entry divided by the summed affinity of all "
            "the user's categories (a share in (0, 1]); same order and length as "
            "user_affinity_categories.",
        ),
        FeatureSpec(
            "user_session_events",
            "int64",
            "Events in the current session as of t = max(as_of, newest event): the longest run of "
            f"events ending at the newest one with every consecutive gap < {_human(SESSION_GAP_MS)}, "
            "among the events that count in user_*_24h as of t. 0 once t - newest event >= the gap "
            "(the session has ended).",
        ),
        FeatureSpec(
            "user_session_seconds",
            "float64",
            "(newest event time - first event time of the current session) / 1000; 0.0 when there "
            "is no current session (see user_session_events).",
        ),
        FeatureSpec(
            "user_seconds_since_last_event",
            "float64",
            "(max(as_of, newest event) - newest event time) / 1000; -1.0 when the user has no events. "
            "Changes continuously with as_of, so next_change_ms() does not schedule updates for it.",
        ),
    ]
    return tuple(specs)


def _item_features() -> tuple[FeatureSpec, ...]:
    specs: list[FeatureSpec] = []
    a, b = CTR_PRIOR_ALPHA, CTR_PRIOR_BETA
    for w in ITEM_WINDOWS:
        rule = _window_rule(w)
        x = w.suffix
        for event_type in (EventType.IMPRESSION, EventType.CLICK, EventType.COMPLETE):
            stem = EVENT_TYPE_STEMS[event_type]
            what = f"Number of '{event_type}' events on the item; {rule}."
            specs.append(FeatureSpec(f"item_{stem}_{x}", "int64", what))
        specs.append(
            FeatureSpec(
                f"item_smoothed_ctr_{x}",
                "float64",
                f"(item_clicks_{x} + {a}) / (item_impressions_{x} + {a} + {b}): the posterior mean CTR "
                f"under a Beta({a}, {b}) prior.",
            )
        )
    one_hour, one_day = (w.suffix for w in ITEM_WINDOWS)
    p = TRENDING_PSEUDO_EVENTS_PER_HOUR
    types = ", ".join(sorted(TRENDING_EVENT_TYPES))
    specs.append(
        FeatureSpec(
            "item_trending_velocity",
            "float64",
            f"(A_{one_hour} + {p}) / (A_{one_day} / 24 + {p}), where A_w counts the item's events of types "
            f"{types} (impressions plus engagements, not skips) in the item window w: the last hour's "
            "activity against the 24 h hourly average. 1.0 = steady, > 1 = rising.",
        )
    )
    return tuple(specs)


USER_FEATURES: Final = _user_features()
ITEM_FEATURES: Final = _item_features()
USER_FEATURE_NAMES: Final = tuple(s.name for s in USER_FEATURES)
ITEM_FEATURE_NAMES: Final = tuple(s.name for s in ITEM_FEATURES)
