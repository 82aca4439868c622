"""OnlineStoreSink: writes feature rows to the Feast online store (Redis), one pipeline per batch.

Rows are written in Feast's Redis layout (feature_repo/layout.py, its one owner: keys,
field hashes, `Value` and `Timestamp` encodings, checked byte for byte against Feast),
so `get_online_features` and the feed API read what we write. Not through
Feast's `online_write_batch`: that path built protobuf objects per value and
read every entity's stored timestamp before writing (two round trips), about
250 us of CPU per row, the largest cost of the job (README, "Where the stream
job's time goes"). Here a row is one HSET (and one EXPIRE) in one pipelined send per batch.

Feast's writer skips a row whose timestamp is not newer than the stored one. We
need no read for that: `streaming.entities` gives each entity strictly
increasing row timestamps (wall-clock microseconds), a restored job's rows are
newer than a killed one's, and one entity is written by one task only.

Lifecycle as in quix-streams sinks: the constructor stores settings, `open()`
connects and checks the connection, `write(rows)` sends one batch, and an
unreachable Redis is a typed `OnlineStoreUnavailable` with a retry-after, never
a silent drop.

Faults and what they become (`OnlineStoreUnavailable.cause`, the label of
`freshrank_stream_sink_retries_total`): connection refused, reset or a socket
timeout (a frozen Redis answers nothing: every socket has a timeout) ->
`unavailable`; `OOM command not allowed` at maxmemory -> `oom`; a read-only
replica -> `readonly`; any other error reply -> `error`. The writer retries each
with backoff and reads nothing meanwhile. A retried batch is idempotent.

Writes re-arm a Redis TTL on the entity's hash (`key_ttl_s`, the views' TTL),
at most once per `REARM_S` per key: an entity that stops getting rows leaves
Redis by itself, 23 to 24 hours after its last row.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from typing import Any

import redis

from feature_repo.definitions import item_stream_features, user_stream_features
from feature_repo.layout import ENTITY_KEY_SERIALIZATION_VERSION, FeatureRow, redis_connection_params, view_layouts
from features.declared import DeclaredView
from streaming.errors import OnlineStoreUnavailable

# Seconds: a frozen Redis must raise within the backoff's reach instead of hanging the sink.
SOCKET_TIMEOUT_S = 5
CONNECT_TIMEOUT_S = 2
# A key's TTL is re-armed at most this often, so it lives KEY_TTL_S - REARM_S to KEY_TTL_S past its last row.
REARM_S = 3600
MAX_ARMED_KEYS = 500_000
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


def redis_client(connection_string: str) -> redis.Redis:
    """A client for Feast's `connection_string` (`host:port,password=...,ssl=true`), parsed as Feast parses it."""
    host, port, params = redis_connection_params(with_timeouts(connection_string))
    return redis.Redis(host=host, port=port, **params)


class OnlineStoreSink:
    def __init__(
        self,
        redis_address: str,
        project: str | None = None,
        key_ttl_s: int | None = KEY_TTL_S,
        declared: Sequence[DeclaredView] = (),
    ) -> None:
        self.redis_address = redis_address
        self.key_ttl_s = key_ttl_s
        self.layouts = view_layouts(project, declared)
        if not all(layout.matches_feast for layout in self.layouts.values()):
            raise RuntimeError(
                f"Feast's Redis key layout changed (entity_key_serialization_version "
                f"{ENTITY_KEY_SERIALIZATION_VERSION}): update feature_repo/layout.py"
            )
        self._client: redis.Redis | None = None
        self._connection: Any = None
        # Keys whose TTL was re-armed since `_armed_since`: each key gets one EXPIRE per REARM_S, not one per
        # row (half the commands). Bounded: cleared when full, after an hour, and after any failed write.
        self._armed: set[bytes] = set()
        self._armed_since = time.monotonic()

    def open(self) -> None:
        self._client = redis_client(self.redis_address)
        try:
            self._client.ping()
            # One connection for the sink's life, used as redis-py's pipeline uses it (pack, send, read
            # each reply) without a Pipeline object per batch: its command stack, option dicts and reply
            # callbacks were a third of a batch's cost in the interpreter. A connection that failed is
            # closed and connects again on the next send.
            self._connection = self._client.connection_pool.get_connection()
        except (redis.RedisError, OSError) as error:
            raise OnlineStoreUnavailable(str(error)[:200], retry_after_s=1.0) from error

    def write(self, rows: Sequence[FeatureRow]) -> None:
        """Write one batch in one pipeline. Raises OnlineStoreUnavailable if Redis refuses."""
        assert self._connection is not None, "open() the sink first"
        layouts, ttl = self.layouts, self.key_ttl_s
        if time.monotonic() - self._armed_since > REARM_S or len(self._armed) > MAX_ARMED_KEYS:
            self._armed.clear()
            self._armed_since = time.monotonic()
        armed = self._armed
        commands: list[tuple[Any, ...]] = []
        arming: list[bytes] = []
        for row in rows:
            layout = layouts[row.view]
            key = layout.key(row.entity_id)
            fields = layout.hash_fields(row.values, row.as_of_ms, row.timestamp_us)
            commands.append(("HSET", key, *itertools.chain.from_iterable(fields.items())))
            if ttl and key not in armed:
                commands.append(("EXPIRE", key, ttl))
                arming.append(key)
        connection = self._connection
        try:
            connection.send_packed_command(connection.pack_commands(commands), check_health=False)
            first_error: redis.ResponseError | None = None
            for _ in commands:  # every reply is read, so the connection stays in step after an error reply
                try:
                    connection.read_response()
                except redis.ResponseError as error:
                    first_error = first_error or error
            if first_error is not None:
                raise first_error
        except Exception as error:
            # Redis may have restarted empty: every key must get its TTL again.
            self._armed.clear()
            if not isinstance(error, redis.ResponseError):
                connection.disconnect()  # replies may be left unread: start clean
            refused = refusal(error)
            if refused is None:
                raise
            raise refused from error
        armed.update(arming)

    def close(self) -> None:
        if self._client is not None:
            if self._connection is not None:
                self._client.connection_pool.release(self._connection)
                self._connection = None
            self._client.close()
            self._client = None
