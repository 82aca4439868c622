"""Time-bucketed sliding-window counters, and the compact state codec the aggregators share.

Semantics (the single definition every windowed feature and its test reference use).
A window of length W with bucket width b has n = W / b buckets; an event at time e
falls in bucket j = floor(e / b). The counter's head h is the largest bucket any
added event fell in. As of time t the window counts exactly the added events whose
bucket j satisfies

    j > k - n,   where k = max(floor(t / b), h),

i.e. events whose bucket start is > k * b - W. Taking k >= h means a query earlier
than the newest event is answered as of the newest event, so the window never
needs events it has already let go of. When t >= the newest event the window
covers the last W - b (t at a bucket start) to W (t just before the next) ms.

Bounded, order-independent state. `add` ignores an event whose bucket is <= h - n
(it cannot count at any allowed query time), and when h moves forward every bucket
<= h - n is dropped. So the kept buckets are always exactly the non-empty buckets
in (h - n, h] of the events added so far, holding integer sums (and min/max): the
state is a function of the *set* of added events, whatever order they arrived in,
and holds at most n buckets. Bucket j lives in ring slot j mod n; the kept buckets
span fewer than n indices, so slots never collide.

Never does I/O and never reads a clock: the query time is always a parameter.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_left, bisect_right, insort
from collections.abc import Sequence

import numpy as np

from features.definitions import WindowSpec

_HEADER = struct.Struct("<BcII")
_INT = struct.Struct("<q")
_EMPTY = -(2**63)  # bucket id of an unused ring slot
_BIG_ENDIAN = sys.byteorder == "big"


def _little(values: array[int]) -> bytes:
    if _BIG_ENDIAN:  # pragma: no cover - the format is little-endian everywhere
        values = array(values.typecode, values)
        values.byteswap()
    return values.tobytes()


_BLANK_RINGS: dict[tuple[int, int], array[int]] = {}


def _blank_ring(n: int, stride: int) -> array[int]:
    """A fresh ring of n unused slots (copied from a cached template: allocation is on the hot path)."""
    template = _BLANK_RINGS.get((n, stride))
    if template is None:
        template = _BLANK_RINGS[(n, stride)] = array("q", [_EMPTY] + [0] * (stride - 1)) * n
    return template[:]


class StateFormatError(ValueError):
    """Serialised aggregator state that this code cannot read (wrong kind, version or truncated)."""


class StateWriter:
    """Collects int64s and strings, in order, into one versioned byte string.

    Layout: format version (u8), kind (1 byte), int64 count (u32), string count (u32),
    the int64s little-endian, each string's length in code points (u32), then all
    strings concatenated as UTF-8. Readers take ints and strings back in write order.
    """

    __slots__ = ("_chunks", "_pending", "_count", "_strings")

    def __init__(self) -> None:
        self._chunks: list[bytes] = []
        self._pending = array("q")
        self._count = 0
        self._strings: list[str] = []

    def put(self, *values: int) -> None:
        self._pending.extend(values)

    def put_ints(self, values: Sequence[int]) -> None:
        self._pending.extend(values)

    def put_array(self, values: array[int]) -> None:
        """Append an array('q') as is (one copy, no per-item work)."""
        self._flush()
        self._chunks.append(_little(values))
        self._count += len(values)

    def put_block(self, block: np.ndarray) -> None:  # type: ignore[type-arg]
        """Append an int64 numpy array in C order."""
        self._flush()
        self._chunks.append(block.astype("<i8", copy=False).tobytes())
        self._count += block.size

    def put_strings(self, values: Sequence[str]) -> None:
        self._strings += values

    def _flush(self) -> None:
        if self._pending:
            self._chunks.append(_little(self._pending))
            self._count += len(self._pending)
            self._pending = array("q")

    def to_bytes(self, version: int, kind: bytes) -> bytes:
        self._flush()
        lengths = array("I", [len(s) for s in self._strings])
        blob = "".join(self._strings).encode("utf-8", "surrogatepass")
        header = _HEADER.pack(version, kind, self._count, len(lengths))
        return b"".join((header, *self._chunks, _little(lengths), blob))


class StateReader:
    """The inverse of `StateWriter`: take ints and strings back in the order they were written."""

    __slots__ = ("_data", "_pos", "_ints_end", "_strings", "_next_string")

    def __init__(self, data: bytes, version: int, kind: bytes) -> None:
        if len(data) < _HEADER.size:
            raise StateFormatError("state is truncated")
        got_version, got_kind, n_ints, n_strings = _HEADER.unpack_from(data)
        if got_kind != kind:
            raise StateFormatError(f"state is of kind {got_kind!r}, expected {kind!r}")
        if got_version != version:
            raise StateFormatError(f"state format version {got_version} is not supported, expected {version}")
        ints_end = _HEADER.size + 8 * n_ints
        lengths_end = ints_end + 4 * n_strings
        if len(data) < lengths_end:
            raise StateFormatError("state is truncated")
        self._data = data
        self._pos = _HEADER.size
        self._ints_end = ints_end
        lengths = array("I")
        lengths.frombytes(data[ints_end:lengths_end])
        if _BIG_ENDIAN:  # pragma: no cover
            lengths.byteswap()
        try:
            text = data[lengths_end:].decode("utf-8", "surrogatepass")
        except UnicodeDecodeError as exc:
            raise StateFormatError("state strings are not valid UTF-8") from exc
        strings: list[str] = []
        offset = 0
        for length in lengths:
            strings.append(text[offset : offset + length])
            offset += length
        if offset != len(text):
            raise StateFormatError("state strings do not match their lengths")
        self._strings = strings
        self._next_string = 0

    def _advance(self, count: int) -> int:
        start = self._pos
        end = start + 8 * count
        if count < 0 or end > self._ints_end:
            raise StateFormatError("state is truncated")
        self._pos = end
        return start

    def take(self) -> int:
        value: int = _INT.unpack_from(self._data, self._advance(1))[0]
        return value

    def take_array(self, count: int) -> array[int]:
        start = self._advance(count)
        values = array("q")
        values.frombytes(self._data[start : self._pos])
        if _BIG_ENDIAN:  # pragma: no cover
            values.byteswap()
        return values

    def take_ints(self, count: int) -> list[int]:
        return self.take_array(count).tolist()

    def take_strings(self, count: int) -> list[str]:
        start = self._next_string
        if count < 0 or start + count > len(self._strings):
            raise StateFormatError("state is missing strings")
        self._next_string = start + count
        return self._strings[start : start + count]

    def done(self) -> None:
        if self._pos != self._ints_end or self._next_string != len(self._strings):
            raise StateFormatError("state has trailing data")


class SlidingWindowCounter:
    """Sums of `width` non-negative integer fields over one sliding window (see the module docstring).

    With `track_extent`, each bucket also keeps the earliest and latest event time
    it holds, which is enough to rebuild gap-based sessions exactly (`run_at_head`)
    as long as the bucket width is no larger than the session gap.
    """

    __slots__ = (
        "spec",
        "width",
        "track_extent",
        "_b",
        "_n",
        "_stride",
        "_cells",
        "_totals",
        "_head",
        "_used",
    )

    def __init__(self, spec: WindowSpec, width: int, *, track_extent: bool = False) -> None:
        self.spec = spec
        self.width = width
        self.track_extent = track_extent
        self._b = spec.bucket_ms
        self._n = spec.n_buckets
        # Ring of n slots: [bucket id, field sums..., (min event time, max event time)].
        self._stride = 1 + width + (2 if track_extent else 0)
        self._cells = _blank_ring(self._n, self._stride)
        self._totals = [0] * width  # sums over every kept bucket
        self._head: int | None = None
        self._used = array("q")  # ids of the kept buckets, ascending; the last one is the head

    @property
    def head(self) -> int | None:
        """The largest bucket index any added event fell in, None before the first add."""
        return self._head

    def __len__(self) -> int:
        """Number of kept (non-empty) buckets."""
        return len(self._used)

    def add(self, event_time_ms: int, deltas: Sequence[tuple[int, int]]) -> bool:
        """Add `amount` to `field` for each (field, amount) pair of one event; False if the event is too old.

        Amounts must be positive (leave zero amounts out) so that every kept bucket
        is non-empty and its expiry always changes the totals.
        """
        if not deltas:
            raise ValueError("an event must add at least one positive amount")
        for _, amount in deltas:
            if amount <= 0:
                raise ValueError(f"amounts must be positive, got {amount}")
        j = event_time_ms // self._b
        head = self._head
        used = self._used
        if head is None or j > head:
            if used and used[0] <= j - self._n:
                self._expire_through(j - self._n)
            self._head = j
        elif j <= head - self._n:
            return False
        cells = self._cells
        stride = self._stride
        base = (j % self._n) * stride
        if cells[base] != j:
            # The slot is free: any other bucket mapping to it is <= head - n and was expired.
            cells[base] = j
            if self.track_extent:
                cells[base + stride - 2] = event_time_ms
                cells[base + stride - 1] = event_time_ms
            if not used or j > used[-1]:
                used.append(j)
            else:
                insort(used, j)
        elif self.track_extent:
            if event_time_ms < cells[base + stride - 2]:
                cells[base + stride - 2] = event_time_ms
            if event_time_ms > cells[base + stride - 1]:
                cells[base + stride - 1] = event_time_ms
        totals = self._totals
        for field, amount in deltas:
            cells[base + 1 + field] += amount
            totals[field] += amount
        return True

    def _expire_through(self, cutoff: int) -> None:
        """Drop every kept bucket <= cutoff."""
        cells, n, stride, width, totals = self._cells, self._n, self._stride, self.width, self._totals
        used = self._used
        blank = _blank_ring(1, stride)
        leaving = bisect_right(used, cutoff)
        for j in used[:leaving]:
            base = (j % n) * stride
            for field in range(width):
                totals[field] -= cells[base + 1 + field]
            cells[base : base + stride] = blank  # unused slots are all blank: canonical bytes
        del used[:leaving]

    def _lowest_counted(self, as_of_ms: int) -> int:
        head = self._head
        assert head is not None
        k = as_of_ms // self._b
        return (k if k > head else head) - self._n + 1

    def totals(self, as_of_ms: int) -> list[int]:
        """Field sums over the buckets the window counts as of `as_of_ms` (a new list)."""
        result = self._totals.copy()
        used = self._used
        if not used:
            return result
        lowest = self._lowest_counted(as_of_ms)
        if used[0] < lowest:
            cells, n, stride, width = self._cells, self._n, self._stride, self.width
            for j in used:
                if j >= lowest:
                    break
                base = (j % n) * stride
                for field in range(width):
                    result[field] -= cells[base + 1 + field]
        return result

    def next_change_ms(self, as_of_ms: int) -> int | None:
        """The first time > as_of_ms at which `totals` changes without new events: when the oldest
        counted bucket j leaves, at (j + n) * b. None when nothing is counted any more."""
        used = self._used
        if not used:
            return None
        first = bisect_left(used, self._lowest_counted(as_of_ms))
        return (used[first] + self._n) * self._b if first < len(used) else None

    def run_at_head(self, as_of_ms: int, gap_ms: int, count_field: int) -> tuple[int, int]:
        """The run of counted events ending at the newest one in which consecutive events are
        < gap_ms apart: (sum of `count_field` over it, its earliest event time); (0, 0) if the
        newest bucket is no longer counted. Needs `track_extent` and a bucket width <= gap_ms,
        so that one bucket is never split by a gap."""
        if not self.track_extent or self._b > gap_ms:
            raise ValueError("run_at_head needs track_extent and bucket_ms <= gap_ms")
        used = self._used
        if not used:
            return 0, 0
        lowest = self._lowest_counted(as_of_ms)
        cells, n, stride = self._cells, self._n, self._stride
        low_at, high_at, count_at = stride - 2, stride - 1, 1 + count_field
        head = used[-1]
        if head < lowest:
            return 0, 0
        base = (head % n) * stride
        count, start = cells[base + count_at], cells[base + low_at]
        for j in reversed(used[:-1]):  # kept buckets, newest first
            if j < lowest:
                break
            base = (j % n) * stride
            if start - cells[base + high_at] >= gap_ms:
                break
            count += cells[base + count_at]
            start = cells[base + low_at]
        return count, start

    def encode(self, out: StateWriter) -> None:
        """Append the counter canonically: the kept buckets in id order, or a plain copy of the ring
        when at least half of it is in use (cheaper than row by row)."""
        head, used = self._head, self._used
        dense = 2 * len(used) >= self._n
        out.put(0 if head is None else 1, head or 0, len(used), int(dense))
        out.put_ints(self._totals)
        if dense:
            out.put_array(used)
            out.put_array(self._cells)
        else:
            cells, n, stride = self._cells, self._n, self._stride
            for j in used:
                base = (j % n) * stride
                out.put_ints(cells[base : base + stride])

    @classmethod
    def decode(
        cls, spec: WindowSpec, width: int, reader: StateReader, *, track_extent: bool = False
    ) -> SlidingWindowCounter:
        counter = cls(spec, width, track_extent=track_extent)
        header = reader.take_ints(4 + width)
        has_head, head, n_used, dense = header[:4]
        counter._totals = header[4:]
        if not has_head:
            return counter
        counter._head = head
        n, stride = counter._n, counter._stride
        if dense:
            used = counter._used = reader.take_array(n_used)
            cells = counter._cells = reader.take_array(n * stride)
        else:
            cells = counter._cells
            rows = reader.take_array(n_used * stride)
            used = counter._used = rows[0::stride]
            for offset in range(0, len(rows), stride):
                base = (rows[offset] % n) * stride
                cells[base : base + stride] = rows[offset : offset + stride]
        if not used or used[-1] != head or used[0] <= head - n or cells[(head % n) * stride] != head:
            raise StateFormatError("window state is inconsistent")
        return counter


class KeyedWindowCounter:
    """Per-key positive integer sums over one sliding window anchored at its head, with the same
    bucket and expiry rules as `SlidingWindowCounter` (a query is always as of the head): one ring
    of n bucket ids shared by a ring of sums per key. `advance` moves the head without adding, so
    the window can follow events that carry no key."""

    __slots__ = ("spec", "_b", "_n", "_ids", "_sums", "_keys", "_rows", "_head", "_oldest")

    def __init__(self, spec: WindowSpec) -> None:
        self.spec = spec
        self._b = spec.bucket_ms
        self._n = spec.n_buckets
        self._ids = _blank_ring(self._n, 1)
        self._sums = array("q")  # key row r holds its ring at [r * n, (r + 1) * n)
        self._keys: list[str] = []  # row -> key; keys left without sums go when buckets expire
        self._rows: dict[str, int] = {}
        self._head: int | None = None
        self._oldest: int | None = None

    @property
    def head(self) -> int | None:
        return self._head

    def advance(self, event_time_ms: int) -> bool:
        """Move the head to the event's bucket if that is newer (expiring what leaves the window);
        False if the event is too old to count. `add` does this itself."""
        j = event_time_ms // self._b
        head = self._head
        if head is None or j > head:
            if head is not None and self._oldest is not None and self._oldest <= j - self._n:
                self._expire_through(j - self._n, head)
            self._head = j
            return True
        return j > head - self._n

    def add(self, event_time_ms: int, key: str, amount: int) -> bool:
        """Add a positive `amount` to `key` in the event's bucket; False if the event is too old."""
        if amount <= 0:
            raise ValueError(f"amounts must be positive, got {amount}")
        if not self.advance(event_time_ms):
            return False
        j = event_time_ms // self._b
        n = self._n
        ids = self._ids
        row = self._rows.get(key)
        if row is None:
            row = self._rows[key] = len(self._keys)
            self._keys.append(key)
            self._sums.extend(array("q", [0]) * n)
        slot = j % n
        if ids[slot] != j:
            ids[slot] = j
            if self._oldest is None or j < self._oldest:
                self._oldest = j
        self._sums[row * n + slot] += amount
        return True

    def _expire_through(self, cutoff: int, head: int) -> None:
        """Drop every kept bucket <= cutoff, then every key left without sums."""
        assert self._oldest is not None
        ids, sums, n = self._ids, self._sums, self._n
        for old in range(self._oldest, min(cutoff, head) + 1):
            slot = old % n
            if ids[slot] == old:
                ids[slot] = _EMPTY
                for row in range(len(self._keys)):
                    sums[row * n + slot] = 0
        self._oldest = next((i for i in range(cutoff + 1, head + 1) if ids[i % n] == i), None)
        live = [row for row in range(len(self._keys)) if any(sums[row * n : (row + 1) * n])]
        if len(live) < len(self._keys):
            self._keys = [self._keys[row] for row in live]
            self._rows = {key: row for row, key in enumerate(self._keys)}
            self._sums = array("q")
            for row in live:
                self._sums += sums[row * n : (row + 1) * n]

    def decayed_sums(self, decay: Sequence[int]) -> tuple[list[str], list[int]]:
        """(keys, sums) with each bucket's sum weighted by decay[head - bucket], for the keys with a
        non-zero sum, keys sorted. Exact integer arithmetic; decay needs n positive entries."""
        head = self._head
        if head is None or not self._keys:
            return [], []
        weights = np.array([0 if i == _EMPTY else decay[head - i] for i in self._ids], dtype=np.int64)
        sums = np.frombuffer(self._sums, dtype=np.int64).reshape(len(self._keys), self._n)
        scores: list[int] = (sums @ weights).tolist()
        live = sorted((key, score) for key, score in zip(self._keys, scores, strict=True) if score)
        return [key for key, _ in live], [score for _, score in live]

    def encode(self, out: StateWriter) -> None:
        """Append canonically: keys that still hold sums, sorted, each with its ring."""
        head = self._head
        if head is None:
            out.put(0)
            return
        sums, n = self._sums, self._n
        rings = sorted((key, sums[row * n : (row + 1) * n]) for row, key in enumerate(self._keys))
        live = [(key, ring) for key, ring in rings if any(ring)]
        out.put(1, head, _EMPTY if self._oldest is None else self._oldest, len(live))
        out.put_strings([key for key, _ in live])
        out.put_array(self._ids)
        for _, ring in live:
            out.put_ints(ring)

    @classmethod
    def decode(cls, spec: WindowSpec, reader: StateReader) -> KeyedWindowCounter:
        counter = cls(spec)
        if reader.take() == 0:
            return counter
        head, oldest, n_keys = reader.take_ints(3)
        n = counter._n
        counter._head = head
        counter._oldest = None if oldest == _EMPTY else oldest
        counter._keys = reader.take_strings(n_keys)
        counter._rows = {key: row for row, key in enumerate(counter._keys)}
        counter._ids = reader.take_array(n)
        counter._sums = reader.take_array(n_keys * n)
        if max(counter._ids) > head or (counter._oldest is not None and counter._oldest <= head - n):
            raise StateFormatError("window state is inconsistent")
        return counter
