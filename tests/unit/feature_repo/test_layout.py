"""The hand-written encodings of Feast's Redis layout equal protobuf's and Feast's own, byte for byte."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

from feast.infra.online_stores.helpers import _mmh3
from feast.protos.feast.types.Value_pb2 import DoubleList, StringList, Value
from google.protobuf.timestamp_pb2 import Timestamp
from hypothesis import given
from hypothesis import strategies as st

from feature_repo.definitions import AS_OF_FIELD, USER_VIEW
from feature_repo.layout import ViewLayout, encode_timestamp, encode_value
from features.definitions import USER_FEATURES

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
