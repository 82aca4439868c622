"""One play-through of a world: sessions, the feed's slates, what users do with them, and the feedback.

The simulation advances in steps of event time. Each step makes the number of
requests the rate controller asks for and plays them out in named stages:
`_requests` (who asks, what the feed shows), `_chances` (the probabilities of
`simulator.behaviour`), `_outcomes` (what happened), `_timing` (when), `_events`
(the event batch and its ids), `_record_truth` and `_feed_back` (popularity and
interest drift). The stages draw from the run's two Generators in a fixed order,
so the same config gives the same events.

Outcomes that would fall after the span are not emitted (their impressions keep
their ground truth), and the span starts cold: nothing follows from slates
before start_ms.

Who asks is `simulator.sessions`' business, what they are shown `simulator.feed`'s.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from features.events import EventType
from simulator.behaviour import (
    CLICK_AFFINITY,
    CLICK_BIAS,
    CLICK_BOOST,
    CLICK_DELAY_MAX_MS,
    CLICK_DELAY_MEAN_MS,
    CLICK_DELAY_MIN_MS,
    CLICK_FRESHNESS,
    CLICK_QUALITY,
    COMPLETE_DURATION,
    COMPLETE_OFFSET,
    DRIFT_DECAY,
    DRIFT_LIMIT,
    DRIFT_SD,
    ENGAGED_BOOST,
    ENGAGED_WATCH_FRACTION,
    EXAMINATION_DECAY,
    FRESHNESS_TAU_MS,
    IMPRESSION_SPACING_MS,
    LIKE_AFFINITY,
    LIKE_BIAS,
    LIKE_QUALITY,
    REFERENCE_DURATION_MS,
    SESSION_PACE_S,
    SHARE_AFFINITY,
    SHARE_BIAS,
    SHARE_QUALITY,
    SKIP_DELAY_MAX_MS,
    SKIP_DELAY_MEAN_MS,
    SKIP_DELAY_MIN_MS,
    SKIP_GIVEN_PASSED,
    WATCH_AFFINITY,
    WATCH_BIAS,
    WATCH_FRESHNESS,
    WATCH_QUALITY,
    sigmoid,
)
from simulator.config import WorldConfig
from simulator.feed import Feed
from simulator.population import Items, Users
from simulator.sampling import capped_exponential, uuids
from simulator.sessions import Sessions

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]
ObjectArray = npt.NDArray[np.object_]

# The simulation advances in steps of at most this much event time (a tenth of
# the span if that is shorter); state that would change with every request in
# reality (interest drift, popularity) is updated once per step.
CHUNK_MS = 1000

# Events per impression, a first guess for the rate controller; it learns the
# real figure from the first step on.
_EVENTS_PER_IMPRESSION_GUESS = 1.4
_MAX_BURST = 4.0
_DELAY_SAMPLE = 4096

# Codes of event kinds; the order also breaks ties between events of one impression.
KINDS: tuple[EventType, ...] = (
    EventType.IMPRESSION,
    EventType.CLICK,
    EventType.SKIP,
    EventType.LIKE,
    EventType.SHARE,
    EventType.VIEW,
    EventType.COMPLETE,
)
_IMPRESSION, _CLICK, _SKIP, _LIKE, _SHARE, _VIEW, _COMPLETE = range(len(KINDS))


@dataclass(slots=True)
class EventBatch:
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

    def take(self, index: IntArray | slice) -> EventBatch:
        return EventBatch(
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
    def concat(batches: list[EventBatch]) -> EventBatch:
        return EventBatch(
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


@dataclass(frozen=True, slots=True)
class _Requests:
    """The requests of one step: (n,) per request, (n, slate_size) per shown item."""

    times: IntArray
    users: IntArray
    affinity: FloatArray
    """(n, categories): each requesting user's affinity including the current drift."""
    slate: IntArray
    """Item numbers in the order the feed shows them."""
    request_ids: ObjectArray


@dataclass(frozen=True, slots=True)
class _Chances:
    """The behaviour model's probabilities for every shown item (simulator.behaviour)."""

    category: IntArray
    watch_logit: FloatArray
    relevance: FloatArray
    p_complete: FloatArray
    engaged_relevance: FloatArray
    p_like: FloatArray
    p_share: FloatArray


@dataclass(frozen=True, slots=True)
class _Outcomes:
    """What happened to every shown item, before timing."""

    clicked: BoolArray
    completed: BoolArray
    watch: IntArray
    engaged: BoolArray
    liked: BoolArray
    shared: BoolArray
    skipped: BoolArray
    like_point: FloatArray
    """Where in the watch the like falls (uniform 0..1)."""
    share_point: FloatArray


@dataclass(frozen=True, slots=True)
class _Timing:
    """Event time of each possible outcome of every shown item."""

    shown: IntArray
    click_at: IntArray
    skip_at: IntArray
    view_at: IntArray
    like_at: IntArray
    share_at: IntArray


class Run:
    """The mutable state of one play-through: sessions, interest drift, popularity, pending events."""

    def __init__(
        self,
        cfg: WorldConfig,
        items: Items,
        users: Users,
        seeds: tuple[np.random.SeedSequence, np.random.SeedSequence],
        record_truth: Callable[[dict[str, Any]], None],
    ) -> None:
        self.cfg, self.items, self.users = cfg, items, users
        self.record_truth = record_truth
        self.rng = np.random.default_rng(seeds[0])
        self.id_rng = np.random.default_rng(seeds[1])
        self.drift: FloatArray = np.zeros((cfg.users, cfg.categories))
        self.feed = Feed(cfg, items)
        # Events per request before truncation at the end of the span, and a sample of
        # request-to-event delays; both from the latest step (first step: a guess).
        self.events_per_request = _EVENTS_PER_IMPRESSION_GUESS * cfg.slate_size
        self.delays: FloatArray | None = None
        nominal_requests_per_s = cfg.rate / self.events_per_request
        slots = int(min(max(1, round(nominal_requests_per_s * SESSION_PACE_S)), max(1, cfg.users // 2)))
        self.sessions = Sessions(cfg, users, slots, self.rng, self.drift)
        self.next_request = 0
        self.generated = 0
        self.pending: EventBatch | None = None
        self.examine: FloatArray = (1.0 + np.arange(cfg.slate_size, dtype=np.float64)) ** -EXAMINATION_DECAY

    def batches(self) -> Iterator[EventBatch]:
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
                merged = EventBatch.concat(parts)
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

    def _step(self, t0: int, t1: int, n: int) -> EventBatch:
        """Generate n requests in [t0, t1) with everything that follows from them."""
        requests = self._requests(t0, t1, n)
        chances = self._chances(requests)
        outcomes = self._outcomes(requests, chances)
        timing = self._timing(requests, outcomes)
        batch = self._events(requests, outcomes, timing)
        self._record_truth(requests, chances, timing, batch)
        self._feed_back(t0, t1, requests, chances, outcomes)
        return batch

    def _requests(self, t0: int, t1: int, n: int) -> _Requests:
        """n request times in [t0, t1), the session user of each and the slate the feed shows them."""
        times = np.sort(self.rng.integers(t0, t1, n)).astype(np.int64)
        users = self.sessions.assign(self.rng, times, self.drift)
        affinity = self.users.affinity[users] + self.drift[users]
        slate = self.feed.slates(self.rng, times, affinity, t0)
        return _Requests(times, users, affinity, slate, uuids(self.id_rng, n))

    def _chances(self, requests: _Requests) -> _Chances:
        """The behaviour model's probabilities for every shown item (no draws)."""
        items, slate, times = self.items, requests.slate, requests.times
        category = items.category[slate]
        a = np.take_along_axis(requests.affinity, category, axis=1)
        q = items.quality[slate]
        duration = items.duration[slate]
        fresh = np.exp(-(times[:, None] - items.created[slate]) / FRESHNESS_TAU_MS)
        relevance = sigmoid(CLICK_BIAS + CLICK_AFFINITY * a + CLICK_QUALITY * q + CLICK_FRESHNESS * fresh)
        w = (
            WATCH_BIAS
            + WATCH_AFFINITY * a
            + WATCH_QUALITY * q
            + WATCH_FRESHNESS * fresh
            + self.users.device_watch_bias[requests.users][:, None]
        )
        length = np.log(duration / REFERENCE_DURATION_MS)
        p_complete = sigmoid(w + COMPLETE_OFFSET - COMPLETE_DURATION * length)
        # Watched fraction U ** exp(-w): P(fraction >= h) = 1 - h ** exp(w).
        p_long = 1.0 - ENGAGED_WATCH_FRACTION ** np.exp(w)
        return _Chances(
            category=category,
            watch_logit=w,
            relevance=relevance,
            p_complete=p_complete,
            engaged_relevance=relevance * (p_complete + (1.0 - p_complete) * p_long),
            p_like=sigmoid(LIKE_BIAS + LIKE_AFFINITY * a + LIKE_QUALITY * q),
            p_share=sigmoid(SHARE_BIAS + SHARE_AFFINITY * a + SHARE_QUALITY * q),
        )

    def _outcomes(self, requests: _Requests, chances: _Chances) -> _Outcomes:
        """Draw what each user did with each shown item."""
        n, s = requests.slate.shape
        duration = self.items.duration[requests.slate]
        u = self.rng.random((9, n, s))
        examined = u[0] < self.examine
        clicked = examined & (u[1] < chances.relevance)
        completed = clicked & (u[2] < chances.p_complete)
        fraction = np.where(completed, 1.0, np.minimum(u[3] ** np.exp(-chances.watch_logit), 0.99))
        watch = np.where(completed, duration, np.floor(fraction * duration)).astype(np.int64)
        engaged = completed | (clicked & (watch >= ENGAGED_WATCH_FRACTION * duration))
        return _Outcomes(
            clicked=clicked,
            completed=completed,
            watch=watch,
            engaged=engaged,
            liked=engaged & (u[4] < chances.p_like),
            shared=engaged & (u[5] < chances.p_share),
            skipped=examined & ~clicked & (u[6] < SKIP_GIVEN_PASSED),
            like_point=u[7],
            share_point=u[8],
        )

    def _timing(self, requests: _Requests, outcomes: _Outcomes) -> _Timing:
        """Draw when each outcome happens: delays after the impression, watch time after the click."""
        n, s = requests.slate.shape
        shown = requests.times[:, None] + IMPRESSION_SPACING_MS * np.arange(s, dtype=np.int64)
        rng = self.rng
        click_delay = capped_exponential(rng, (n, s), CLICK_DELAY_MIN_MS, CLICK_DELAY_MEAN_MS, CLICK_DELAY_MAX_MS)
        skip_delay = capped_exponential(rng, (n, s), SKIP_DELAY_MIN_MS, SKIP_DELAY_MEAN_MS, SKIP_DELAY_MAX_MS)
        click_at = shown + click_delay
        watch = outcomes.watch
        return _Timing(
            shown=shown,
            click_at=click_at,
            skip_at=shown + skip_delay,
            view_at=click_at + watch,
            like_at=click_at + np.floor(outcomes.like_point * watch).astype(np.int64),
            share_at=click_at + np.floor(outcomes.share_point * watch).astype(np.int64),
        )

    def _events(self, requests: _Requests, outcomes: _Outcomes, timing: _Timing) -> EventBatch:
        """The step's events within the span, impressions first, with their ids; teaches the rate controller."""
        n, s = requests.slate.shape
        times, end = requests.times, self.cfg.end_ms
        none = np.full((n, s), -1, dtype=np.int64)
        watch = outcomes.watch
        kinds: list[tuple[int, BoolArray, IntArray, IntArray]] = [
            (_IMPRESSION, np.ones((n, s), dtype=bool), timing.shown, none),
            (_CLICK, outcomes.clicked, timing.click_at, none),
            (_SKIP, outcomes.skipped, timing.skip_at, none),
            (_LIKE, outcomes.liked, timing.like_at, none),
            (_SHARE, outcomes.shared, timing.share_at, none),
            (_VIEW, outcomes.clicked, timing.view_at, watch),
            (_COMPLETE, outcomes.completed, timing.view_at, watch),
        ]
        serial = self.next_request + np.arange(n, dtype=np.int64)
        self.next_request += n
        delays = np.concatenate([(at - times[:, None])[happened] for _, happened, at, _ in kinds])
        self.events_per_request = len(delays) / n
        self.delays = delays[:: max(1, len(delays) // _DELAY_SAMPLE)].astype(np.float64)
        parts: list[EventBatch] = []
        for code, happened, at, watched in kinds:
            rows, positions = np.nonzero(happened & (at < end))
            rows, positions = rows.astype(np.int64), positions.astype(np.int64)
            parts.append(
                EventBatch(
                    time=at[rows, positions],
                    seq=(serial[rows] * s + positions) * len(KINDS) + code,
                    kind=np.full(len(rows), code, dtype=np.int64),
                    user=requests.users[rows],
                    item=requests.slate[rows, positions],
                    position=positions,
                    watch=watched[rows, positions],
                    request_id=requests.request_ids[rows],
                    event_id=np.empty(0, dtype=object),
                )
            )
        batch = EventBatch.concat(parts)
        batch.event_id = uuids(self.id_rng, len(batch))
        return batch

    def _record_truth(self, requests: _Requests, chances: _Chances, timing: _Timing, batch: EventBatch) -> None:
        """Hand the probabilities behind each impression within the span to the world's ground truth."""
        # Impressions come first in the batch, in the same row-major order as here.
        rows, positions = (x.astype(np.int64) for x in np.nonzero(timing.shown < self.cfg.end_ms))
        n_shown = len(rows)
        examine = self.examine[positions]
        relevance = chances.relevance[rows, positions]
        engaged_relevance = chances.engaged_relevance[rows, positions]
        self.record_truth(
            {
                "event_id": batch.event_id[:n_shown],
                "request_id": requests.request_ids[rows],
                "user_id": requests.users[rows],
                "item_id": requests.slate[rows, positions],
                "position": positions,
                "event_time_ms": timing.shown[rows, positions],
                "p_examine": examine,
                "p_click": examine * relevance,
                "p_engaged": examine * engaged_relevance,
                "relevance": relevance,
                "engaged_relevance": engaged_relevance,
            }
        )

    def _feed_back(self, t0: int, t1: int, requests: _Requests, chances: _Chances, outcomes: _Outcomes) -> None:
        """Feedback into the world: clicked items get popular, interests follow clicks."""
        users, clicked = requests.users, outcomes.clicked
        self.feed.learn(t0, t1, requests.slate, clicked)
        self.drift[users] = self.drift[users] * DRIFT_DECAY + self.rng.normal(
            0.0, DRIFT_SD, (len(users), self.cfg.categories)
        )
        click_rows, click_positions = np.nonzero(clicked)
        np.add.at(
            self.drift,
            (users[click_rows], chances.category[click_rows, click_positions]),
            CLICK_BOOST + ENGAGED_BOOST * outcomes.engaged[click_rows, click_positions],
        )
        self.drift[users] = np.clip(self.drift[users], -DRIFT_LIMIT, DRIFT_LIMIT)
