from __future__ import annotations

import itertools
import math
import time
from collections import Counter
from pathlib import Path

import pytest

from features.events import EventType, InteractionEvent, validate
from simulator.behaviour import CLICK_DELAY_MAX_MS, ENGAGED_WATCH_FRACTION
from simulator.catalog import read_catalog, write_catalog
from simulator.config import WorldConfig
from simulator.population import MAX_DURATION_MS
from simulator.truth import ImpressionTruth, read_ground_truth, write_ground_truth
from simulator.world import SyntheticWorld

START_MS = 1_750_000_000_000  # 2025-06-15, a fixed clock


def generate(**overrides: object) -> tuple[SyntheticWorld, list[InteractionEvent]]:
    world = SyntheticWorld(WorldConfig(start_ms=START_MS, **overrides))  # type: ignore[arg-type]
    return world, list(world.events())


@pytest.fixture(scope="module")
def busy() -> tuple[SyntheticWorld, list[InteractionEvent]]:
    """200k events: a large sample for the statistical checks."""
    return generate(rate=20_000.0, seconds=10.0, seed=7)


def impressions_by_slot(
    events: list[InteractionEvent],
) -> dict[tuple[str | None, int | None], InteractionEvent]:
    return {(e.request_id, e.position): e for e in events if e.event_type is EventType.IMPRESSION}


def test_same_seed_gives_the_same_events() -> None:
    world, first = generate(rate=2000.0, seconds=5.0, seed=3)
    _, second = generate(rate=2000.0, seconds=5.0, seed=3)
    assert first == second
    assert list(world.events()) == first, "replaying one world starts over"


def test_a_different_seed_gives_different_events() -> None:
    _, first = generate(rate=2000.0, seconds=5.0, seed=3)
    _, other = generate(rate=2000.0, seconds=5.0, seed=4)
    assert first != other
    assert not {e.event_id for e in first} & {e.event_id for e in other}


def test_event_count_follows_the_rate_across_the_whole_span() -> None:
    _, events = generate(rate=2000.0, seconds=20.0)
    assert len(events) == pytest.approx(2000 * 20, rel=0.03)
    times = [e.event_time_ms for e in events]
    assert min(times) >= START_MS
    assert max(times) < START_MS + 20_000
    per_second = Counter((t - START_MS) // 1000 for t in times)
    assert len(per_second) == 20
    assert all(1000 <= n <= 3000 for n in per_second.values()), per_second


@pytest.mark.parametrize(("rate", "seconds"), [(100.0, 2.0), (1000.0, 1.0), (5000.0, 3.0)])
def test_short_and_slow_spans_also_meet_the_rate(rate: float, seconds: float) -> None:
    _, events = generate(rate=rate, seconds=seconds)
    assert len(events) == pytest.approx(rate * seconds, rel=0.1)


def test_every_event_is_valid_unique_and_in_time_order(
    busy: tuple[SyntheticWorld, list[InteractionEvent]],
) -> None:
    world, events = busy
    now_ms = START_MS + 10_000
    assert [r for e in events if (r := validate(e, now_ms)) is not None] == []
    assert all(a.event_time_ms <= b.event_time_ms for a, b in itertools.pairwise(events))
    assert len({e.event_id for e in events}) == len(events)
    assert {e.country for e in events} <= set(world.config.countries)
    assert {e.device for e in events} <= set(world.config.devices)
    assert {e.event_type for e in events} == set(EventType)


def test_outcomes_carry_the_request_and_position_of_their_impression(
    busy: tuple[SyntheticWorld, list[InteractionEvent]],
) -> None:
    _, events = busy
    shown = impressions_by_slot(events)
    assert {e.position for e in shown.values()} == set(range(10))
    outcomes = [e for e in events if e.event_type is not EventType.IMPRESSION]
    assert outcomes
    for outcome in outcomes:
        impression = shown[(outcome.request_id, outcome.position)]
        assert (outcome.user_id, outcome.item_id) == (impression.user_id, impression.item_id)
        assert outcome.event_time_ms > impression.event_time_ms
    watch_reports = (EventType.VIEW, EventType.COMPLETE)
    assert all((e.watch_ms is not None) == (e.event_type in watch_reports) for e in outcomes)


def test_slates_are_ranked_lists_of_distinct_items(
    busy: tuple[SyntheticWorld, list[InteractionEvent]],
) -> None:
    _, events = busy
    slates: dict[str | None, list[InteractionEvent]] = {}
    for e in events:
        if e.event_type is EventType.IMPRESSION:
            slates.setdefault(e.request_id, []).append(e)
    full = [s for s in slates.values() if len(s) == 10]
    assert len(full) > 0.95 * len(slates)
    for slate in full:
        assert [e.position for e in slate] == list(range(10))
        assert len({e.item_id for e in slate}) == 10
        assert len({e.user_id for e in slate}) == 1


def test_many_users_are_active_at_once_and_come_back_for_more_slates(
    busy: tuple[SyntheticWorld, list[InteractionEvent]],
) -> None:
    _, events = busy
    first_second = {e.user_id for e in events if e.event_time_ms < START_MS + 1000}
    assert len(first_second) > 100
    requests_per_user = Counter(e.user_id for e in events if e.event_type is EventType.IMPRESSION and e.position == 0)
    assert max(requests_per_user.values()) >= 5


def test_position_bias_lowers_clicks_further_down_the_slate(
    busy: tuple[SyntheticWorld, list[InteractionEvent]],
) -> None:
    _, events = busy
    shown = Counter(e.position for e in events if e.event_type is EventType.IMPRESSION)
    clicked = Counter(e.position for e in events if e.event_type is EventType.CLICK)
    ctr = {p: clicked[p] / shown[p] for p in range(10)}
    assert ctr[0] > 2 * ctr[9]


def clicked_slots_and_truths(
    busy: tuple[SyntheticWorld, list[InteractionEvent]],
) -> tuple[set[tuple[str | None, int | None]], list[ImpressionTruth]]:
    """The busy world's clicked (request, position) slots, and the truths of impressions whose click fits the span."""
    world, events = busy
    # Clicks on the last impressions may fall after the end of the span.
    horizon = START_MS + 10_000 - CLICK_DELAY_MAX_MS
    clicks = {(e.request_id, e.position) for e in events if e.event_type is EventType.CLICK}
    return clicks, [t for t in world.ground_truth if t.event_time_ms < horizon]


def test_click_rate_matches_the_recorded_click_probability(
    busy: tuple[SyntheticWorld, list[InteractionEvent]],
) -> None:
    clicks, truths = clicked_slots_and_truths(busy)
    assert len(truths) > 50_000
    for position in (None, 0, 9):
        sample = [t for t in truths if position is None or t.position == position]
        expected = sum(t.p_click for t in sample)
        sd = math.sqrt(sum(t.p_click * (1 - t.p_click) for t in sample))
        observed = sum((t.request_id, t.position) in clicks for t in sample)
        assert abs(observed - expected) < 4 * sd, (position, observed, expected, sd)


def test_engaged_watch_rate_matches_the_recorded_probability() -> None:
    world, events = generate(rate=300.0, seconds=600.0, seed=11)
    durations = {item.item_id: item.duration_ms for item in world.catalog()}
    engaged = {
        (e.request_id, e.position)
        for e in events
        if e.event_type is EventType.COMPLETE
        or (
            e.event_type is EventType.VIEW
            and e.watch_ms is not None
            and e.watch_ms >= ENGAGED_WATCH_FRACTION * durations[e.item_id]
        )
    }
    horizon = START_MS + 600_000 - CLICK_DELAY_MAX_MS - MAX_DURATION_MS
    truths = [t for t in world.ground_truth if t.event_time_ms < horizon]
    assert len(truths) > 50_000
    expected = sum(t.p_engaged for t in truths)
    sd = math.sqrt(sum(t.p_engaged * (1 - t.p_engaged) for t in truths))
    observed = sum((t.request_id, t.position) in engaged for t in truths)
    assert abs(observed - expected) < 4 * sd, (observed, expected, sd)


def test_ground_truth_has_one_record_per_impression(
    busy: tuple[SyntheticWorld, list[InteractionEvent]],
) -> None:
    world, events = busy
    impressions = {e.event_id: e for e in events if e.event_type is EventType.IMPRESSION}
    truths = world.ground_truth
    assert len(truths) == len(impressions)
    for truth in truths:
        e = impressions[truth.event_id]
        assert (truth.request_id, truth.user_id, truth.item_id, truth.position, truth.event_time_ms) == (
            e.request_id,
            e.user_id,
            e.item_id,
            e.position,
            e.event_time_ms,
        )
        assert 0 < truth.p_click < 1
        assert truth.p_click == pytest.approx(truth.p_examine * truth.relevance)
        assert truth.p_engaged == pytest.approx(truth.p_examine * truth.engaged_relevance)
        assert truth.engaged_relevance <= truth.relevance


def test_oracle_relevance_beats_position_at_ranking_clicks(
    busy: tuple[SyntheticWorld, list[InteractionEvent]],
) -> None:
    clicks, truths = clicked_slots_and_truths(busy)
    top_relevant = sorted(truths, key=lambda t: t.relevance, reverse=True)[: len(truths) // 10]
    top_position = [t for t in truths if t.position == 0]
    rate = {
        name: sum((t.request_id, t.position) in clicks for t in sample) / len(sample)
        for name, sample in (("relevance", top_relevant), ("position", top_position))
    }
    assert rate["relevance"] > rate["position"]


def test_new_items_arrive_during_the_span_and_are_shown_only_after_creation() -> None:
    world, events = generate(rate=1000.0, seconds=60.0, new_items_per_minute=120.0)
    catalog = world.catalog()
    created = {item.item_id: item.created_ms for item in catalog}
    new = [item for item in catalog if item.created_ms >= START_MS]
    assert len(new) == pytest.approx(120, abs=40)
    assert all(item.created_ms < START_MS + 60_000 for item in new)
    assert sum(item.created_ms < START_MS for item in catalog) == 500
    assert all(created[e.item_id] <= e.event_time_ms for e in events)
    shown = {e.item_id for e in events if e.event_type is EventType.IMPRESSION}
    assert len(shown & {item.item_id for item in new}) > len(new) / 2


def test_catalog_and_ground_truth_survive_a_parquet_round_trip(tmp_path: Path) -> None:
    world, _ = generate(rate=1000.0, seconds=3.0)
    write_catalog(world.catalog(), tmp_path / "catalog.parquet")
    write_ground_truth(world.ground_truth, tmp_path / "truth" / "ground_truth.parquet")
    assert read_catalog(tmp_path / "catalog.parquet") == [item.meta for item in world.catalog()]
    assert read_ground_truth(tmp_path / "truth" / "ground_truth.parquet") == world.ground_truth
    assert world.ground_truth_table().num_rows == len(world.ground_truth)


def test_events_stream_lazily() -> None:
    # A day at 20k events/s would not fit in memory; only the first step is generated.
    world = SyntheticWorld(WorldConfig(start_ms=START_MS, rate=20_000.0, seconds=86_400.0))
    started = time.perf_counter()
    first = list(itertools.islice(world.events(), 1000))
    assert len(first) == 1000
    assert time.perf_counter() - started < 10
    assert len(world.ground_truth) < 40_000


def test_ground_truth_can_be_turned_off() -> None:
    world, events = generate(rate=1000.0, seconds=2.0, record_ground_truth=False)
    assert events
    assert world.ground_truth == []


@pytest.mark.parametrize(
    "overrides",
    [
        {"start_ms": 1_000},
        {"users": 0},
        {"rate": 0.0},
        {"seconds": -1.0},
        {"slate_size": 0},
        {"countries": ("usa",)},
        {"devices": ("",)},
    ],
)
def test_config_refuses_worlds_that_would_emit_invalid_events(overrides: dict[str, object]) -> None:
    values: dict[str, object] = {"start_ms": START_MS, **overrides}
    with pytest.raises(ValueError):
        WorldConfig(**values)  # type: ignore[arg-type]
