"""Candidate keys and values as the API reads them."""

from __future__ import annotations

from features.candidates import (
    MAX_CANDIDATES,
    decode_candidates,
    encode_candidates,
    popular_country_key,
    popular_global_key,
    user_key,
)


def test_keys_are_the_documented_names() -> None:
    assert user_key("u-42") == "freshrank:cand:user:u-42"
    assert popular_global_key() == "freshrank:cand:popular:global"
    assert popular_country_key("us") == "freshrank:cand:popular:country:US"


def test_round_trip_keeps_order_and_caps_the_length() -> None:
    ids = [f"item-{i}" for i in range(MAX_CANDIDATES + 20)]
    raw = encode_candidates(ids)
    assert raw.startswith(b'["item-0","item-1"')
    assert decode_candidates(raw) == ids[:MAX_CANDIDATES]
    assert decode_candidates(raw.decode()) == ids[:MAX_CANDIDATES]


def test_missing_or_garbage_values_decode_to_none() -> None:
    assert decode_candidates(None) is None
    assert decode_candidates(b"not json") is None
    assert decode_candidates(b'{"a": 1}') is None
    assert decode_candidates(b"[1, 2]") is None
    assert decode_candidates(b"\xff\xfe") is None
    assert decode_candidates(b'["ok", "\xff"]') is None  # invalid UTF-8 inside a string
    assert decode_candidates(b'["\\ud800"]') is None  # a lone surrogate is no text id


def test_non_ascii_ids_round_trip() -> None:
    ids = ["vidéo-1", "视频-2", "emoji-😀"]
    assert decode_candidates(encode_candidates(ids)) == ids
    assert decode_candidates(b'["caf\\u00e9"]') == ["café"]
