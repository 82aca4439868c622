"""The online-store layout: Feast's Redis layout of freshrank's views, the one module that spells it.

The stream job writes rows with it (streaming/online_store.py) and the feed API
reads them with it (serving/online_store.py), both without Feast's own read and
write paths; everything else that names a key, a field or an encoding calls it.
What Feast's redis online store writes for one row of view V and entity E (and
reads back in `get_online_features`), with the `entity_key_serialization_version`
and `project` of feature_store.yaml:

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
tests/unit/feature_repo/test_layout.py, rows against Feast's writer and reader in
tests/integration/test_online_store_layout.py, and `ViewLayout` checks its key
against Feast's `_redis_key` when it is built, so a Feast upgrade that changes the
layout fails loudly instead of writing rows Feast cannot read. This is the only
module that imports Feast's private helpers.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from feast.infra.online_stores.helpers import _mmh3, _redis_key
from feast.infra.online_stores.redis import RedisOnlineStore
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from google.protobuf.message import DecodeError  # type: ignore[import-untyped]

from feature_repo.definitions import AS_OF_FIELD, ITEM_VIEW, JOIN_KEYS, USER_VIEW
from feature_repo.store import entity_key_serialization_version, project_name
from features.declared import DeclaredView
from features.definitions import ITEM_FEATURES, USER_FEATURES, FeatureDtype, FeatureSpec, FeatureValue

ENTITY_KEY_SERIALIZATION_VERSION = entity_key_serialization_version()
BUILT_IN_SPECS: dict[str, tuple[FeatureSpec, ...]] = {USER_VIEW: USER_FEATURES, ITEM_VIEW: ITEM_FEATURES}


class FeatureRow(NamedTuple):
    """One entity's row of one view in the online store: its feature values as of `as_of_ms`.

    Rows the stream job writes carry `timestamp_us` (Feast's event timestamp, strictly increasing
    per entity) and `newest_event_ms` (event time of the newest event the values include; None for
    rows emitted as windows age). Rows read back carry the values and `as_of_ms` (None if the hash
    has no `as_of_ms`), not the write metadata. A tuple, not a dataclass: the job pickles rows and
    tuples unpickle fast.
    """

    view: str
    entity_id: str
    values: Mapping[str, FeatureValue | None]  # None: a null value (a declared mean/max/min of an empty window)
    as_of_ms: int | None
    timestamp_us: int | None = None
    newest_event_ms: int | None = None


class UndecodableValue(ValueError):
    """A stored field is not a Feast `Value`; the message names the feature."""


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


# Encoded list elements by string: the same item ids and categories recur in row after row (a user's last
# items change one at a time), and encoding them was a tenth of a row's cost. Cleared when full.
_LIST_ITEMS: dict[str, bytes] = {}
_LIST_ITEMS_MAX = 200_000


def _list_item(value: object) -> bytes:
    text = value if type(value) is str else str(value)
    encoded = _LIST_ITEMS.get(text)
    if encoded is None:
        raw = text.encode()
        encoded = _LIST_ITEM_TAG + varint(len(raw)) + raw
        if len(_LIST_ITEMS) >= _LIST_ITEMS_MAX:
            _LIST_ITEMS.clear()
        _LIST_ITEMS[text] = encoded
    return encoded


def _string_list(values: FeatureValue) -> bytes:
    if not isinstance(values, list):
        raise ValueError(f"feature value {values!r} does not fit dtype string_list")
    cached = _LIST_ITEMS.get
    inner = b"".join([(type(v) is str and cached(v)) or _list_item(v) for v in values])
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
    """Keys and hash fields of one view's rows in Feast's Redis layout (see the module docstring), both ways."""

    def __init__(
        self, project: str, view: str, join_key: str, specs: Sequence[FeatureSpec], as_of_field: str = AS_OF_FIELD
    ) -> None:
        self.view = view
        self.dtypes: dict[str, FeatureDtype] = {spec.name: spec.dtype for spec in specs}
        self.fields: dict[str, bytes] = {name: _mmh3(f"{view}:{name}") for name in (*self.dtypes, as_of_field)}
        # Per feature: (hash field, encoder), so a row costs one lookup per value.
        self._encoders = {name: (self.fields[name], ENCODERS[dtype]) for name, dtype in self.dtypes.items()}
        self.as_of_name = as_of_field
        self.as_of_field = self.fields[as_of_field]
        self.timestamp_field = f"_ts:{view}".encode()
        self.names: tuple[str, ...] = tuple(self.fields)
        """What a read asks for, in order: every feature, then `as_of`; `decode` takes the replies in this order."""
        self.read_fields: list[bytes] = list(self.fields.values())
        # Keys are spelled per call, not memoised: the reader's memo of Feast's protobuf path once held
        # 500k entries, ~195 MB, fed by any id a client sent.
        keys = EntityKeys(project, join_key)
        self.feast_key = keys.feast_key
        self.matches_feast = keys.matches_feast
        """Whether the fast key still equals Feast's; if not (a Feast upgrade), `key` is Feast's own, slower,
        function: the reader goes on with it, the writer refuses to start."""
        self.key = keys.key if keys.matches_feast else keys.feast_key

    def hash_fields(
        self, values: Mapping[str, FeatureValue | None], as_of_ms: int | None, timestamp_us: int | None
    ) -> dict[bytes, bytes]:
        """The hash fields Feast's writer would set for this row: every feature, `as_of`, and `_ts:<view>`.

        A None value is written as an empty `Value` (no field set), which Feast reads back as null."""
        if timestamp_us is None:
            raise ValueError(f"a {self.view} row to write needs its Feast timestamp (timestamp_us)")
        encoders = self._encoders
        mapping: dict[bytes, bytes] = {}
        for name, value in values.items():
            field, encode = encoders[name]
            mapping[field] = b"" if value is None else encode(value)
        mapping[self.as_of_field] = b"" if as_of_ms is None else _INT64_TAG + varint(as_of_ms)
        mapping[self.timestamp_field] = encode_timestamp(timestamp_us)
        return mapping

    def decode(self, entity_id: str, raw: Sequence[bytes | None]) -> FeatureRow | None:
        """The row from the replies of a read of `read_fields`; None if the entity has no row.

        Raises `UndecodableValue` (naming the feature) if a field is not a Feast `Value`."""
        if not any(raw):
            return None
        values: dict[str, FeatureValue | None] = {}
        for name, blob in zip(self.names, raw, strict=True):
            if blob is None:
                values[name] = None
                continue
            proto = Value()
            try:
                proto.ParseFromString(blob)
            except DecodeError as error:
                raise UndecodableValue(f"field {name}: {error}") from None
            values[name] = python_value(proto)
        as_of = values.pop(self.as_of_name, None)
        return FeatureRow(self.view, entity_id, values, as_of if isinstance(as_of, int) else None)


def python_value(value: Value) -> FeatureValue | None:
    """The Python value of a Feast `Value`, as `get_online_features` gives it (lists as lists, unset as None)."""
    kind = value.WhichOneof("val")
    if kind is None or kind == "null_val":
        return None
    raw = getattr(value, kind)
    if kind.endswith("_list_val"):
        return list(raw.val)
    return raw  # type: ignore[no-any-return]


def declared_specs(view: DeclaredView) -> tuple[FeatureSpec, ...]:
    """The online schema of a declared view: one feature per aggregation, typed as its Feast Field."""
    return tuple(
        FeatureSpec(a.name, a.dtype, f"{a.function}({a.column}) over {a.window.length_ms} ms")
        for a in view.aggregations
    )


def view_layouts(project: str | None = None, declared: Sequence[DeclaredView] = ()) -> dict[str, ViewLayout]:
    """The layout of every view by name: the built-ins, then the declared views (which share the entity's hash
    with the built-ins: Feast keeps one hash per entity key). `project` defaults to feature_store.yaml's."""
    project = project or project_name()
    layouts = {view: ViewLayout(project, view, JOIN_KEYS[view], specs) for view, specs in BUILT_IN_SPECS.items()}
    for view in declared:
        layouts[view.name] = ViewLayout(project, view.name, view.entity_key, declared_specs(view))
    return layouts


def redis_host_port(address: str) -> tuple[str, int]:
    """Host and port of a Redis `host:port` (an empty host is the local one); a Feast connection string's
    options after the first comma are ignored."""
    host, _, port = address.partition(",")[0].strip().rpartition(":")
    if not port.isdigit():
        raise ValueError(f"Redis address {address!r} is not host:port")
    return host or "127.0.0.1", int(port)


def redis_connection_params(connection_string: str) -> tuple[str, int, dict[str, Any]]:
    """Host, port and redis-py options of Feast's `connection_string` (`host:port,password=...,ssl=true`),
    parsed as Feast's redis store parses it. One host only: a cluster is not supported."""
    nodes, params = RedisOnlineStore._parse_connection_string(connection_string)
    if len(nodes) != 1:
        raise ValueError(f"expected one host:port in the Redis address, got {len(nodes)}: a cluster is not supported")
    return str(nodes[0]["host"]), int(nodes[0]["port"]), dict(params)
