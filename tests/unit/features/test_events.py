from __future__ import annotations

import pytest

from features.events import MAX_CLOCK_SKEW_MS, MAX_ID_LENGTH, MAX_WATCH_MS, MIN_EVENT_TIME_MS, validate
from tests.factories import NOW_MS, make_event


def test_a_complete_event_is_valid() -> None:
    assert validate(make_event(), NOW_MS) is None


def test_optional_fields_may_be_null() -> None:
    event = make_event(watch_ms=None, request_id=None, position=None, variant=None, device=None, country=None)
    assert validate(event, NOW_MS) is None


@pytest.mark.parametrize(
    ("overrides", "field", "reason_part"),
    [
        ({"event_id": ""}, "event_id", "required"),
        ({"event_id": "   "}, "event_id", "required"),
        ({"user_id": ""}, "user_id", "required"),
        ({"item_id": ""}, "item_id", "required"),
        ({"user_id": None}, "user_id", "required"),
        ({"item_id": "x" * (MAX_ID_LENGTH + 1)}, "item_id", "limit is 128"),
        ({"event_type": "purchase"}, "event_type", "not one of"),
        ({"event_time_ms": MIN_EVENT_TIME_MS - 1}, "event_time", "before 2020"),
        ({"event_time_ms": NOW_MS + MAX_CLOCK_SKEW_MS + 1000}, "event_time", "in the future"),
        ({"event_time_ms": 1.5}, "event_time", "integer"),
        ({"event_time_ms": True}, "event_time", "integer"),
        ({"watch_ms": -1}, "watch_ms", "outside"),
        ({"watch_ms": MAX_WATCH_MS + 1}, "watch_ms", "outside"),
        ({"position": -1}, "position", "outside"),
        ({"variant": ""}, "variant", "null or 1..64"),
        ({"device": "d" * 65}, "device", "null or 1..64"),
        ({"request_id": "r" * 129}, "request_id", "null or 1..128"),
        ({"country": "usa"}, "country", "ISO 3166-1"),
        ({"country": "us"}, "country", "ISO 3166-1"),
    ],
)
def test_each_rule_names_the_field_and_why(overrides: dict[str, object], field: str, reason_part: str) -> None:
    rejection = validate(make_event(**overrides), NOW_MS)
    assert rejection is not None
    assert rejection.field == field
    assert reason_part in rejection.reason


def test_clock_skew_up_to_the_limit_is_accepted() -> None:
    assert validate(make_event(event_time_ms=NOW_MS + MAX_CLOCK_SKEW_MS), NOW_MS) is None
