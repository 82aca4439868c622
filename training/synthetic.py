"""A synthetic feed world whose engagement probabilities are known.

Users with drifting category interests are shown ranked slates drawn from a
catalog that keeps growing; what they do with each shown item is drawn from
probabilities this module computes and records, so a ranker trained on the
event log can be compared with the oracle ranking.

The model, per impression of item i to user u at position p (all terms on the
logit scale unless said otherwise):

- examination: ``p_examine = (1 + p) ** -EXAMINATION_DECAY`` (position bias).
- affinity ``a = log(C * theta_u[c_i]) + country_tilt[c_i] + drift_u[c_i]``:
  a long-term preference ``theta_u`` (mostly a few categories), a per-country
  tilt, and a short-term drift that resets to a random session mood when a
  session starts, decays and wanders with every slate, and moves towards the
  categories the user just clicked and watched.
- freshness ``f = exp(-age / FRESHNESS_TAU_MS)``, quality ``q`` (creator plus item).
- ``relevance = P(click | examined)
  = sigmoid(CLICK_BIAS + CLICK_AFFINITY*a + CLICK_QUALITY*q + CLICK_FRESHNESS*f)``
- after a click the user watches: completes with ``sigmoid(w - 1 - 0.6*log(duration/25 s))``,
  else watches the fraction ``U ** exp(-w)`` of the item (U uniform), with
  ``w = WATCH_BIAS + WATCH_AFFINITY*a + WATCH_QUALITY*q + WATCH_FRESHNESS*f + device bias``.
- engaged watch = a complete, or a view with ``watch_ms >= ENGAGED_WATCH_FRACTION * duration_ms``.
- likes and shares follow engaged watches only; a skip follows an examined,
  not clicked impression with probability SKIP_GIVEN_PASSED.

The feed that produces the slates mixes popular items (decayed click counts),
items from categories the user currently likes, uniform random items and one
fresh item, ordered by a noisy popularity score: a learned ranker has signal to
beat popularity with, and position and popularity are confounded as in a real
log.

Timing: a slate's impressions at request time + 5 ms per position; clicks
0.3-5 s and skips 0.2-4 s after the impression; view and complete when the
watch ends (click + watch_ms), likes and shares during the watch. Outcomes
that would fall after the span are not emitted (their impressions keep their
ground truth), and the span starts cold: nothing follows from slates before
start_ms. Sessions: users hold one of a fixed number of session slots, ask for
about SESSION_MEAN_REQUESTS slates, then rest for minutes (less when the
traffic needs more users than are rested).

The simulation is pure: no I/O, no wall clock and no global random state; the
same config gives the same events byte for byte (with the same numpy, whose
Generator streams are only stable within a version). Only `write_catalog`,
`write_ground_truth` and the readers touch files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from features.events import (
    MAX_ID_LENGTH,
    MAX_POSITION,
    MAX_TAG_LENGTH,
    MIN_EVENT_TIME_MS,
    EventType,
    InteractionEvent,
)

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ObjectArray = npt.NDArray[np.object_]

# The simulation advances in steps of at most this much event time (a tenth of
# the span if that is shorter); state that would change with every request in
# reality (interest drift, popularity) is updated once per step.
CHUNK_MS = 1000

EXAMINATION_DECAY = 0.7
ENGAGED_WATCH_FRACTION = 0.5
SKIP_GIVEN_PASSED = 0.7

CLICK_BIAS = -2.2
CLICK_AFFINITY = 0.9
CLICK_QUALITY = 0.6
CLICK_FRESHNESS = 0.8
WATCH_BIAS = -1.8
WATCH_AFFINITY = 0.5
WATCH_QUALITY = 0.9
WATCH_FRESHNESS = 0.3
COMPLETE_OFFSET = -1.0
COMPLETE_DURATION = 0.6
REFERENCE_DURATION_MS = 25_000
LIKE_BIAS, LIKE_AFFINITY, LIKE_QUALITY = -3.0, 0.5, 0.8
SHARE_BIAS, SHARE_AFFINITY, SHARE_QUALITY = -4.5, 0.3, 0.9
FRESHNESS_TAU_MS = 6 * 3600 * 1000

# Interest drift, in affinity units.
MOOD_SD = 0.6
DRIFT_DECAY = 0.85
DRIFT_SD = 0.2
CLICK_BOOST = 0.15
ENGAGED_BOOST = 0.15
# Drift stays within +-DRIFT_LIMIT so a run of clicks cannot lock a user into one category.
DRIFT_LIMIT = 1.5

# Sessions: a user asks for several slates in a row, then rests for minutes.
SESSION_MEAN_REQUESTS = 8
SESSION_PACE_S = 20.0
SESSION_GAP_MIN_MS = 60_000
SESSION_GAP_MEAN_MS = 240_000
_PICK_TRIES = 8

# Outcome timing relative to the impression (click, skip) or the click (the rest).
IMPRESSION_SPACING_MS = 5
CLICK_DELAY_MIN_MS = 300
CLICK_DELAY_MEAN_MS = 1200
CLICK_DELAY_MAX_MS = 5000
SKIP_DELAY_MIN_MS = 200
SKIP_DELAY_MEAN_MS = 1000
SKIP_DELAY_MAX_MS = 4000

# Catalog.
MIN_DURATION_MS = 5_000
MAX_DURATION_MS = 180_000
INITIAL_CATALOG_SPAN_MS = 3 * 24 * 3600 * 1000
ITEMS_PER_CREATOR = 8
POPULAR_POOL = 50
POPULARITY_TAU_MS = 6 * 3600 * 1000
FRESH_WINDOW_MS = 3600 * 1000

# Events per impression, a first guess for the rate controller; it learns the
# real figure from the first step on.
_EVENTS_PER_IMPRESSION_GUESS = 1.4
_MAX_BURST = 4.0
_CLICKS_PER_EVENT_GUESS = 0.06
_DELAY_SAMPLE = 4096

# Codes of event kinds; the order also breaks ties between events of one impression.
_KINDS: tuple[EventType, ...] = (
    EventType.IMPRESSION,
    EventType.CLICK,
    EventType.SKIP,
    EventType.LIKE,
    EventType.SHARE,
    EventType.VIEW,
    EventType.COMPLETE,
)
_IMPRESSION, _CLICK, _SKIP, _LIKE, _SHARE, _VIEW, _COMPLETE = range(len(_KINDS))


@dataclass(frozen=True, kw_only=True)
class WorldConfig:
    """What world to simulate and for how long; the same config always gives the same events."""

    start_ms: int
    """Event time of the start of the span (epoch ms); required because the world never reads a clock."""
    users: int = 1000
    items: int = 500
    """Items in the catalog at start_ms; more arrive during the span."""
    categories: int = 12
    seed: int = 0
    rate: float = 1000.0
    """Events per second of event time, all event types together (met within a few percent)."""
    seconds: float = 10.0
    """Length of the span: events have start_ms <= event_time_ms < start_ms + seconds * 1000."""
    new_items_per_minute: float = 10.0
    slate_size: int = 10
    countries: tuple[str, ...] = ("US", "IN", "BR", "GB", "DE")
    """ISO 3166-1 codes; the k-th (from 0) is chosen with weight 1 / (k + 1)."""
    devices: tuple[str, ...] = ("android", "ios", "web")
    """Device tags; the k-th (from 0) is chosen with weight 1 / (k + 1)."""
    record_ground_truth: bool = True
    """Keep one ImpressionTruth per impression; turn off for long streams to save memory."""

    def __post_init__(self) -> None:
        if self.start_ms < MIN_EVENT_TIME_MS:
            raise ValueError(f"start_ms {self.start_ms} is before 2020-01-01; events would be rejected")
        for name in ("users", "items", "categories"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if not 1 <= self.slate_size <= MAX_POSITION + 1:
            raise ValueError(f"slate_size must be in 1..{MAX_POSITION + 1}")
        if not self.rate > 0 or not math.isfinite(self.rate):
            raise ValueError("rate must be a positive number of events per second")
        if not self.seconds > 0 or not math.isfinite(self.seconds):
            raise ValueError("seconds must be positive")
        if self.new_items_per_minute < 0:
            raise ValueError("new_items_per_minute must not be negative")
        iso_codes = all(len(c) == 2 and c.isascii() and c.isupper() for c in self.countries)
        if not self.countries or not iso_codes:
            raise ValueError("countries must be a non-empty tuple of ISO 3166-1 alpha-2 codes like 'US'")
        if not self.devices or any(not 1 <= len(d) <= MAX_TAG_LENGTH for d in self.devices):
            raise ValueError(f"devices must be a non-empty tuple of 1..{MAX_TAG_LENGTH} character tags")

    @property
    def end_ms(self) -> int:
        """First event time after the span (exclusive bound)."""
        return self.start_ms + math.ceil(self.seconds * 1000)


@dataclass(frozen=True, slots=True)
class CatalogItem:
    item_id: str
    category: str
    creator_id: str
    quality: float
    """Item quality on the logit scale (creator quality plus item noise), mean 0."""
    created_ms: int
    duration_ms: int


@dataclass(frozen=True, slots=True)
class ImpressionTruth:
    """The probabilities behind one impression event (same event_id), as the world drew them."""

    event_id: str
    request_id: str
    user_id: str
    item_id: str
    position: int
    event_time_ms: int
    p_examine: float
    """Probability that the user looked at this position (position bias only)."""
    p_click: float
    """P(click | impression) = p_examine * relevance."""
    p_engaged: float
    """P(engaged watch | impression): a complete, or watch_ms >= ENGAGED_WATCH_FRACTION * duration_ms."""
    relevance: float
    """P(click | examined): no position bias; sort by it for the oracle click ranking."""
    engaged_relevance: float
    """P(engaged watch | examined): no position bias; the oracle ranking for engagement."""


_TRUTH_FIELDS: tuple[tuple[str, Any], ...] = (
    ("event_id", pa.string()),
    ("request_id", pa.string()),
    ("user_id", pa.string()),
    ("item_id", pa.string()),
    ("position", pa.int32()),
    ("event_time_ms", pa.int64()),
    ("p_examine", pa.float64()),
    ("p_click", pa.float64()),
    ("p_engaged", pa.float64()),
    ("relevance", pa.float64()),
    ("engaged_relevance", pa.float64()),
)
TRUTH_SCHEMA = pa.schema(list(_TRUTH_FIELDS))
CATALOG_SCHEMA = pa.schema(
    [
        ("item_id", pa.string()),
        ("category", pa.string()),
        ("creator_id", pa.string()),
        ("quality", pa.float64()),
        ("created_ms", pa.int64()),
        ("duration_ms", pa.int64()),
    ]
)


def _sigmoid(z: FloatArray) -> FloatArray:
    out: FloatArray = 1.0 / (1.0 + np.exp(-z))
    return out


def _rank_weights(n: int) -> FloatArray:
    weights: FloatArray = 1.0 / np.arange(1, n + 1, dtype=np.float64)
    return weights / float(weights.sum())


def _uuids(rng: np.random.Generator, n: int) -> ObjectArray:
    """Version-4-shaped UUID strings from the seeded generator (uuid4() would break determinism)."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hex_digits = np.frombuffer(raw.tobytes().hex().encode("ascii"), dtype=np.uint8).reshape(n, 32)
    dash = np.full((n, 1), ord("-"), dtype=np.uint8)
    spelled = np.concatenate(
        [
            hex_digits[:, :8],
            dash,
            hex_digits[:, 8:12],
            dash,
            hex_digits[:, 12:16],
            dash,
            hex_digits[:, 16:20],
            dash,
            hex_digits[:, 20:],
        ],
        axis=1,
    )
    # Vectorised spelling is twice as fast as formatting each id in Python.
    out: ObjectArray = spelled.view("S36").ravel().astype("U36").astype(object)
    return out


def _capped_exponential(rng: np.random.Generator, shape: tuple[int, ...], low: int, mean: int, high: int) -> IntArray:
    delay = low + np.minimum(rng.exponential(mean, shape), high - low - 1)
    return delay.astype(np.int64)


class SyntheticWorld:
    """Users, a growing catalog and a simulated feed; `events()` plays the span out."""

    def __init__(self, config: WorldConfig) -> None:
        self.config = config
        seeds = np.random.SeedSequence(config.seed).spawn(3)
        self._seed_simulation, self._seed_ids = seeds[1], seeds[2]
        rng = np.random.default_rng(seeds[0])
        c = config.categories
        start, end = config.start_ms, config.end_ms

        category_weights = rng.dirichlet(np.full(c, 2.0))
        n_creators = max(1, config.items // ITEMS_PER_CREATOR)
        creator_category = rng.choice(c, size=n_creators, p=category_weights)
        creator_quality = rng.normal(0.0, 0.7, n_creators)

        n_new = int(rng.poisson(config.new_items_per_minute * config.seconds / 60.0))
        n_items = config.items + n_new
        initial_created = start - rng.integers(1, INITIAL_CATALOG_SPAN_MS, config.items)
        new_created = rng.integers(start, end, n_new)
        # Items are numbered in creation order, so the items that exist at time t are a prefix.
        self._item_created: IntArray = np.sort(np.concatenate([initial_created, new_created])).astype(np.int64)
        creator = rng.integers(0, n_creators, n_items)
        own_category = rng.random(n_items) < 0.7
        self._item_category: IntArray = np.where(
            own_category, creator_category[creator], rng.choice(c, size=n_items, p=category_weights)
        ).astype(np.int64)
        self._item_quality: FloatArray = creator_quality[creator] + rng.normal(0.0, 0.7, n_items)
        self._item_duration: IntArray = np.clip(
            rng.lognormal(math.log(REFERENCE_DURATION_MS), 0.6, n_items), MIN_DURATION_MS, MAX_DURATION_MS
        ).astype(np.int64)
        # Popularity is a decayed click count; seed it near its steady state for the
        # configured traffic so the popular pool starts settled instead of being
        # taken over by whatever gets the first clicks.
        age_days = (start - self._item_created) / 86_400_000
        exposure = np.clip(age_days / 2, 0, 1)
        weight = np.exp(0.8 * self._item_quality + rng.normal(0.0, 0.7, n_items)) * exposure
        weight = np.where(self._item_created < start, weight, 0.0)
        steady_clicks = config.rate * _CLICKS_PER_EVENT_GUESS * POPULARITY_TAU_MS / 1000
        self._initial_popularity: FloatArray = steady_clicks * weight / max(float(weight.sum()), 1e-12)
        self._item_creator = creator
        width = max(6, len(str(n_items)))
        self._item_ids = [f"item-{i:0{width}d}" for i in range(n_items)]
        self._creator_ids = [f"creator-{i:0{width}d}" for i in range(n_creators)]
        self._category_names = [f"cat-{k:02d}" for k in range(c)]
        # Items grouped by category (then creation order), for "an item of category k that exists at t".
        self._by_category: IntArray = np.lexsort((np.arange(n_items), self._item_category)).astype(np.int64)
        self._by_category_key: IntArray = self._item_category[self._by_category] * n_items + self._by_category

        u = config.users
        theta = 0.75 * rng.dirichlet(np.full(c, 0.3), u) + 0.25 / c
        user_country = rng.choice(len(config.countries), size=u, p=_rank_weights(len(config.countries)))
        user_device = rng.choice(len(config.devices), size=u, p=_rank_weights(len(config.devices)))
        country_tilt = rng.normal(0.0, 0.3, (len(config.countries), c))
        self._affinity: FloatArray = np.log(c * theta) + country_tilt[user_country]
        self._device_watch_bias: FloatArray = rng.normal(0.0, 0.2, len(config.devices))[user_device]
        activity = rng.lognormal(0.0, 1.0, u)
        cdf = np.cumsum(activity / activity.sum())
        cdf[-1] = 1.0
        self._activity = activity / activity.sum()
        self._activity_cdf: FloatArray = cdf
        uwidth = max(6, len(str(u)))
        self._user_ids = [f"user-{i:0{uwidth}d}" for i in range(u)]
        self._user_country = [config.countries[k] for k in user_country.tolist()]
        self._user_device = [config.devices[k] for k in user_device.tolist()]
        if max(len(self._item_ids[-1]), len(self._user_ids[-1])) > MAX_ID_LENGTH:
            raise ValueError("too many users or items for the id format")

        self._truth_chunks: list[dict[str, Any]] = []
        self._truth_cache: list[ImpressionTruth] | None = None

    def catalog(self) -> list[CatalogItem]:
        """Every item that exists by the end of the span, in creation order."""
        created = self._item_created.tolist()
        category = self._item_category.tolist()
        creator = self._item_creator.tolist()
        quality = self._item_quality.tolist()
        duration = self._item_duration.tolist()
        return [
            CatalogItem(
                item_id=self._item_ids[i],
                category=self._category_names[category[i]],
                creator_id=self._creator_ids[creator[i]],
                quality=quality[i],
                created_ms=created[i],
                duration_ms=duration[i],
            )
            for i in range(len(created))
        ]

    def events(self) -> Iterator[InteractionEvent]:
        """Yield the span's events in non-decreasing event time, lazily.

        Each call replays the world from the start (same events again) and
        restarts the ground truth, which holds a record for every impression
        yielded so far (and possibly a few generated just ahead of them).
        """
        self._truth_chunks = []
        self._truth_cache = None
        run = _Run(self)
        user_ids, item_ids = self._user_ids, self._item_ids
        devices, countries = self._user_device, self._user_country
        kinds = _KINDS
        for batch in run.batches():
            for event_id, user, item, kind, time, watch, request_id, position in zip(
                batch.event_id.tolist(),
                batch.user.tolist(),
                batch.item.tolist(),
                batch.kind.tolist(),
                batch.time.tolist(),
                batch.watch.tolist(),
                batch.request_id.tolist(),
                batch.position.tolist(),
                strict=True,
            ):
                yield InteractionEvent(
                    event_id,
                    user_ids[user],
                    item_ids[item],
                    kinds[kind],
                    time,
                    None if watch < 0 else watch,
                    request_id,
                    position,
                    None,
                    devices[user],
                    countries[user],
                )

    @property
    def ground_truth(self) -> list[ImpressionTruth]:
        """One record per impression generated so far by the latest `events()` run."""
        if self._truth_cache is None:
            table = self.ground_truth_table()
            self._truth_cache = [ImpressionTruth(**row) for row in table.to_pylist()]
        return self._truth_cache

    def ground_truth_table(self) -> Any:
        """The ground truth as a pyarrow Table (TRUTH_SCHEMA), without building a Python object per row."""
        columns: dict[str, Any] = {}
        for name, _ in _TRUTH_FIELDS:
            parts = [chunk[name] for chunk in self._truth_chunks]
            columns[name] = np.concatenate(parts) if parts else []
        if self._truth_chunks:
            # Chunks hold indices; spell the ids once for the whole table.
            columns["user_id"] = np.asarray(self._user_ids, dtype=object)[columns["user_id"]]
            columns["item_id"] = np.asarray(self._item_ids, dtype=object)[columns["item_id"]]
        return pa.table(columns, schema=TRUTH_SCHEMA)

    def _record_truth(self, chunk: dict[str, Any]) -> None:
        if self.config.record_ground_truth:
            self._truth_chunks.append(chunk)
            self._truth_cache = None


@dataclass(slots=True)
class _EventBatch:
    """Columns of generated, not yet yielded events."""

    time: IntArray
    seq: IntArray
    kind: IntArray
    user: IntArray
    item: IntArray
    position: IntArray
    watch: IntArray
    request_id: ObjectArray
    event_id: ObjectArray

    def take(self, index: IntArray | slice) -> _EventBatch:
        return _EventBatch(
            self.time[index],
            self.seq[index],
            self.kind[index],
            self.user[index],
            self.item[index],
            self.position[index],
            self.watch[index],
            self.request_id[index],
            self.event_id[index],
        )

    @staticmethod
    def concat(batches: list[_EventBatch]) -> _EventBatch:
        return _EventBatch(
            np.concatenate([b.time for b in batches]),
            np.concatenate([b.seq for b in batches]),
            np.concatenate([b.kind for b in batches]),
            np.concatenate([b.user for b in batches]),
            np.concatenate([b.item for b in batches]),
            np.concatenate([b.position for b in batches]),
            np.concatenate([b.watch for b in batches]),
            np.concatenate([b.request_id for b in batches]),
            np.concatenate([b.event_id for b in batches]),
        )

    def __len__(self) -> int:
        return len(self.time)


class _Run:
    """The mutable state of one play-through: sessions, interest drift, popularity, pending events."""

    def __init__(self, world: SyntheticWorld) -> None:
        self.world = world
        cfg = world.config
        self.cfg = cfg
        self.rng = np.random.default_rng(world._seed_simulation)
        self.id_rng = np.random.default_rng(world._seed_ids)
        self.drift: FloatArray = np.zeros((cfg.users, cfg.categories))
        self.popularity: FloatArray = world._initial_popularity.copy()
        # Events per request before truncation at the end of the span, and a sample of
        # request-to-event delays; both from the latest step (first step: a guess).
        self.events_per_request = _EVENTS_PER_IMPRESSION_GUESS * cfg.slate_size
        self.delays: FloatArray | None = None
        nominal_requests_per_s = cfg.rate / self.events_per_request
        self.slots = int(min(max(1, round(nominal_requests_per_s * SESSION_PACE_S)), max(1, cfg.users // 2)))
        first = self.rng.choice(cfg.users, size=self.slots, replace=False, p=world._activity)
        self.slot_user: list[int] = first.tolist()
        self.active: BoolArray = np.zeros(cfg.users, dtype=bool)
        self.active[first] = True
        self.available_at: IntArray = np.full(cfg.users, cfg.start_ms - 1, dtype=np.int64)
        self.drift[first] = self.rng.normal(0.0, MOOD_SD, (self.slots, cfg.categories))
        self.next_request = 0
        self.generated = 0
        self.pending: _EventBatch | None = None
        s = cfg.slate_size
        self.examine: FloatArray = (1.0 + np.arange(s, dtype=np.float64)) ** -EXAMINATION_DECAY
        self.n_popular = round(0.4 * s)
        self.n_relevant = round(0.3 * s)
        self.n_random = s - self.n_popular - self.n_relevant

    def batches(self) -> Iterator[_EventBatch]:
        """Event batches in time order, one per step; all events of a step come before the next one."""
        cfg = self.cfg
        # Short spans get shorter steps, so the rate controller has a few steps to learn in.
        step_ms = min(CHUNK_MS, max(1, (cfg.end_ms - cfg.start_ms) // 10))
        t0 = cfg.start_ms
        while t0 < cfg.end_ms:
            t1 = min(t0 + step_ms, cfg.end_ms)
            # Aim the running total of kept events at rate * elapsed; outcomes still
            # in the future count already, so the total lands on target.
            target = cfg.rate * (t1 - cfg.start_ms) / 1000.0
            per_request = self._kept_per_request(t0, t1)
            nominal = cfg.rate * (t1 - t0) / 1000.0 / per_request
            wanted = round((target - self.generated) / per_request)
            n = int(min(max(wanted, 0), math.ceil(_MAX_BURST * nominal) + 1))
            new = self._step(t0, t1, n) if n else None
            if new is not None:
                self.generated += len(new)
            parts = [b for b in (self.pending, new) if b is not None and len(b)]
            if parts:
                merged = _EventBatch.concat(parts)
                merged = merged.take(np.lexsort((merged.seq, merged.time)))
                cut = int(np.searchsorted(merged.time, t1, side="left"))
                self.pending = merged.take(slice(cut, None))
                if cut:
                    yield merged.take(slice(0, cut))
            t0 = t1

    def _kept_per_request(self, t0: int, t1: int) -> float:
        """Expected events a request made in [t0, t1) adds before the end of the span.

        Uses the delays (request to event) of the previous step, so outcomes that would
        land after the end are not counted: that keeps the total on target even when
        the span is short compared with watch times.
        """
        if self.delays is None:
            return self.events_per_request
        survive = np.clip((self.cfg.end_ms - t0 - self.delays) / (t1 - t0), 0.0, 1.0)
        return max(self.events_per_request * float(survive.mean()), 1.0)

    def _assign_users(self, times: IntArray) -> IntArray:
        """Hand each request to a session slot; a slot whose session ends gets a new user."""
        rng, cfg, world = self.rng, self.cfg, self.world
        n = len(times)
        slots = rng.integers(0, self.slots, n).tolist()
        ends = (rng.random(n) < 1.0 / SESSION_MEAN_REQUESTS).tolist()
        n_end = sum(ends)
        rests = SESSION_GAP_MIN_MS + rng.exponential(SESSION_GAP_MEAN_MS - SESSION_GAP_MIN_MS, n_end)
        gaps = rests.astype(np.int64).tolist()
        candidates = np.searchsorted(world._activity_cdf, rng.random((n_end, _PICK_TRIES)), side="right")
        candidates = np.minimum(candidates, cfg.users - 1).tolist()
        moods = rng.normal(0.0, MOOD_SD, (n_end, cfg.categories))
        users = [0] * n
        slot_user, active, available_at = self.slot_user, self.active, self.available_at
        ended = 0
        time_list = times.tolist()
        for j in range(n):
            slot = slots[j]
            user = slot_user[slot]
            users[j] = user
            if not ends[j]:
                continue
            now = time_list[j]
            active[user] = False
            available_at[user] = now + gaps[ended]
            chosen = -1
            for candidate in candidates[ended]:
                if not active[candidate] and available_at[candidate] <= now:
                    chosen = candidate
                    break
            if chosen < 0:
                # Everybody likely is resting: the one who has rested longest comes back early.
                chosen = int(np.argmin(np.where(active, np.iinfo(np.int64).max, available_at)))
            active[chosen] = True
            slot_user[slot] = chosen
            self.drift[chosen] = moods[ended]
            ended += 1
        return np.asarray(users, dtype=np.int64)

    def _popular_pool(self, t0: int) -> IntArray:
        existing = int(np.searchsorted(self.world._item_created, t0, side="right"))
        size = min(POPULAR_POOL, existing)
        top = np.argpartition(-self.popularity[:existing], size - 1)[:size]
        return top[np.argsort(-self.popularity[top], kind="stable")].astype(np.int64)

    def _in_category(self, categories: IntArray, existing: IntArray) -> IntArray:
        """A uniformly random existing item of each given category (a random item if it has none)."""
        world, rng = self.world, self.rng
        n_items = len(world._item_created)
        keys = world._by_category_key
        first = np.searchsorted(keys, categories * n_items)
        count = np.searchsorted(keys, categories * n_items + existing) - first
        offset = first + (rng.random(categories.shape) * count).astype(np.int64)
        fallback = rng.integers(0, existing, categories.shape)
        safe = np.where(count > 0, offset, 0)
        return np.where(count > 0, world._by_category[safe], fallback).astype(np.int64)

    def _slates(self, times: IntArray, affinity: FloatArray, t0: int) -> IntArray:
        """Item indices, (requests, slate_size), in the order the simulated feed shows them."""
        rng, world = self.rng, self.world
        n, s = len(times), self.cfg.slate_size
        created = world._item_created
        existing = np.searchsorted(created, times, side="right").astype(np.int64)[:, None]
        parts: list[IntArray] = []
        if self.n_popular:
            pool = self._popular_pool(t0)
            pick = (len(pool) * rng.random((n, self.n_popular)) ** 2).astype(np.int64)
            parts.append(pool[pick])
        if self.n_relevant:
            gumbel = rng.gumbel(size=(n, self.n_relevant, self.cfg.categories))
            categories = np.argmax(affinity[:, None, :] + gumbel, axis=2).astype(np.int64)
            parts.append(self._in_category(categories, existing))
        n_uniform = self.n_random
        if self.n_random >= 2:
            # One exploration slot for items created within the last hour.
            n_uniform -= 1
            fresh_from = np.searchsorted(created, times - FRESH_WINDOW_MS).astype(np.int64)[:, None]
            fresh = fresh_from + (rng.random((n, 1)) * (existing - fresh_from)).astype(np.int64)
            parts.append(np.where(existing > fresh_from, fresh, rng.integers(0, existing, (n, 1))))
        if n_uniform:
            parts.append(rng.integers(0, existing, (n, n_uniform)))
        slate = np.concatenate(parts, axis=1).astype(np.int64)
        for _ in range(8):
            order = np.argsort(slate, axis=1, kind="stable")
            ordered = np.take_along_axis(slate, order, axis=1)
            repeated = np.zeros(ordered.shape, dtype=bool)
            repeated[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
            if not repeated.any():
                break
            duplicate = np.zeros(slate.shape, dtype=bool)
            np.put_along_axis(duplicate, order, repeated, axis=1)
            rows = np.nonzero(duplicate)[0]
            slate[duplicate] = rng.integers(0, existing[rows, 0])
        # The logging policy: popular first, with plenty of noise.
        score = 0.6 * np.log1p(self.popularity[slate]) + rng.gumbel(size=(n, s))
        return np.take_along_axis(slate, np.argsort(-score, axis=1, kind="stable"), axis=1)

    def _step(self, t0: int, t1: int, n: int) -> _EventBatch:
        """Generate n requests in [t0, t1) with everything that follows from them."""
        rng, cfg, world = self.rng, self.cfg, self.world
        s, end = cfg.slate_size, cfg.end_ms
        times = np.sort(rng.integers(t0, t1, n)).astype(np.int64)
        users = self._assign_users(times)
        affinity = world._affinity[users] + self.drift[users]
        slate = self._slates(times, affinity, t0)
        request_ids = _uuids(self.id_rng, n)

        category = world._item_category[slate]
        a = np.take_along_axis(affinity, category, axis=1)
        q = world._item_quality[slate]
        duration = world._item_duration[slate]
        fresh = np.exp(-(times[:, None] - world._item_created[slate]) / FRESHNESS_TAU_MS)
        relevance = _sigmoid(CLICK_BIAS + CLICK_AFFINITY * a + CLICK_QUALITY * q + CLICK_FRESHNESS * fresh)
        w = (
            WATCH_BIAS
            + WATCH_AFFINITY * a
            + WATCH_QUALITY * q
            + WATCH_FRESHNESS * fresh
            + world._device_watch_bias[users][:, None]
        )
        length = np.log(duration / REFERENCE_DURATION_MS)
        p_complete = _sigmoid(w + COMPLETE_OFFSET - COMPLETE_DURATION * length)
        # Watched fraction U ** exp(-w): P(fraction >= h) = 1 - h ** exp(w).
        p_long = 1.0 - ENGAGED_WATCH_FRACTION ** np.exp(w)
        engaged_relevance = relevance * (p_complete + (1.0 - p_complete) * p_long)
        p_like = _sigmoid(LIKE_BIAS + LIKE_AFFINITY * a + LIKE_QUALITY * q)
        p_share = _sigmoid(SHARE_BIAS + SHARE_AFFINITY * a + SHARE_QUALITY * q)

        u = rng.random((9, n, s))
        examined = u[0] < self.examine
        clicked = examined & (u[1] < relevance)
        completed = clicked & (u[2] < p_complete)
        fraction = np.where(completed, 1.0, np.minimum(u[3] ** np.exp(-w), 0.99))
        watch = np.where(completed, duration, np.floor(fraction * duration)).astype(np.int64)
        engaged = completed | (clicked & (watch >= ENGAGED_WATCH_FRACTION * duration))
        liked = engaged & (u[4] < p_like)
        shared = engaged & (u[5] < p_share)
        skipped = examined & ~clicked & (u[6] < SKIP_GIVEN_PASSED)

        shown = times[:, None] + IMPRESSION_SPACING_MS * np.arange(s, dtype=np.int64)
        click_delay = _capped_exponential(rng, (n, s), CLICK_DELAY_MIN_MS, CLICK_DELAY_MEAN_MS, CLICK_DELAY_MAX_MS)
        skip_delay = _capped_exponential(rng, (n, s), SKIP_DELAY_MIN_MS, SKIP_DELAY_MEAN_MS, SKIP_DELAY_MAX_MS)
        click_at = shown + click_delay
        skip_at = shown + skip_delay
        view_at = click_at + watch
        like_at = click_at + np.floor(u[7] * watch).astype(np.int64)
        share_at = click_at + np.floor(u[8] * watch).astype(np.int64)

        none = np.full((n, s), -1, dtype=np.int64)
        kinds: list[tuple[int, BoolArray, IntArray, IntArray]] = [
            (_IMPRESSION, np.ones((n, s), dtype=bool), shown, none),
            (_CLICK, clicked, click_at, none),
            (_SKIP, skipped, skip_at, none),
            (_LIKE, liked, like_at, none),
            (_SHARE, shared, share_at, none),
            (_VIEW, clicked, view_at, watch),
            (_COMPLETE, completed, view_at, watch),
        ]
        serial = self.next_request + np.arange(n, dtype=np.int64)
        self.next_request += n
        parts: list[_EventBatch] = []
        delays = np.concatenate([(at - times[:, None])[happened] for _, happened, at, _ in kinds])
        self.events_per_request = len(delays) / n
        self.delays = delays[:: max(1, len(delays) // _DELAY_SAMPLE)].astype(np.float64)
        for code, happened, at, watched in kinds:
            rows, positions = np.nonzero(happened & (at < end))
            rows, positions = rows.astype(np.int64), positions.astype(np.int64)
            parts.append(
                _EventBatch(
                    time=at[rows, positions],
                    seq=(serial[rows] * s + positions) * len(_KINDS) + code,
                    kind=np.full(len(rows), code, dtype=np.int64),
                    user=users[rows],
                    item=slate[rows, positions],
                    position=positions,
                    watch=watched[rows, positions],
                    request_id=request_ids[rows],
                    event_id=np.empty(0, dtype=object),
                )
            )
        batch = _EventBatch.concat(parts)
        batch.event_id = _uuids(self.id_rng, len(batch))

        # Impressions come first in the batch, in the same row-major order as here.
        rows, positions = (x.astype(np.int64) for x in np.nonzero(shown < end))
        n_shown = len(rows)
        examine = self.examine[positions]
        world._record_truth(
            {
                "event_id": batch.event_id[:n_shown],
                "request_id": request_ids[rows],
                "user_id": users[rows],
                "item_id": slate[rows, positions],
                "position": positions,
                "event_time_ms": shown[rows, positions],
                "p_examine": examine,
                "p_click": examine * relevance[rows, positions],
                "p_engaged": examine * engaged_relevance[rows, positions],
                "relevance": relevance[rows, positions],
                "engaged_relevance": engaged_relevance[rows, positions],
            }
        )

        # Feedback into the world: clicked items get popular, interests follow clicks.
        self.popularity *= math.exp(-(t1 - t0) / POPULARITY_TAU_MS)
        self.popularity += np.bincount(slate[clicked], minlength=len(self.popularity))
        self.drift[users] = self.drift[users] * DRIFT_DECAY + rng.normal(0.0, DRIFT_SD, (n, cfg.categories))
        click_rows, click_positions = np.nonzero(clicked)
        np.add.at(
            self.drift,
            (users[click_rows], category[click_rows, click_positions]),
            CLICK_BOOST + ENGAGED_BOOST * engaged[click_rows, click_positions],
        )
        self.drift[users] = np.clip(self.drift[users], -DRIFT_LIMIT, DRIFT_LIMIT)
        return batch


def _write(table: Any, path: Path) -> None:
    """Write parquet atomically: a temporary file in the same directory, then rename.

    The stream job and the feed API reload the catalog when it changes; they must
    never see a half-written file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        pq.write_table(table, partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_catalog(items: Iterable[CatalogItem], path: Path) -> None:
    """Write the catalog as parquet (CATALOG_SCHEMA)."""
    rows = list(items)
    columns = {name: [getattr(item, name) for item in rows] for name in CATALOG_SCHEMA.names}
    _write(pa.table(columns, schema=CATALOG_SCHEMA), path)


def write_ground_truth(truths: Iterable[ImpressionTruth], path: Path) -> None:
    """Write impression ground truth as parquet (TRUTH_SCHEMA)."""
    rows = list(truths)
    columns = {name: [getattr(truth, name) for truth in rows] for name in TRUTH_SCHEMA.names}
    _write(pa.table(columns, schema=TRUTH_SCHEMA), path)


def read_catalog(path: Path) -> list[CatalogItem]:
    table = pq.read_table(path, schema=CATALOG_SCHEMA)
    return [CatalogItem(**row) for row in table.to_pylist()]


def read_ground_truth(path: Path) -> list[ImpressionTruth]:
    table = pq.read_table(path, schema=TRUTH_SCHEMA)
    return [ImpressionTruth(**row) for row in table.to_pylist()]
