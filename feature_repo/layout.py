"""Feast's Redis layout for freshrank's views, spelled out so the stream job writes rows without Feast's write path.

What Feast's redis online store writes for one row of view V and entity E (and
reads back in `get_online_features`), with `entity_key_serialization_version: 3`:

- the key: `serialize_entity_key(EntityKey(join_keys=[join key], entity_values=[E]))
  + project`, for one string entity `<fixed prefix><u32 length><utf-8 id><project>`;
- one hash field per feature, named by `_mmh3("V:<feature>")`, holding the
  serialized `feast.types.Value` proto;
- the field `_ts:V`, holding the row's timestamp as a serialized
  `google.protobuf.Timestamp`;
- an EXPIRE of `key_ttl_seconds` after each write.

Building those with protobuf objects cost ~250 us per row (profile in the
README); here each value is encoded with `struct` in a few us. Every encoding is
checked byte for byte against Feast's and protobuf's own in
tests/unit/feature_repo/test_layout.py, and `ViewLayout` checks its key against
Feast's `_redis_key` when it is built, so a Feast upgrade that changes the
layout fails loudly instead of writing rows Feast cannot read.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence

from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from features.definitions import FeatureDtype, FeatureSpec, FeatureValue

ENTITY_KEY_SERIALIZATION_VERSION = 3  # feature_store.yaml entity_key_serialization_version

_DOUBLE = struct.Struct("<d")
_U32 = struct.Struct("<I")
# Field tags of feast.types.Value (field number << 3 | wire type).
_INT64_TAG = b"\x20"  # int64_val = 4, varint
_DOUBLE_TAG = b"\x29"  # double_val = 5, 64-bit
_STRING_LIST_TAG = b"\x62"  # string_list_val = 12, length-delimited
_DOUBLE_LIST_TAG = b"\x7a"  # double_list_val = 15, length-delimited
_LIST_ITEM_TAG = b"\x0a"  # StringList.val / DoubleList.val = 1, length-delimited (packed for doubles)


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint; a negative int64 is its 64-bit two's complement (10 bytes)."""
    if 0 <= value < 0x80:
        return _SMALL[value]
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


_SMALL = [bytes((n,)) for n in range(0x80)]
# Most int64 features are small counts: their whole encoding is one of these.
_SMALL_INT64 = [_INT64_TAG + b for b in _SMALL]


def _int64(value: FeatureValue) -> bytes:
    if type(value) is int and 0 <= value < 0x80:
        return _SMALL_INT64[value]
    if isinstance(value, list):
        raise ValueError(f"feature value {value!r} does not fit dtype int64")
    return _INT64_TAG + varint(int(value))


def _float64(value: FeatureValue) -> bytes:
    if isinstance(value, list):
        raise ValueError(f"feature value {value!r} does not fit dtype float64")
    return _DOUBLE_TAG + _DOUBLE.pack(value)


def _string_list(values: FeatureValue) -> bytes:
    if not isinstance(values, list):
        raise ValueError(f"feature value {values!r} does not fit dtype string_list")
    inner = b"".join(_LIST_ITEM_TAG + varint(len(b)) + b for b in (str(v).encode() for v in values))
    return _STRING_LIST_TAG + varint(len(inner)) + inner


def _double_list(values: FeatureValue) -> bytes:
    if not isinstance(values, list):
        raise ValueError(f"feature value {values!r} does not fit dtype float_list")
    if not values:
        return _DOUBLE_LIST_TAG + b"\x00"
    packed = struct.pack(f"<{len(values)}d", *(float(v) for v in values))
    inner = _LIST_ITEM_TAG + varint(len(packed)) + packed
    return _DOUBLE_LIST_TAG + varint(len(inner)) + inner


ENCODERS: dict[FeatureDtype, Callable[[FeatureValue], bytes]] = {
    "int64": _int64,
    "float64": _float64,
    "string_list": _string_list,
    "float_list": _double_list,
}


def encode_value(dtype: FeatureDtype, value: FeatureValue) -> bytes:
    """`Value(<dtype>_val=value).SerializeToString()`, without building the proto."""
    return ENCODERS[dtype](value)


def encode_timestamp(timestamp_us: int) -> bytes:
    """`Timestamp(seconds, nanos).SerializeToString()` of a time in epoch microseconds (as Feast stores `_ts:`)."""
    seconds, micros = divmod(timestamp_us, 1_000_000)
    stamp = b"\x08" + varint(seconds) if seconds else b""
    return stamp + (b"\x10" + varint(micros * 1000) if micros else b"")


class EntityKeys:
    """Feast's Redis key of one string entity: `<fixed prefix><u32 length><utf-8 id><project>`.

    Building it with Feast's protobuf path costs ~50 us a key; spelled directly ~0.3 us. The prefix is
    taken from Feast's own function, and `matches_feast` says whether the spelling still equals Feast's
    on probes (a Feast upgrade may change the layout): the writer refuses to start then, the reader
    falls back to `feast_key`.
    """

    PROBES = ("item-1", "ünï-код-🙂")

    def __init__(self, project: str, join_key: str) -> None:
        self.project = project
        self.join_key = join_key
        project_bytes = project.encode()
        empty = self.feast_key("")
        self._prefix = empty[: len(empty) - 4 - len(project_bytes)]
        self._suffix = project_bytes
        self.matches_feast = all(self.key(probe) == self.feast_key(probe) for probe in self.PROBES)

    def feast_key(self, entity_id: str) -> bytes:
        """Feast's own key for this entity (the reference `key` must equal)."""
        entity = EntityKey(join_keys=[self.join_key], entity_values=[Value(string_val=entity_id)])
        return _redis_key(self.project, entity, ENTITY_KEY_SERIALIZATION_VERSION)

    def key(self, entity_id: str) -> bytes:
        encoded = entity_id.encode()
        return b"".join((self._prefix, _U32.pack(len(encoded)), encoded, self._suffix))


class ViewLayout:
    """Keys and hash fields of one view's rows in Feast's Redis layout (see the module docstring)."""

    def __init__(self, project: str, view: str, join_key: str, specs: Sequence[FeatureSpec], as_of_field: str) -> None:
        self.view = view
        self.dtypes: dict[str, FeatureDtype] = {spec.name: spec.dtype for spec in specs}
        self.fields: dict[str, bytes] = {name: _mmh3(f"{view}:{name}") for name in (*self.dtypes, as_of_field)}
        # Per feature: (hash field, encoder), so a row costs one lookup per value.
        self._encoders = {name: (self.fields[name], ENCODERS[dtype]) for name, dtype in self.dtypes.items()}
        self.as_of_field = self.fields[as_of_field]
        self.timestamp_field = f"_ts:{view}".encode()
        keys = EntityKeys(project, join_key)
        if not keys.matches_feast:
            raise RuntimeError(
                f"Feast's Redis key layout changed (entity_key_serialization_version "
                f"{ENTITY_KEY_SERIALIZATION_VERSION}): update feature_repo/layout.py"
            )
        self.key = keys.key
        self.feast_key = keys.feast_key

    def hash_fields(
        self, values: Mapping[str, FeatureValue | None], as_of_ms: int, timestamp_us: int
    ) -> dict[bytes, bytes]:
        """The hash fields Feast's writer would set for this row: every feature, `as_of`, and `_ts:<view>`.

        A None value is written as an empty `Value` (no field set), which Feast reads back as null."""
        encoders = self._encoders
        mapping: dict[bytes, bytes] = {}
        for name, value in values.items():
            field, encode = encoders[name]
            mapping[field] = b"" if value is None else encode(value)
        mapping[self.as_of_field] = _INT64_TAG + varint(as_of_ms)
        mapping[self.timestamp_field] = encode_timestamp(timestamp_us)
        return mapping
