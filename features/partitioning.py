"""Which partition a record key belongs to: Kafka's default partitioner (murmur2), as Java clients use it.

The topic is keyed by user_id and a user's state lives with the partition that
reads it, so every producer must put a key in the same partition. Java's
default partitioner, librdkafka's `murmur2_random` and this module agree; the
stream job refuses (to the DLQ) a record found in any other partition instead
of letting one user's events split over two partitions' state.

Pure: no I/O. Vectors from Kafka's own UtilsTest.testMurmur2 pin it in the tests.
"""

from __future__ import annotations

from functools import lru_cache

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF

LIBRDKAFKA_PARTITIONER = "murmur2_random"
"""librdkafka's name for the same partitioner (keyless records go to a random partition)."""


def murmur2(data: bytes) -> int:
    """Kafka's `Utils.murmur2`: a signed 32-bit int, bit for bit the Java client's."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    tail = length & ~3
    for i in range(0, tail, 4):
        k = data[i] | (data[i + 1] << 8) | (data[i + 2] << 16) | (data[i + 3] << 24)
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


@lru_cache(maxsize=65_536)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition Kafka's default partitioner picks for `key` among `partitions` (cached: keys repeat)."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions
