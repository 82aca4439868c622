"""`freshrank topics tail` on the embedded broker: decoded events, DLQ reasons, per-partition limits."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from cli.main import app
from features.codec import EventCodec, to_record
from tests.factories import make_event
from tests.integration.streamjob import produce_raw

runner = CliRunner()


def tail(bootstrap: str, *args: str) -> list[dict[str, object]]:
    result = runner.invoke(app, ["topics", "tail", *args, "--json", "--bootstrap", bootstrap])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_tail_shows_decoded_events_and_the_reason_of_dlq_records(
    bootstrap: str, fresh_topic: str, dlq_topic: str
) -> None:
    codec = EventCodec()
    events = [make_event(event_id=f"e-{n}", user_id="u-tail") for n in range(5)]
    produce_raw(bootstrap, fresh_topic, [(b"u-tail", codec.encode(e)) for e in events])

    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(dlq_topic, key=b"u-bad", value=b"not avro", headers=[("reason", b"value: magic byte is 110")])
    assert producer.flush(30) == 0

    everything = tail(bootstrap, fresh_topic, "--from-beginning")
    assert [r["event"] for r in everything] == [to_record(e) for e in events]  # type: ignore[index]
    assert {r["key"] for r in everything} == {"u-tail"}
    last_two = tail(bootstrap, fresh_topic, "--last", "2")
    assert [r["event"]["event_id"] for r in last_two] == ["e-3", "e-4"]  # type: ignore[index]

    (dead,) = tail(bootstrap, dlq_topic)
    assert dead["headers"] == {"reason": "value: magic byte is 110"}
    assert dead["event"] is None and "magic byte" in str(dead["decode_error"])


def test_tail_of_a_missing_topic_says_so(bootstrap: str) -> None:
    result = runner.invoke(app, ["topics", "tail", "no-such-topic", "--bootstrap", bootstrap])
    assert result.exit_code == 1
    assert "no-such-topic" in result.output and "cannot be read" in result.output
