"""Candidate generation logic (Redis is covered by the integration test)."""

from __future__ import annotations

from features.candidates import decode_candidates, popular_country_key, popular_global_key, user_key
from features.definitions import HOUR_MS, MINUTE_MS
from features.events import EventType, InteractionEvent
from features.ranking import ItemMeta
from tests.factories import NOW_MS, make_event
from training.candidates import CandidateConfig, generate_candidates

T = NOW_MS


def click(n: int, user: str, item: str, at: int, country: str = "US") -> InteractionEvent:
    return make_event(
        event_id=f"e{n}", user_id=user, item_id=item, event_type=EventType.CLICK, event_time_ms=at, country=country
    )


def test_lists_mix_covisitation_new_and_popular_items() -> None:
    events = [
        # u-1 and u-2 watch a then b: a and b co-visit.
        click(1, "u-1", "a", T - 50 * MINUTE_MS),
        click(2, "u-1", "b", T - 49 * MINUTE_MS),
        click(3, "u-2", "a", T - 40 * MINUTE_MS),
        click(4, "u-2", "b", T - 39 * MINUTE_MS),
        # c is popular in Brazil.
        *[click(10 + k, f"br-{k}", "c", T - 30 * MINUTE_MS, "BR") for k in range(5)],
        # u-3 only clicked a.
        click(20, "u-3", "a", T - 10 * MINUTE_MS),
    ]
    catalog = {"n": ItemMeta("n", None, T - HOUR_MS, None), "old": ItemMeta("old", None, T - 40 * 24 * HOUR_MS, None)}
    lists = generate_candidates(events, catalog, T, CandidateConfig(per_user=4))
    u3 = lists.users["u-3"]
    assert u3[0] == "b"  # co-visited with what u-3 just watched
    assert "a" not in u3  # the seed itself was just consumed
    assert u3[1] == "n"  # new item slot
    assert "old" not in u3 and len(u3) <= 4
    assert lists.popular_by_country["BR"][0] == "c"
    assert lists.popular_global[0] == "c"
    keys = dict(lists.records())
    assert decode_candidates(keys[user_key("u-3")]) == u3
    assert decode_candidates(keys[popular_country_key("BR")]) == lists.popular_by_country["BR"]
    assert popular_global_key() in keys


def test_events_after_now_are_ignored() -> None:
    events = [click(1, "u-1", "a", T - MINUTE_MS), click(2, "u-9", "z", T + MINUTE_MS)]
    lists = generate_candidates(events, {}, T)
    assert "u-9" not in lists.users and "z" not in lists.popular_global
