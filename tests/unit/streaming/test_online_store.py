"""How the sink names each Redis refusal (the writer retries all of them), and its socket timeouts."""

from __future__ import annotations

import pytest
import redis

from streaming.online_store import KEY_TTL_S, refusal, with_timeouts


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."), "oom"),
        # What a pipeline raises: the failed command (binary key and all) before Redis's reply.
        (
            redis.ResponseError(
                "Command # 1 (HSET \x00\xff item_id) of pipeline caused error: "
                "command not allowed when used memory > maxmemory"
            ),
            "oom",
        ),
        (redis.ReadOnlyError("You can't write against a read only replica."), "readonly"),
        (redis.ConnectionError("Connection refused"), "unavailable"),
        (redis.TimeoutError("Timeout reading from socket"), "unavailable"),
        (ConnectionResetError(), "unavailable"),
        (redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), "error"),
    ],
)
def test_every_redis_refusal_is_retried_under_a_named_cause(error: Exception, cause: str) -> None:
    refused = refusal(error)
    assert refused is not None and refused.cause == cause and refused.retry_after_s > 0


def test_a_bug_is_not_mistaken_for_a_refusal() -> None:
    assert refusal(ValueError("feature value does not fit")) is None


def test_sockets_get_timeouts_unless_the_user_set_them() -> None:
    assert with_timeouts("h:6379") == "h:6379,socket_timeout=5,socket_connect_timeout=2"
    assert (
        with_timeouts("h:6379,password=x,socket_timeout=1")
        == "h:6379,password=x,socket_timeout=1,socket_connect_timeout=2"
    )


def test_keys_expire_with_the_views_ttl() -> None:
    assert KEY_TTL_S == 86_400


def test_each_key_gets_one_expire_per_rearm_period_and_again_after_a_failed_write() -> None:
    from feature_repo.layout import FeatureRow
    from streaming import online_store
    from streaming.errors import OnlineStoreUnavailable

    class Connection:
        """The calls the sink makes on redis-py's Connection: a pipelined send, then one reply per command."""

        def __init__(self) -> None:
            self.log: list[tuple[object, ...]] = []
            self.fail = False
            self.unread = 0

        def pack_commands(self, commands: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
            return commands

        def send_packed_command(self, commands: list[tuple[object, ...]], check_health: bool) -> None:
            self.log += commands
            self.unread += len(commands)

        def read_response(self) -> int:
            if self.fail:
                raise redis.ConnectionError("Connection reset by peer")
            self.unread -= 1
            return 1

        def disconnect(self) -> None:
            self.unread = 0

    sink = online_store.OnlineStoreSink("h:1", project="freshrank")
    client = Connection()
    sink._connection = client
    row = FeatureRow("item_stream_features", "i-1", {}, 1, 1, None)

    def expires() -> int:
        count = sum(1 for args in client.log if args[0] == "EXPIRE")
        client.log.clear()
        return count

    sink.write([row, row._replace(entity_id="i-2")])
    assert client.unread == 0  # every reply read: the connection stays in step
    assert expires() == 2
    sink.write([row])
    assert expires() == 0
    client.fail = True
    with pytest.raises(OnlineStoreUnavailable):
        sink.write([row])
    client.fail = False
    client.log.clear()
    sink.write([row])  # Redis may have restarted empty
    assert expires() == 1
    sink._armed_since -= online_store.REARM_S + 1
    sink.write([row])
    assert expires() == 1
