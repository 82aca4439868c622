"""OnlineStoreSink: writes feature rows to the Feast online store (Redis) in pipelined batches.

Writes go through Feast's provider API, so the Redis encoding stays Feast's and
`get_online_features` reads what we write. Lifecycle as in quix-streams sinks:
the constructor stores settings, `open()` connects and checks the connection,
`write(rows)` sends one batch, and an unreachable Redis is a typed
`OnlineStoreUnavailable` with a retry-after, never a silent drop.

Faults and what they become (`OnlineStoreUnavailable.cause`, the label of
`freshrank_stream_sink_retries_total`): connection refused, reset or a socket
timeout (a frozen Redis answers nothing: every socket has a timeout) ->
`unavailable`; `OOM command not allowed` at maxmemory -> `oom`; a read-only
replica -> `readonly`; any other error reply -> `error`. The writer retries each
with backoff and reads nothing meanwhile. A retried batch is idempotent: rows
already written carry the same timestamp and Feast skips them.

Every write re-arms a Redis TTL on the entity's hash (`key_ttl_s`, the views'
TTL): an entity that stops getting rows leaves Redis by itself.

Feast skips a row whose timestamp is not strictly newer than the stored one;
`streaming.entities` guarantees strictly increasing `timestamp_us` per key.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import DoubleList, StringList, Value

from feature_repo.definitions import AS_OF_FIELD, ITEM_VIEW, USER_VIEW, item_stream_features, user_stream_features
from feature_repo.store import open_store
from features.definitions import ITEM_FEATURES, USER_FEATURES, FeatureValue
from streaming.entities import FeatureRow
from streaming.errors import OnlineStoreUnavailable

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
JOIN_KEYS = {USER_VIEW: "user_id", ITEM_VIEW: "item_id"}
DTYPES = {
    USER_VIEW: {spec.name: spec.dtype for spec in USER_FEATURES},
    ITEM_VIEW: {spec.name: spec.dtype for spec in ITEM_FEATURES},
}


def to_value(dtype: str, value: FeatureValue) -> Value:
    if isinstance(value, list):
        if dtype == "string_list":
            return Value(string_list_val=StringList(val=[str(v) for v in value]))
        if dtype == "float_list":
            return Value(double_list_val=DoubleList(val=[float(v) for v in value]))
    elif dtype == "int64":
        return Value(int64_val=int(value))
    elif dtype == "float64":
        return Value(double_val=float(value))
    raise ValueError(f"feature value {value!r} does not fit dtype {dtype}")


# Seconds: a frozen Redis must raise within the backoff's reach instead of hanging the sink.
SOCKET_TIMEOUT_S = 5
CONNECT_TIMEOUT_S = 2
KEY_TTL_S = max(int(view.ttl.total_seconds()) for view in (user_stream_features, item_stream_features) if view.ttl)


def with_timeouts(connection_string: str) -> str:
    """Feast's connection string with socket timeouts added (Feast JSON-parses `name=value` options)."""
    options = {part.partition("=")[0] for part in connection_string.split(",") if "=" in part}
    extra = [
        f"{name}={value}"
        for name, value in (("socket_timeout", SOCKET_TIMEOUT_S), ("socket_connect_timeout", CONNECT_TIMEOUT_S))
        if name not in options
    ]
    return ",".join([connection_string, *extra])


def refusal(error: Exception) -> OnlineStoreUnavailable | None:
    """What a Redis error means for the writer, or None if it is not a Redis refusal."""
    if isinstance(error, redis.ResponseError):
        # A pipeline prefixes the reply with the failed command, binary key included: keep the reply only.
        reply = str(error).rpartition("caused error: ")[2]
        reply = "".join(c for c in reply[:200] if c.isprintable())
        if isinstance(error, redis.ReadOnlyError) or reply.startswith("READONLY"):
            return OnlineStoreUnavailable("Redis is a read-only replica", retry_after_s=1.0, cause="readonly")
        # redis-py raises OutOfMemoryError for an OOM reply and strips the "OOM" code from the text.
        if isinstance(error, redis.exceptions.OutOfMemoryError) or "maxmemory" in reply:
            return OnlineStoreUnavailable("Redis is at maxmemory", retry_after_s=1.0, cause="oom")
        return OnlineStoreUnavailable(f"Redis error reply: {reply}", retry_after_s=1.0, cause="error")
    if isinstance(error, (redis.ConnectionError, redis.TimeoutError, ConnectionError, OSError)):
        return OnlineStoreUnavailable(type(error).__name__, retry_after_s=0.5)
    return None


def timestamp_of(timestamp_us: int) -> datetime:
    return EPOCH + timedelta(microseconds=timestamp_us)


class OnlineStoreSink:
    def __init__(self, redis_address: str, registry_path: Path | str, key_ttl_s: int | None = KEY_TTL_S) -> None:
        self.redis_address = with_timeouts(redis_address)
        self.registry_path = registry_path
        self.key_ttl_s = key_ttl_s
        self._store: Any = None
        self._views: dict[str, Any] = {}

    def open(self) -> None:
        self._store = open_store(self.redis_address, self.registry_path, self.key_ttl_s)
        self._views = {name: self._store.get_feature_view(name) for name in (USER_VIEW, ITEM_VIEW)}
        self._check()

    def _check(self) -> None:
        address, *options = self.redis_address.split(",")
        host, _, port = address.rpartition(":")
        password = next((o.partition("=")[2] for o in options if o.startswith("password=")), None)
        client = redis.Redis(
            host=host,
            port=int(port),
            password=password,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
            socket_timeout=SOCKET_TIMEOUT_S,
        )
        try:
            client.ping()
        except (redis.RedisError, OSError) as error:
            raise OnlineStoreUnavailable(str(error)[:200], retry_after_s=1.0) from error
        finally:
            client.close()

    def write(self, rows: Sequence[FeatureRow]) -> None:
        """Write one batch (one Redis pipeline per view). Raises OnlineStoreUnavailable if Redis is down."""
        by_view: dict[str, list[tuple[EntityKey, dict[str, Value], datetime, None]]] = {}
        for row in rows:
            dtypes = DTYPES[row.view]
            values = {name: to_value(dtypes[name], value) for name, value in row.values.items()}
            values[AS_OF_FIELD] = Value(int64_val=row.as_of_ms)
            key = EntityKey(join_keys=[JOIN_KEYS[row.view]], entity_values=[Value(string_val=row.entity_id)])
            by_view.setdefault(row.view, []).append((key, values, timestamp_of(row.timestamp_us), None))
        provider = self._store._get_provider()
        try:
            for view, data in by_view.items():
                provider.online_write_batch(self._store.config, self._views[view], data, None)
        except Exception as error:
            refused = refusal(error)
            if refused is None:
                raise
            raise refused from error

    def close(self) -> None:
        self._store = None
