"""Batch candidate generation: the lists the feed API re-ranks, written to Redis with a TTL.

From the event log (after the same per-user dedup and lateness gate as the stream job):

* popularity: each item's engagement events (click 1, view 1, complete 2, like 2,
  share 3) decayed with a POPULARITY_HALF_LIFE_MS half-life up to `now_ms`; globally
  and per country of the engaging user;
* co-visitation: two items a user engaged with within `covisit_window_ms` of each
  other co-visit; counts are symmetric and each item keeps its `neighbours` best;
* new items: catalog items created in the last `new_item_max_age_ms` (or, without a
  catalog date, first seen in the log then, when the log reaches back at least that
  much further), newest first.

A user's list, best first, is: co-visitation neighbours of the user's most recent
engaged items (recency-weighted, up to `covisit_max`), then up to `new_max` new items,
then popular items of the user's country, then global ones, without duplicates, cut
at `per_user`. The items the list was seeded from are left out (they were just
consumed); the API filters whatever else the user has seen.

Key names and encoding come from `features.candidates`, shared with the API.
"""

from __future__ import annotations

import heapq
import math
from collections import defaultdict, deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from features.admission import admitted_events
from features.candidates import (
    DEFAULT_TTL_S,
    MAX_CANDIDATES,
    encode_candidates,
    popular_country_key,
    popular_global_key,
    user_key,
)
from features.definitions import DAY_MS, HOUR_MS
from features.events import EventType, InteractionEvent
from features.ranking import ItemMeta
from training.errors import TrainingError

ENGAGEMENT_WEIGHTS: Final = {
    EventType.CLICK: 1.0,
    EventType.VIEW: 1.0,
    EventType.COMPLETE: 2.0,
    EventType.LIKE: 2.0,
    EventType.SHARE: 3.0,
}
POPULARITY_HALF_LIFE_MS: Final = 6 * HOUR_MS


@dataclass(frozen=True)
class CandidateConfig:
    per_user: int = MAX_CANDIDATES
    seeds: int = 20
    """The user's most recent distinct engaged items that seed co-visitation."""
    covisit_window_ms: int = HOUR_MS
    covisit_history: int = 20
    """A new engagement pairs with at most this many of the user's previous ones (bounds the work)."""
    neighbours: int = 100
    covisit_max: int = 350
    new_max: int = 50
    new_item_max_age_ms: int = DAY_MS
    lateness_ms: int = 300_000

    def __post_init__(self) -> None:
        if not 1 <= self.per_user <= MAX_CANDIDATES:
            raise ValueError(f"per_user must be in 1..{MAX_CANDIDATES}")


@dataclass
class CandidateLists:
    users: dict[str, list[str]] = field(default_factory=dict)
    popular_global: list[str] = field(default_factory=list)
    popular_by_country: dict[str, list[str]] = field(default_factory=dict)

    def records(self) -> Iterable[tuple[str, bytes]]:
        """(Redis key, encoded value) for every list."""
        yield popular_global_key(), encode_candidates(self.popular_global)
        for country, items in sorted(self.popular_by_country.items()):
            yield popular_country_key(country), encode_candidates(items)
        for user_id, items in self.users.items():
            yield user_key(user_id), encode_candidates(items)

    def __len__(self) -> int:
        return 1 + len(self.popular_by_country) + len(self.users)


def _top(scores: Mapping[str, float], n: int) -> list[str]:
    return [item for item, _ in heapq.nsmallest(n, scores.items(), key=lambda kv: (-kv[1], kv[0]))]


def _extend(out: list[str], chosen: set[str], items: Iterable[str], limit: int, size: int) -> None:
    """Append up to `limit` items not yet chosen, keeping len(out) <= size."""
    taken = 0
    for item in items:
        if len(out) >= size or taken >= limit:
            return
        if item not in chosen:
            out.append(item)
            chosen.add(item)
            taken += 1


def generate_candidates(
    events: Iterable[InteractionEvent],
    catalog: Mapping[str, ItemMeta],
    now_ms: int | None = None,
    config: CandidateConfig | None = None,
) -> CandidateLists:
    """Candidate lists as of now_ms (default: the newest event); events after now_ms are ignored."""
    config = config or CandidateConfig()
    log = sorted(admitted_events(events, config.lateness_ms), key=lambda e: e.event_time_ms)
    if now_ms is None:
        now_ms = log[-1].event_time_ms if log else 0
    decay = math.log(2) / POPULARITY_HALF_LIFE_MS

    popular: dict[str, float] = defaultdict(float)
    by_country: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    covisit: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    history: dict[str, deque[tuple[int, str]]] = defaultdict(lambda: deque(maxlen=config.covisit_history))
    first_seen: dict[str, int] = {}
    users: set[str] = set()
    for event in log:
        t = event.event_time_ms
        if t > now_ms:
            break
        users.add(event.user_id)
        first_seen.setdefault(event.item_id, t)
        weight = ENGAGEMENT_WEIGHTS.get(event.event_type)
        if weight is None:
            continue
        w = weight * math.exp(-decay * (now_ms - t))
        popular[event.item_id] += w
        if event.country:
            by_country[event.country][event.item_id] += w
        mine = history[event.user_id]
        for seen_at, other in mine:
            if other != event.item_id and t - seen_at <= config.covisit_window_ms:
                covisit[event.item_id][other] += 1.0
                covisit[other][event.item_id] += 1.0
        mine.append((t, event.item_id))

    neighbours = {item: _top(counts, config.neighbours) for item, counts in covisit.items()}
    neighbour_weight = {
        item: {other: covisit[item][other] / max(sum(covisit[item].values()), 1.0) for other in kept}
        for item, kept in neighbours.items()
    }
    global_list = _top(popular, config.per_user)
    country_lists = {country: _top(scores, config.per_user) for country, scores in by_country.items()}
    created: dict[str, int | None] = {item: meta.created_ms for item, meta in catalog.items()}
    # Without a catalog date, "first seen in the log" means new only if the log reaches back far enough
    # before it to know the item was not around; otherwise a short log would make every item new.
    log_start = log[0].event_time_ms if log else now_ms
    for item, t in first_seen.items():
        if created.get(item) is None and t - log_start >= config.new_item_max_age_ms:
            created[item] = t
    fresh = sorted(
        ((t, item) for item, t in created.items() if t is not None and 0 <= now_ms - t <= config.new_item_max_age_ms),
        reverse=True,
    )
    new_items = [item for _, item in fresh[: config.new_max]]
    country_of: dict[str, str] = {}
    for event in log:
        if event.country and event.event_time_ms <= now_ms:
            country_of[event.user_id] = event.country  # the newest country wins

    lists = CandidateLists(popular_global=global_list, popular_by_country=country_lists)
    for user_id in sorted(users):
        seeds: list[str] = []
        for _, item in reversed(history.get(user_id, ())):
            if item not in seeds:
                seeds.append(item)
            if len(seeds) >= config.seeds:
                break
        scores: dict[str, float] = defaultdict(float)
        for rank, seed in enumerate(seeds):
            for other, weight in neighbour_weight.get(seed, {}).items():
                scores[other] += weight / (1.0 + rank)
        chosen = set(seeds)  # never candidates: just consumed
        out: list[str] = []
        ranked = _top(scores, config.per_user)
        _extend(out, chosen, ranked, config.covisit_max, config.per_user)
        _extend(out, chosen, new_items, config.new_max, config.per_user)
        _extend(out, chosen, country_lists.get(country_of.get(user_id, ""), []), config.per_user, config.per_user)
        _extend(out, chosen, global_list, config.per_user, config.per_user)
        _extend(out, chosen, ranked, config.per_user, config.per_user)  # short of popular items: more co-visitation
        lists.users[user_id] = out
    return lists


class CandidateWriter:
    """Writes candidate lists to Redis: `open()` connects and pings, `write()` sends pipelined batches."""

    def __init__(self, address: str, ttl_s: int = DEFAULT_TTL_S, batch_size: int = 500) -> None:
        if ttl_s <= 0:
            raise ValueError("ttl_s must be positive: candidate lists must expire when the job stops")
        self.address = address
        self.ttl_s = ttl_s
        self.batch_size = batch_size
        self._client: Any = None

    def open(self) -> None:
        import redis

        from feature_repo.layout import redis_host_port

        host, port = redis_host_port(self.address)
        client = redis.Redis(host=host, port=port, socket_timeout=10)
        try:
            client.ping()
        except redis.RedisError as error:
            raise TrainingError(f"Redis at {self.address} is not reachable: {error}") from None
        self._client = client

    def write(self, lists: CandidateLists, progress: Callable[[int, int], None] | None = None) -> int:
        """SET every key with EX ttl_s, batch_size keys per pipeline round trip; returns keys written."""
        import redis

        if self._client is None:
            raise TrainingError("CandidateWriter.write() before open()")
        total, written = len(lists), 0
        pipe = self._client.pipeline(transaction=False)
        try:
            for key, value in lists.records():
                pipe.set(key, value, ex=self.ttl_s)
                if len(pipe) >= self.batch_size:
                    pipe.execute()
                    written += self.batch_size
                    if progress is not None:
                        progress(written, total)
            pending = len(pipe)
            if pending:
                pipe.execute()
                written += pending
        except redis.RedisError as error:
            raise TrainingError(f"writing candidates to Redis at {self.address} failed: {error}") from None
        if progress is not None:
            progress(written, total)
        return written

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
