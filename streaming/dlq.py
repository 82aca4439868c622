"""DeadLetterSink: writes refused records to the DLQ topic and confirms each by its delivery report.

Lifecycle as in quix-streams sinks: the constructor stores settings, `open()`
connects, `write(letters)` produces one poll's letters and waits for every
delivery report. A letter that was not delivered (topic missing, ACL denied,
too large, broker away) raises `DlqUnavailable` with the letters still owed;
the caller retries those and reads nothing more meanwhile (backpressure), so a
refused record is never skipped. `flush()` alone cannot tell: it returns 0
after a failed message too.

Headers: reason (at most 1 kB), kind (invalid | late), source topic, partition
and offset, original.size, and truncated=true when the record was cut.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, Producer

from streaming.errors import DlqUnavailable
from streaming.partition import DeadLetter


class DeadLetterSink:
    def __init__(self, kafka_config: dict[str, Any], topic: str, source_topic: str, timeout_s: float = 10.0) -> None:
        self.kafka_config = kafka_config
        self.topic = topic
        self.source_topic = source_topic
        self.timeout_s = timeout_s
        self._producer: Producer | None = None

    def open(self) -> None:
        self._producer = Producer(
            {
                **self.kafka_config,
                "enable.idempotence": True,
                "linger.ms": 5,
                # Report a failure within the retry loop's reach instead of librdkafka's default 5 min.
                "message.timeout.ms": int(self.timeout_s * 1000),
            }
        )

    def _headers(self, letter: DeadLetter) -> list[tuple[str, str | bytes | None]]:
        headers: list[tuple[str, str | bytes | None]] = [
            ("reason", letter.reason.encode()),
            ("kind", letter.kind.encode()),
            ("source.topic", self.source_topic.encode()),
            ("source.partition", str(letter.partition).encode()),
            ("source.offset", str(letter.offset).encode()),
            ("original.size", str(letter.original_size).encode()),
        ]
        if letter.truncated:
            headers.append(("truncated", b"true"))
        return headers

    def write(self, letters: Sequence[DeadLetter]) -> None:
        """Produce every letter and wait for all delivery reports; raise DlqUnavailable with the undelivered."""
        producer = self._producer
        assert producer is not None, "open() first"
        failed: list[tuple[DeadLetter, str]] = []
        pending = len(letters)

        def report(letter: DeadLetter) -> Any:
            def on_delivery(error: KafkaError | None, _message: Any) -> None:
                nonlocal pending
                pending -= 1
                if error is not None:
                    failed.append((letter, error.str()))

            return on_delivery

        for letter in letters:
            try:
                producer.produce(
                    self.topic,
                    key=letter.key,
                    value=letter.value,
                    headers=self._headers(letter),
                    on_delivery=report(letter),
                )
            except Exception as error:  # BufferError (queue full), KafkaException (too large, fatal)
                pending -= 1
                failed.append((letter, str(error)))
            producer.poll(0)
        # Every produced message gets a report within message.timeout.ms; wait for all of them.
        deadline = time.monotonic() + 2 * self.timeout_s + 5
        while pending > 0 and time.monotonic() < deadline:
            producer.flush(1.0)
        if pending > 0:
            raise DlqUnavailable(f"{pending} DLQ writes got no delivery report", [], fatal=True)
        if failed:
            raise DlqUnavailable(failed[0][1], [letter for letter, _ in failed])

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
            self._producer = None
