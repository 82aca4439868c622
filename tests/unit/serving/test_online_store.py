"""The Redis reader speaks Feast's encoding through the layout: Feast's hash fields, the same values back."""

from __future__ import annotations

import pytest
from feast.infra.online_stores.redis import RedisOnlineStore as FeastRedisStore

from feature_repo.definitions import AS_OF_FIELD, ITEM_VIEW, USER_VIEW, item_stream_features, user_stream_features
from feature_repo.layout import encode_value, view_layouts
from features.definitions import ITEM_FEATURES, USER_FEATURES
from serving.online_store import CorruptRow, decode_row

LAYOUTS = view_layouts("freshrank")


def test_hash_fields_are_the_ones_feast_reads() -> None:
    for view, layout in ((user_stream_features, LAYOUTS[USER_VIEW]), (item_stream_features, LAYOUTS[ITEM_VIEW])):
        _, feast_fields = FeastRedisStore()._generate_hset_keys_for_features(view, list(layout.names))
        assert layout.read_fields == feast_fields[:-1]  # Feast appends its _ts field; we read as_of_ms instead


def test_values_written_the_way_the_stream_job_writes_decode_to_the_same_python_values() -> None:
    layout = LAYOUTS[USER_VIEW]
    samples = {"int64": 7, "float64": 0.25, "string_list": ["i-1", "i-2"], "float_list": [0.5, 0.25]}
    written = {spec.name: samples[spec.dtype] for spec in USER_FEATURES}
    raw = [encode_value(spec.dtype, written[spec.name]) for spec in USER_FEATURES]
    raw.append(encode_value("int64", 1_795_000_000_000))
    row = decode_row(layout, "u-1", raw)
    assert row is not None
    assert dict(row.values) == written and row.as_of_ms == 1_795_000_000_000
    assert (row.view, row.entity_id) == (USER_VIEW, "u-1")


def test_a_missing_hash_is_no_row_and_missing_fields_are_none() -> None:
    layout = LAYOUTS[ITEM_VIEW]
    assert decode_row(layout, "i-1", [None] * len(layout.read_fields)) is None
    raw: list[bytes | None] = [None] * len(layout.read_fields)
    raw[0] = encode_value(ITEM_FEATURES[0].dtype, 3)
    row = decode_row(layout, "i-1", raw)
    assert row is not None and row.values[ITEM_FEATURES[0].name] == 3 and row.as_of_ms is None
    assert row.values[ITEM_FEATURES[1].name] is None and AS_OF_FIELD not in row.values


def test_keys_are_feasts_keys_for_any_id() -> None:
    layout = LAYOUTS[ITEM_VIEW]
    for entity_id in ("", "item-1", "ü", "код-🙂", "x" * 300, "a:b/c d", "\x00\xff"):
        assert layout.key(entity_id) == layout.feast_key(entity_id), entity_id


def test_a_corrupt_field_is_a_corrupt_row_not_a_protobuf_error() -> None:
    layout = LAYOUTS[ITEM_VIEW]
    raw: list[bytes | None] = [None] * len(layout.read_fields)
    raw[0] = b"\xff\xff not a Value"
    with pytest.raises(CorruptRow, match=ITEM_FEATURES[0].name):
        decode_row(layout, "i-1", raw)
