from __future__ import annotations

import pytest

from features.partitioning import murmur2, partition_for

# Apache Kafka's UtilsTest.testMurmur2: the Java client's own results.
KAFKA_VECTORS = {
    b"21": -973932308,
    b"foobar": -790332482,
    b"a-little-bit-long-string": -985981536,
    b"a-little-bit-longer-string": -1486304829,
    b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8": -58897971,
    b"abc": 479470107,
}


@pytest.mark.parametrize(("key", "expected"), KAFKA_VECTORS.items())
def test_murmur2_is_bit_for_bit_the_java_clients(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


def test_partition_is_the_positive_hash_modulo_the_count() -> None:
    assert partition_for(b"foobar", 8) == (-790332482 & 0x7FFFFFFF) % 8
    assert {partition_for(f"u{n}".encode(), 4) for n in range(200)} == {0, 1, 2, 3}
