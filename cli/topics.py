"""`freshrank topics tail`: read a topic the way the stream job does, and show each record decoded.

Debian's kcat links librdkafka 2.0.2, which cannot read the embedded broker's
ApiVersions response (see README, "Kafka tools"); this reader uses the project's
own confluent-kafka (librdkafka 2.16) with manual `assign()` and explicit
offsets, which the embedded broker serves. It never joins a consumer group and
never commits offsets, so tailing a topic cannot move anyone's lag.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from features.codec import EventCodec, SchemaLookupError, to_record
from features.events import InteractionEvent


@dataclass(frozen=True)
class TailedRecord:
    partition: int
    offset: int
    timestamp_ms: int | None
    key: str | None
    headers: dict[str, str]
    event: dict[str, Any] | None
    problem: str | None  # why the value did not decode, if it did not

    def as_json(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "offset": self.offset,
            "timestamp_ms": self.timestamp_ms,
            "key": self.key,
            "headers": self.headers,
            "event": self.event,
            "decode_error": self.problem,
        }


def _text(raw: bytes | str | None) -> str | None:
    if raw is None:
        return None
    if isinstance(raw, str):
        return raw
    return raw.decode("utf-8", errors="backslashreplace")


def _headers(raw: Any) -> dict[str, str]:
    """Kafka headers as text; a repeated name keeps its last value."""
    return {str(name): _text(value) or "" for name, value in (raw or [])}


def decode(codec: EventCodec, value: bytes | None) -> tuple[dict[str, Any] | None, str | None]:
    try:
        decoded = codec.decode(value)
    except SchemaLookupError as error:
        return None, str(error)
    if isinstance(decoded, InteractionEvent):
        return to_record(decoded), None
    return None, decoded.reason


def tail(
    client_config: dict[str, Any],
    topic: str,
    codec: EventCodec,
    *,
    last: int | None,
    from_beginning: bool,
    follow: bool,
    idle_s: float = 2.0,
    timeout_s: float = 15.0,
) -> Iterator[TailedRecord]:
    """Records of every partition of `topic`: the last `last` per partition, or all with `from_beginning`.

    Without `follow` it stops once the topic has been quiet for `idle_s`; with `follow` it
    prints records as they come until interrupted.
    """
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    consumer = Consumer(
        {
            **client_config,
            "group.id": "freshrank-topics-tail",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        metadata = consumer.list_topics(topic, timeout=timeout_s)
        described = metadata.topics.get(topic)
        if described is None or described.error is not None or not described.partitions:
            reason = described.error.str() if described is not None and described.error is not None else "no partitions"
            raise LookupError(f"topic {topic!r} cannot be read: {reason}")
        assignment = []
        ends: dict[int, int] = {}
        for partition in sorted(described.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
            ends[partition] = high
            start = low if from_beginning or last is None else max(low, high - last)
            assignment.append(TopicPartition(topic, partition, start))
    except KafkaException as error:
        raise LookupError(f"cannot read {topic!r}: {error.args[0].str()}") from None
    consumer.assign(assignment)
    # Without --follow: read until the topic has been quiet for idle_s, keep the last `last`
    # per partition. The end is not taken from the high watermark: Tansu 0.6 reports the base
    # offset of the last batch + 1 (a 5-record batch at offset 0 gives 1, not 5).
    kept: dict[int, deque[TailedRecord]] = {p: deque(maxlen=last) for p in ends}
    last_seen = time.monotonic()
    try:
        while True:
            message = consumer.poll(0.2)
            if message is None:
                if not follow and time.monotonic() - last_seen > idle_s:
                    break
                continue
            last_seen = time.monotonic()
            failure = message.error()
            if failure is not None:
                raise LookupError(f"reading {topic!r}: {failure.str()}")
            event, problem = decode(codec, message.value())
            kind, stamp = message.timestamp()
            record = TailedRecord(
                partition=int(message.partition() or 0),
                offset=int(message.offset() or 0),
                timestamp_ms=stamp if kind else None,
                key=_text(message.key()),
                headers=_headers(message.headers()),
                event=event,
                problem=problem,
            )
            if follow:
                yield record
            else:
                kept[record.partition].append(record)
        for partition in sorted(kept):
            yield from kept[partition]
    finally:
        consumer.close()
