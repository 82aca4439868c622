"""The hand-written encodings of Feast's Redis layout equal protobuf's and Feast's own, byte for byte."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import DoubleList, StringList, Value
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from feature_repo import layout
from feature_repo.definitions import AS_OF_FIELD, JOIN_KEYS, USER_VIEW
from feature_repo.layout import (
    ENTITY_KEY_SERIALIZATION_VERSION,
    FeatureRow,
    UndecodableValue,
    ViewLayout,
    encode_timestamp,
    encode_value,
    redis_host_port,
    view_layouts,
)
from feature_repo.store import open_store, project_name
from features.definitions import USER_FEATURES, FeatureValue

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
DOUBLES = st.floats(allow_nan=False) | st.sampled_from([0.0, -0.0, math.inf, -math.inf, 5e-324])


@given(INT64)
def test_int64_values_are_protobufs_bytes(value: int) -> None:
    assert encode_value("int64", value) == Value(int64_val=value).SerializeToString()


@given(DOUBLES)
def test_float64_values_are_protobufs_bytes(value: float) -> None:
    assert encode_value("float64", value) == Value(double_val=value).SerializeToString()


def test_nan_is_stored_as_protobuf_stores_it() -> None:
    assert encode_value("float64", math.nan) == Value(double_val=math.nan).SerializeToString()


@given(st.lists(st.text(), max_size=40))
def test_string_lists_are_protobufs_bytes(values: list[str]) -> None:
    expected = Value(string_list_val=StringList(val=values)).SerializeToString()
    assert encode_value("string_list", values) == expected


def test_string_lists_stay_protobufs_bytes_as_the_element_memo_fills_and_clears(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("feature_repo.layout._LIST_ITEMS_MAX", 3)
    lists = [["a", "b"], ["b", "c", "d"], ["é" * 200, "a"], ["a", "b"], [], ["d", "d", ""]]
    for _ in range(2):  # the second pass reads the memo where the first wrote it
        for values in lists:
            expected = Value(string_list_val=StringList(val=values)).SerializeToString()
            assert encode_value("string_list", values) == expected
    assert len(layout._LIST_ITEMS) <= 3


@given(st.lists(DOUBLES, max_size=40))
def test_float_lists_are_protobufs_bytes(values: list[float]) -> None:
    expected = Value(double_list_val=DoubleList(val=values)).SerializeToString()
    assert encode_value("float_list", values) == expected


@given(st.integers(min_value=0, max_value=4_102_444_800_000_000))
def test_timestamps_are_the_bytes_feast_writes(timestamp_us: int) -> None:
    stamp = Timestamp()
    stamp.FromDatetime(datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=timestamp_us))
    assert encode_timestamp(timestamp_us) == stamp.SerializeToString()


def test_a_value_of_the_wrong_type_is_refused_with_the_dtype() -> None:
    try:
        encode_value("int64", [1])
    except ValueError as error:
        assert "int64" in str(error)
    else:
        raise AssertionError("a list was encoded as an int64")


@given(st.text(max_size=64))
def test_keys_are_feasts_keys(entity_id: str) -> None:
    layout = ViewLayout("freshrank", USER_VIEW, "user_id", USER_FEATURES, AS_OF_FIELD)
    assert layout.key(entity_id) == layout.feast_key(entity_id)


def test_a_row_sets_every_feature_as_of_and_the_timestamp_under_feasts_field_names() -> None:
    layout = ViewLayout("freshrank", USER_VIEW, "user_id", USER_FEATURES, AS_OF_FIELD)
    samples = {"int64": 7, "float64": 0.25, "string_list": ["i-1"], "float_list": [0.5]}
    values = {spec.name: samples[spec.dtype] for spec in USER_FEATURES}
    fields = layout.hash_fields(values, 1_795_000_000_000, 1_795_000_000_000_123)
    expected_names = {_mmh3(f"{USER_VIEW}:{spec.name}") for spec in USER_FEATURES}
    assert set(fields) == expected_names | {_mmh3(f"{USER_VIEW}:{AS_OF_FIELD}"), f"_ts:{USER_VIEW}".encode()}


@given(st.lists(st.text(), max_size=5), INT64, DOUBLES.filter(lambda d: d == d))
def test_decoding_feasts_value_protos_gives_what_was_stored(names: list[str], count: int, share: float) -> None:
    layout = ViewLayout("freshrank", USER_VIEW, "user_id", USER_FEATURES, AS_OF_FIELD)
    stored: dict[str, FeatureValue] = {
        spec.name: {"int64": count, "float64": share, "string_list": names, "float_list": [share]}[spec.dtype]
        for spec in USER_FEATURES
    }
    protos = {
        "int64": lambda v: Value(int64_val=v),
        "float64": lambda v: Value(double_val=v),
        "string_list": lambda v: Value(string_list_val=StringList(val=v)),
        "float_list": lambda v: Value(double_list_val=DoubleList(val=v)),
    }
    raw: list[bytes | None] = [protos[spec.dtype](stored[spec.name]).SerializeToString() for spec in USER_FEATURES]
    raw.append(Value(int64_val=1_795_000_000_000).SerializeToString())
    row = layout.decode("u-ü", raw)
    assert row == FeatureRow(USER_VIEW, "u-ü", stored, 1_795_000_000_000)


def test_an_undecodable_field_is_refused_naming_the_feature() -> None:
    layout = ViewLayout("freshrank", USER_VIEW, "user_id", USER_FEATURES, AS_OF_FIELD)
    raw: list[bytes | None] = [None] * len(layout.read_fields)
    raw[1] = b"\xff\xff"
    with pytest.raises(UndecodableValue, match=USER_FEATURES[1].name):
        layout.decode("u-1", raw)


def test_every_view_is_laid_out_with_its_entitys_join_key_and_the_repos_project(tmp_path: Path) -> None:
    layouts = view_layouts()
    config = open_store("127.0.0.1:6379", tmp_path / "registry.db").config
    assert project_name() == config.project
    assert ENTITY_KEY_SERIALIZATION_VERSION == config.entity_key_serialization_version
    for view, join_key in JOIN_KEYS.items():
        feast_key = _redis_key(config.project, EntityKey(join_keys=[join_key], entity_values=[Value(string_val="e-1")]))
        assert layouts[view].key("e-1") == feast_key


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:6379", ("127.0.0.1", 6379)),
        (":6380", ("127.0.0.1", 6380)),
        ("redis.internal:7000,password=secret,ssl=true", ("redis.internal", 7000)),
    ],
)
def test_a_redis_address_is_host_and_port(address: str, expected: tuple[str, int]) -> None:
    assert redis_host_port(address) == expected


def test_a_redis_address_without_a_port_is_refused_saying_so() -> None:
    with pytest.raises(ValueError, match="not host:port"):
        redis_host_port("redis.internal")
