"""The online-store layout against Feast: the sink writes Feast's bytes, Feast reads them, our reads equal Feast's."""

from __future__ import annotations

from pathlib import Path

import redis

from feature_repo.definitions import AS_OF_FIELD, ITEM_VIEW, JOIN_KEYS, USER_VIEW
from feature_repo.layout import FeatureRow, redis_host_port, view_layouts
from feature_repo.store import open_store
from features.definitions import ITEM_FEATURES, USER_FEATURES, FeatureValue
from stack.processes import Component
from streaming.online_store import KEY_TTL_S, OnlineStoreSink

SAMPLES: dict[str, FeatureValue] = {"int64": -3, "float64": 0.1, "string_list": ["i-ü", ""], "float_list": [0.5, -1.0]}


def feast_write(store: object, row: FeatureRow) -> None:
    """Write `row` with Feast's own provider path (what the job did before it wrote Redis directly)."""
    from datetime import UTC, datetime, timedelta

    from feast.protos.feast.types.EntityKey_pb2 import EntityKey
    from feast.protos.feast.types.Value_pb2 import DoubleList, StringList, Value

    def value(dtype: str, v: FeatureValue) -> Value:
        if dtype == "int64":
            return Value(int64_val=v)
        if dtype == "float64":
            return Value(double_val=v)
        if dtype == "string_list":
            return Value(string_list_val=StringList(val=v))
        return Value(double_list_val=DoubleList(val=v))

    specs = {spec.name: spec.dtype for spec in (*USER_FEATURES, *ITEM_FEATURES)}
    values = {name: value(specs[name], v) for name, v in row.values.items()}
    values[AS_OF_FIELD] = Value(int64_val=row.as_of_ms)
    key = EntityKey(join_keys=[JOIN_KEYS[row.view]], entity_values=[Value(string_val=row.entity_id)])
    assert row.timestamp_us is not None, "a row to write has its Feast timestamp"
    stamp = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=row.timestamp_us)
    view = store.get_feature_view(row.view)  # type: ignore[attr-defined]
    store._get_provider().online_write_batch(store.config, view, [(key, values, stamp, None)], None)  # type: ignore[attr-defined]


def test_rows_are_byte_for_byte_what_feast_writes_and_feast_reads_them(
    redis_server: Component, feast_registry: Path
) -> None:
    client = redis.Redis(*redis_host_port(redis_server.address))
    rows = [
        FeatureRow(
            USER_VIEW,
            "layout-user-ü",
            {s.name: SAMPLES[s.dtype] for s in USER_FEATURES},
            1_795_000_000_000,
            1_795_000_000_000_321,
            None,
        ),
        FeatureRow(
            ITEM_VIEW,
            "layout-item-1",
            {s.name: SAMPLES[s.dtype] for s in ITEM_FEATURES},
            1_795_000_000_500,
            1_795_000_000_500_000,
            None,
        ),
    ]
    store = open_store(redis_server.address, feast_registry, key_ttl_s=KEY_TTL_S)
    sink = OnlineStoreSink(redis_server.address)
    sink.open()
    try:
        for row in rows:
            key = sink.layouts[row.view].key(row.entity_id)
            client.delete(key)
            feast_write(store, row)
            by_feast = client.hgetall(key)
            assert client.ttl(key) > 0
            client.delete(key)
            sink.write([row])
            assert client.hgetall(key) == by_feast
            assert 0 < client.ttl(key) <= KEY_TTL_S
    finally:
        sink.close()

    user, item = rows
    names = [f"{USER_VIEW}:{s.name}" for s in USER_FEATURES] + [f"{USER_VIEW}:{AS_OF_FIELD}"]
    read = store.get_online_features(features=names, entity_rows=[{"user_id": user.entity_id}]).to_dict()
    for spec in USER_FEATURES:
        assert read[spec.name] == [user.values[spec.name]], spec.name
    assert read[AS_OF_FIELD] == [user.as_of_ms]
    names = [f"{ITEM_VIEW}:{s.name}" for s in ITEM_FEATURES]
    read = store.get_online_features(features=names, entity_rows=[{"item_id": item.entity_id}]).to_dict()
    for spec in ITEM_FEATURES:
        assert read[spec.name] == [item.values[spec.name]], spec.name


def test_the_layouts_reads_of_rows_feast_wrote_equal_feasts_own_reads(
    redis_server: Component, feast_registry: Path
) -> None:
    client = redis.Redis(*redis_host_port(redis_server.address))
    store = open_store(redis_server.address, feast_registry, key_ttl_s=KEY_TTL_S)
    layouts = view_layouts()
    rows = [
        FeatureRow(USER_VIEW, "read-user-ü", {s.name: SAMPLES[s.dtype] for s in USER_FEATURES}, 1_795_000_000_000, 1),
        FeatureRow(ITEM_VIEW, "read-item-1", {s.name: SAMPLES[s.dtype] for s in ITEM_FEATURES}, 1_795_000_000_500, 1),
    ]
    for row in rows:
        layout = layouts[row.view]
        client.delete(layout.key(row.entity_id))
        feast_write(store, row)
        ours = layout.decode(row.entity_id, client.hmget(layout.key(row.entity_id), layout.read_fields))
        refs = [f"{row.view}:{name}" for name in layout.names]
        by_feast = store.get_online_features(features=refs, entity_rows=[{JOIN_KEYS[row.view]: row.entity_id}])
        feast_row = {name: column[0] for name, column in by_feast.to_dict().items() if name != JOIN_KEYS[row.view]}
        assert ours is not None
        assert {**ours.values, AS_OF_FIELD: ours.as_of_ms} == feast_row
        assert (ours.view, ours.entity_id, ours.as_of_ms) == (row.view, row.entity_id, row.as_of_ms)
    missing = layouts[USER_VIEW].decode(
        "nobody", client.hmget(layouts[USER_VIEW].key("nobody"), layouts[USER_VIEW].read_fields)
    )
    assert missing is None
    client.close()


def test_an_error_reply_mid_batch_is_refused_and_the_connection_stays_in_step(redis_server: Component) -> None:
    """The sink reads every reply of a batch even after an error one: the next batch's replies are its own."""
    from streaming.errors import OnlineStoreUnavailable

    client = redis.Redis(*redis_host_port(redis_server.address))
    sink = OnlineStoreSink(redis_server.address)
    sink.open()
    rows = [
        FeatureRow(ITEM_VIEW, f"step-item-{n}", {s.name: SAMPLES[s.dtype] for s in ITEM_FEATURES}, 1, 10 + n, None)
        for n in range(3)
    ]
    keys = [sink.layouts[ITEM_VIEW].key(row.entity_id) for row in rows]
    try:
        client.delete(*keys)
        client.set(keys[1], b"not a hash")  # HSET on it answers WRONGTYPE
        try:
            sink.write(rows)
            raise AssertionError("a WRONGTYPE reply must be refused")
        except OnlineStoreUnavailable as refused:
            assert refused.cause == "error" and "WRONGTYPE" in str(refused)
        assert not sink._connection.can_read(timeout=0.2), "replies of the refused batch were left unread"
        assert client.exists(keys[0]) and client.exists(keys[2])  # Redis ran the rest of the batch
        client.delete(keys[1])
        sink.write([rows[1]])
        assert client.hget(keys[1], sink.layouts[ITEM_VIEW].timestamp_field) is not None
        assert 0 < client.ttl(keys[1]) <= KEY_TTL_S

        # A connection Redis dropped: the batch is refused as unavailable, the next one reconnects.
        client.client_kill_filter(_type="normal", skipme=True)
        try:
            sink.write(rows[:1])
            raise AssertionError("a write on a connection Redis closed must be refused")
        except OnlineStoreUnavailable as refused:
            assert refused.cause == "unavailable"
        sink.write(rows[:1])
        assert client.hget(keys[0], sink.layouts[ITEM_VIEW].timestamp_field) is not None
    finally:
        sink.close()
        client.delete(*keys)
