"""KafkaPartitionReader's out-of-range policy, with a fake consumer: resume at the earliest, count the gap."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError
from prometheus_client import REGISTRY

from streaming.operators import KafkaPartitionReader
from streaming.settings import StreamSettings


class ErrorMessage:
    def __init__(self, code: int) -> None:
        self._error = KafkaError(code)

    def error(self) -> KafkaError:
        return self._error


class FakeConsumer:
    def __init__(self, messages: list[Any], low: int, high: int) -> None:
        self.messages, self.low, self.high = messages, low, high
        self.assigned: list[tuple[int, int]] = []

    def consume(self, _n: int, _timeout: float) -> list[Any]:
        out, self.messages = self.messages, []
        return out

    def get_watermark_offsets(self, _tp: Any, timeout: float = 0, cached: bool = False) -> tuple[int, int]:
        return self.low, self.high

    def assign(self, partitions: list[Any]) -> None:
        self.assigned += [(tp.partition, tp.offset) for tp in partitions]


def reader_with(consumer: FakeConsumer, partition: int) -> KafkaPartitionReader:
    reader = KafkaPartitionReader(StreamSettings(topic="t-reader"))
    reader._consumers[partition] = consumer
    return reader


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_an_offset_before_the_log_start_resumes_at_the_earliest_and_counts_the_gap() -> None:
    consumer = FakeConsumer([ErrorMessage(KafkaError._AUTO_OFFSET_RESET)], low=1_000, high=5_000)
    skipped = sample("freshrank_stream_records_skipped_total", partition="7")
    records, reset = reader_with(consumer, 7).read(7, 400)
    assert records == [] and reset is not None
    assert (reset.resume_at, reset.cause) == (1_000, "retention")
    assert consumer.assigned == [(7, 1_000)]
    assert sample("freshrank_stream_records_skipped_total", partition="7") == skipped + 600
    assert sample("freshrank_stream_offset_resets_total", partition="7", cause="retention") >= 1


def test_an_offset_past_the_log_end_resumes_at_the_new_logs_start() -> None:
    consumer = FakeConsumer([ErrorMessage(KafkaError.OFFSET_OUT_OF_RANGE)], low=0, high=20)
    _records, reset = reader_with(consumer, 8).read(8, 500)
    assert reset is not None and (reset.resume_at, reset.cause) == (0, "log_reset")


def test_an_out_of_range_report_for_an_offset_inside_the_log_changes_nothing() -> None:
    consumer = FakeConsumer([ErrorMessage(KafkaError.OFFSET_OUT_OF_RANGE)], low=0, high=900)
    _records, reset = reader_with(consumer, 9).read(9, 500)
    assert reset is None and consumer.assigned == []
