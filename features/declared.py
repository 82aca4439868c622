"""Declared streaming features: Feast `StreamFeatureView` aggregations, validated and computed exactly.

A feature team declares a view in its Feast repo (`KafkaSource` on the interactions
topic + `StreamFeatureView` with `Aggregation(column, function, time_window,
slide_interval)`). `feature_repo/declared.py` turns each Feast object into a plain
`ViewDraft`; this module decides whether freshrank can run it (`validate`, which
names the view, the field and the reason of every refusal) and computes it
(`DeclaredFeatures`, the per-entity aggregate the stream job keeps in state and the
training replay runs).

How Feast's windows map onto the bucket grid of the built-in features
(features/windows.py): `slide_interval` is the bucket width b and `time_window` the
length W, so n = W / b buckets. As of t = max(as_of, the entity's newest event in
the view), an aggregation covers exactly the events whose bucket floor(e / b) is
> floor(t / b) - n: Feast's hopping window of length W, advanced every b, that
contains t. Feast defaults slide_interval to time_window, which is then a
tumbling window (one bucket). Refused: W not a multiple of b, b under 1 s, W over
24 h (entities idle that long leave state, features.admission.EVICT_AFTER_MS), more
than `MAX_BUCKETS` buckets.

Functions (Feast 0.67's set): count (events with a non-null column value),
count_distinct (distinct non-null values), sum, mean, max, min (integer columns
only: watch_ms, position). Empty windows give 0 for count, count_distinct and sum,
and null for mean, max and min. An event whose column is null changes no value but
still moves the window (it is an event of the entity).

Filter: `tags={"freshrank.event_types": "click,view"}` on the view keeps only those
event types (a set lookup per event, no pandas). Feast `udf` / feature
transformations are refused: the job does not run arbitrary pandas or Python code
per event.

State guarantees (tested against a brute-force reference in
tests/unit/features/test_declared.py): every value is a function of the *set* of
applied events (order independent, byte-identical `to_bytes()`); an event whose
bucket already left the window at the view's newest event is ignored, as in the
built-ins; `apply` assumes unique event ids (admission deduplicates). State is
stored per aggregation under its identity (column, function, window, slide), so a
changed view restores the aggregations it kept and starts new ones empty,
flagged as warming up until one window has passed (`warming_up`).

Never does I/O, never reads a clock, never imports Feast or an engine.
"""

from __future__ import annotations

import json
from bisect import bisect_right, insort
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, Literal

from features.admission import EVICT_AFTER_MS
from features.definitions import DAY_MS, SECOND_MS, FeatureDtype, FeatureValue, WindowSpec
from features.events import InteractionEvent, point_in_time
from features.windows import StateFormatError, StateReader, StateWriter

FUNCTIONS: Final = ("count", "count_distinct", "sum", "mean", "max", "min")
ENTITY_KEYS: Final = ("user_id", "item_id")
FILTER_TAG: Final = "freshrank.event_types"
MAX_WINDOW_MS: Final = DAY_MS
MIN_BUCKET_MS: Final = SECOND_MS
MAX_BUCKETS: Final = 1440
TIMESTAMP_COLUMN: Final = "event_time"
AS_OF_FIELD: Final = "as_of_ms"  # feature_repo.definitions.AS_OF_FIELD: every row says as of when it holds

ColumnKind = Literal["string", "int", "timestamp"]
_NUMERIC_FUNCTIONS: Final = frozenset({"sum", "mean", "max", "min"})
_SCHEMA_FILE: Final = Path(__file__).parent / "schemas" / "interaction_event.v1.avsc"


def _event_columns() -> dict[str, ColumnKind]:
    """Column name -> kind, from the event's Avro schema (the columns a view may aggregate)."""
    kinds: dict[str, ColumnKind] = {}
    for entry in json.loads(_SCHEMA_FILE.read_text())["fields"]:
        types = entry["type"] if isinstance(entry["type"], list) else [entry["type"]]
        (kind,) = [t for t in types if t != "null"]
        if isinstance(kind, dict) and kind.get("logicalType") == "timestamp-millis":
            kinds[entry["name"]] = "timestamp"
        elif kind in ("int", "long"):
            kinds[entry["name"]] = "int"
        else:
            kinds[entry["name"]] = "string"  # string, and the event_type enum (compared by its symbol)
    return kinds


EVENT_COLUMNS: Final = _event_columns()
EVENT_TYPES: Final = frozenset(
    next(f for f in json.loads(_SCHEMA_FILE.read_text())["fields"] if f["name"] == "event_type")["type"]["symbols"]
)


def column_value(event: InteractionEvent, column: str) -> int | str | None:
    """An event's value of an Avro column (event_type as its symbol, event_time in epoch ms)."""
    if column == TIMESTAMP_COLUMN:
        return event.event_time_ms
    value: int | str | None = getattr(event, column)
    return value


# --- what the Feast repo declares, as plain data ---------------------------------


@dataclass(frozen=True, slots=True)
class AggregationDraft:
    """One Feast `Aggregation` as declared: windows in ms (None when not given)."""

    column: str
    function: str
    window_ms: int | None
    slide_ms: int | None
    name: str  # Feast's resolved output name: name, or {function}_{column}_{window seconds}s


@dataclass(frozen=True, slots=True)
class ViewDraft:
    """One Feast `StreamFeatureView` as declared, before freshrank decides whether it can run it."""

    name: str
    source_kind: str  # the source's class name: KafkaSource is the only one run
    topic: str | None
    message_format: str | None  # AvroFormat | JsonFormat | ...
    source_timestamp_field: str
    timestamp_field: str
    join_keys: tuple[tuple[str, str], ...]  # (join key, Feast value type name) per entity
    aggregations: tuple[AggregationDraft, ...]
    schema: Mapping[str, str]  # feature name -> Feast dtype name (Int64, Float64, ...)
    transformation: str | None  # "python udf", "pandas udf", ... when one is declared
    tags: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why freshrank cannot run (part of) a declared view: the view, the field at fault, the reason."""

    view: str
    field: str
    reason: str

    def __str__(self) -> str:
        return f"{self.view}: {self.field}: {self.reason}"


# --- what the job runs ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AggregationSpec:
    """One validated aggregation: its output feature, the column, the function and the bucketed window."""

    name: str
    column: str
    function: str
    window: WindowSpec
    dtype: FeatureDtype

    @property
    def identity(self) -> str:
        """What the state of this aggregation depends on; a renamed output keeps its state."""
        return f"{self.function}({self.column})/{self.window.length_ms}/{self.window.bucket_ms}"


@dataclass(frozen=True, slots=True)
class DeclaredView:
    """A view the job computes: keyed by `entity_key`, fed by events whose type is in `event_types` (None: all)."""

    name: str
    entity_key: str
    aggregations: tuple[AggregationSpec, ...]
    event_types: frozenset[str] | None = None

    @property
    def feature_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.aggregations)

    @property
    def input_names(self) -> tuple[str, ...]:
        """`"<view>:<feature>"` per aggregation: the column's name among a ranker's inputs (Feast's reference)."""
        return tuple(f"{self.name}:{name}" for name in self.feature_names)

    def admits(self, event: InteractionEvent) -> bool:
        return self.event_types is None or event.event_type.value in self.event_types


def _output_kind(function: str) -> Literal["int", "float"]:
    return "float" if function == "mean" else "int"


_DTYPES: Final[dict[str, FeatureDtype]] = {"Int64": "int64", "Float64": "float64"}


def _human_ms(ms: int) -> str:
    return f"{ms // 1000} s" if ms % 1000 == 0 else f"{ms} ms"


def _window(view: str, agg: AggregationDraft) -> WindowSpec | Refusal:
    where = f"aggregation {agg.name}"
    if agg.window_ms is None:
        return Refusal(view, where, "time_window is required: freshrank computes sliding windows only")
    slide = agg.slide_ms or agg.window_ms
    if agg.window_ms <= 0 or slide <= 0:
        return Refusal(view, where, "time_window and slide_interval must be positive")
    if agg.window_ms > MAX_WINDOW_MS:
        return Refusal(
            view,
            where,
            f"time_window {_human_ms(agg.window_ms)} is longer than 24 h: idle entities leave state after "
            f"{EVICT_AFTER_MS // 3_600_000} h, which is exact only for windows up to 24 h",
        )
    if slide < MIN_BUCKET_MS or slide % MIN_BUCKET_MS:
        return Refusal(view, where, f"slide_interval {_human_ms(slide)} must be a whole number of seconds, >= 1 s")
    if agg.window_ms % slide:
        return Refusal(
            view,
            where,
            f"time_window {_human_ms(agg.window_ms)} is not a multiple of slide_interval {_human_ms(slide)}: "
            "the bucket grid cannot represent it (slide_interval is the bucket width)",
        )
    if agg.window_ms // slide > MAX_BUCKETS:
        return Refusal(
            view,
            where,
            f"time_window / slide_interval = {agg.window_ms // slide} buckets; at most {MAX_BUCKETS} "
            "(state per entity grows with the bucket count): use a larger slide_interval",
        )
    return WindowSpec(f"{agg.window_ms // 1000}s", agg.window_ms, slide)


def _aggregation(view: ViewDraft, agg: AggregationDraft) -> AggregationSpec | list[Refusal]:
    name = view.name
    where = f"aggregation {agg.name}"
    refusals: list[Refusal] = []
    if agg.function not in FUNCTIONS:
        refusals.append(Refusal(name, where, f"unknown function {agg.function!r}; supported: {', '.join(FUNCTIONS)}"))
    kind = EVENT_COLUMNS.get(agg.column)
    if kind is None:
        refusals.append(
            Refusal(
                name,
                where,
                f"column {agg.column!r} is not in the event schema (InteractionEvent: {', '.join(EVENT_COLUMNS)})",
            )
        )
    elif agg.function in _NUMERIC_FUNCTIONS and kind != "int":
        refusals.append(
            Refusal(
                name,
                where,
                f"{agg.function} needs an integer column; {agg.column!r} is a {kind}. Integer columns: "
                + ", ".join(c for c, k in EVENT_COLUMNS.items() if k == "int"),
            )
        )
    window = _window(name, agg)
    if isinstance(window, Refusal):
        refusals.append(window)
    declared = view.schema.get(agg.name)
    dtype: FeatureDtype = "float64"
    if agg.function in FUNCTIONS:
        wanted = "Float64" if _output_kind(agg.function) == "float" else "Int64"
        allowed = ("Float64",) if wanted == "Float64" else ("Int64", "Float64")
        if declared is None:
            refusals.append(
                Refusal(
                    name,
                    f"schema field {agg.name}",
                    f"the view's schema has no field {agg.name!r} for this aggregation: add "
                    f"Field(name={agg.name!r}, dtype={wanted}) so Feast can read it",
                )
            )
        elif declared not in allowed:
            refusals.append(
                Refusal(
                    name,
                    f"schema field {agg.name}",
                    f"dtype {declared} cannot hold {agg.function}({agg.column}); use {' or '.join(allowed)}",
                )
            )
        else:
            dtype = _DTYPES[declared]
    if refusals or isinstance(window, Refusal):
        return refusals
    return AggregationSpec(agg.name, agg.column, agg.function, window, dtype)


def validate(view: ViewDraft, topic: str) -> DeclaredView | list[Refusal]:
    """The view freshrank runs for `view`, or every reason it cannot (never a partial view)."""
    name = view.name
    refusals: list[Refusal] = []
    if view.source_kind != "KafkaSource":
        refusals.append(Refusal(name, "source", f"a {view.source_kind}; freshrank runs views on a KafkaSource only"))
    elif view.topic != topic:
        refusals.append(
            Refusal(name, "source.topic", f"topic {view.topic!r}; the stream job reads {topic!r} (its topic setting)")
        )
    if view.source_kind == "KafkaSource" and view.message_format != "AvroFormat":
        refusals.append(
            Refusal(
                name,
                "source.message_format",
                f"{view.message_format}; events are Avro in Confluent wire format: use AvroFormat",
            )
        )
    for what, value in (
        ("source.timestamp_field", view.source_timestamp_field),
        ("timestamp_field", view.timestamp_field),
    ):
        if value != TIMESTAMP_COLUMN:
            refusals.append(
                Refusal(name, what, f"{value!r}; windows are in event time: set it to {TIMESTAMP_COLUMN!r}")
            )
    entity_key = ""
    if len(view.join_keys) != 1:
        refusals.append(
            Refusal(
                name, "entities", f"{len(view.join_keys)} entities; declare exactly one, keyed by user_id or item_id"
            )
        )
    else:
        entity_key, value_type = view.join_keys[0]
        if entity_key not in ENTITY_KEYS:
            refusals.append(
                Refusal(name, "entities", f"join key {entity_key!r}; the job keys views by user_id or item_id")
            )
        elif value_type.upper() not in ("STRING", "UNKNOWN"):
            refusals.append(Refusal(name, "entities", f"join key {entity_key} is {value_type}; ids are strings"))
    if view.transformation is not None:
        refusals.append(
            Refusal(
                name,
                "udf",
                f"a {view.transformation} transformation is not run (no per-event pandas/Python code); filter event "
                f'types with tags={{"{FILTER_TAG}": "click,view"}}',
            )
        )
    event_types: frozenset[str] | None = None
    if FILTER_TAG in view.tags:
        wanted = frozenset(t.strip() for t in view.tags[FILTER_TAG].split(",") if t.strip())
        unknown = sorted(wanted - EVENT_TYPES)
        if unknown or not wanted:
            refusals.append(
                Refusal(
                    name,
                    f"tags[{FILTER_TAG}]",
                    f"unknown event types {unknown or '(none given)'}; known: {', '.join(sorted(EVENT_TYPES))}",
                )
            )
        event_types = wanted
    if not view.aggregations:
        refusals.append(Refusal(name, "aggregations", "none declared; freshrank computes Aggregation(...) outputs"))
    specs: list[AggregationSpec] = []
    seen: set[str] = set()
    for agg in view.aggregations:
        if agg.name in seen:
            refusals.append(
                Refusal(name, f"aggregation {agg.name}", "two aggregations have this output name: set name=...")
            )
        seen.add(agg.name)
        spec = _aggregation(view, agg)
        if isinstance(spec, list):
            refusals += spec
        else:
            specs.append(spec)
    outputs = {agg.name for agg in view.aggregations} | {AS_OF_FIELD}
    for extra in sorted(set(view.schema) - outputs):
        refusals.append(
            Refusal(
                name,
                f"schema field {extra}",
                f"no aggregation produces it, so nothing would ever write it; the job writes the aggregations' "
                f"outputs and {AS_OF_FIELD!r} (the time the values hold as of)",
            )
        )
    if AS_OF_FIELD in view.schema and view.schema[AS_OF_FIELD] != "Int64":
        refusals.append(Refusal(name, f"schema field {AS_OF_FIELD}", "must be Int64 (epoch milliseconds)"))
    if refusals:
        return refusals
    return DeclaredView(name, entity_key, tuple(specs), event_types)


def validate_all(
    views: Iterable[ViewDraft], topic: str, reserved: Sequence[str] = ()
) -> tuple[list[DeclaredView], list[Refusal]]:
    """Validate every view; names in `reserved` (the built-in views) cannot be reused."""
    accepted: list[DeclaredView] = []
    refused: list[Refusal] = []
    for draft in sorted(views, key=lambda v: v.name):
        if draft.name in reserved:
            refused.append(Refusal(draft.name, "name", "is a built-in freshrank view; choose another name"))
            continue
        result = validate(draft, topic)
        if isinstance(result, list):
            refused += result
        else:
            accepted.append(result)
    return accepted, refused


# --- exact windowed aggregation ------------------------------------------------------


class WindowedAggregation:
    """One function over one column over one bucketed sliding window (semantics: module docstring).

    Buckets hold what the function needs (count, sum, min, max, or value -> count for
    count_distinct), keyed by bucket id; `_used` lists the kept bucket ids ascending.
    The head rule is the built-ins': the head is the newest bucket of any applied
    event, buckets <= head - n are dropped, an event in such a bucket is ignored.
    """

    __slots__ = ("spec", "_b", "_n", "_head", "_used", "_buckets", "_count", "_sum", "_since")

    def __init__(self, spec: AggregationSpec, since_ms: int | None = None) -> None:
        self.spec = spec
        self._b = spec.window.bucket_ms
        self._n = spec.window.n_buckets
        self._head: int | None = None
        self._used: list[int] = []
        # count/sum/mean: [count, sum]; max/min: [value]; count_distinct: {value: events}
        self._buckets: dict[int, list[int] | dict[str, int]] = {}
        self._count = 0  # totals over every kept bucket (count, sum, mean)
        self._sum = 0
        # Event time from which this aggregation has seen every event: None when it has from the start.
        self._since = since_ms

    def advance(self, event_time_ms: int) -> bool:
        """Move the head to the event's bucket if newer (dropping what leaves); False if the event is too old."""
        j = event_time_ms // self._b
        head = self._head
        if head is None or j > head:
            used = self._used
            if used and used[0] <= j - self._n:
                cut = bisect_right(used, j - self._n)
                for old in used[:cut]:
                    self._forget(old)
                del used[:cut]
            self._head = j
            return True
        return j > head - self._n

    def _forget(self, bucket: int) -> None:
        cell = self._buckets.pop(bucket)
        if isinstance(cell, list) and self.spec.function in ("count", "sum", "mean"):
            self._count -= cell[0]
            self._sum -= cell[1]

    def add(self, event_time_ms: int, value: int | str | None) -> None:
        if not self.advance(event_time_ms) or value is None:
            return
        j = event_time_ms // self._b
        function = self.spec.function
        cell = self._buckets.get(j)
        if cell is None:
            cell = self._buckets[j] = {} if function == "count_distinct" else []
            if not self._used or j > self._used[-1]:
                self._used.append(j)
            else:
                insort(self._used, j)
        if isinstance(cell, dict):
            key = str(value)
            cell[key] = cell.get(key, 0) + 1
        elif function in ("count", "sum", "mean"):
            amount = int(value) if function != "count" else 0
            if cell:
                cell[0] += 1
                cell[1] += amount
            else:
                cell += (1, amount)
            self._count += 1
            self._sum += amount
        else:
            number = int(value)
            if not cell:
                cell.append(number)
            elif (number > cell[0]) if function == "max" else (number < cell[0]):
                cell[0] = number

    def _lowest(self, as_of_ms: int) -> int:
        head = self._head
        assert head is not None
        k = as_of_ms // self._b
        return (k if k > head else head) - self._n + 1

    def value(self, as_of_ms: int) -> FeatureValue | None:
        """The aggregation as of `as_of_ms` (which the caller has already raised to the newest event)."""
        function = self.spec.function
        if self._head is None or not self._used:
            return None if function in ("mean", "max", "min") else 0
        lowest = self._lowest(as_of_ms)
        used = self._used
        gone = used[: bisect_right(used, lowest - 1)]
        buckets = self._buckets
        if function in ("count", "sum", "mean"):
            count, total = self._count, self._sum
            for j in gone:
                cell = buckets[j]
                assert isinstance(cell, list)
                count -= cell[0]
                total -= cell[1]
            if function == "count":
                return count
            if function == "sum":
                return total
            return total / count if count else None
        live = used[len(gone) :]
        if function == "count_distinct":
            distinct: set[str] = set()
            for j in live:
                cell = buckets[j]
                assert isinstance(cell, dict)
                distinct.update(cell)
            return len(distinct)
        values = [cell[0] for j in live if isinstance(cell := buckets[j], list)]
        if not values:
            return None
        return max(values) if function == "max" else min(values)

    def next_change_ms(self, as_of_ms: int) -> int | None:
        """The first time > as_of_ms at which `value` changes without events: the oldest counted bucket leaving."""
        if self._head is None:
            return None
        lowest = self._lowest(as_of_ms)
        for j in self._used:
            if j >= lowest:
                return (j + self._n) * self._b
        return None

    def warming_up(self, as_of_ms: int) -> bool:
        """True while the window reaches back before the time this aggregation started seeing events."""
        return self._since is not None and as_of_ms - self.spec.window.length_ms < self._since

    def encode(self, out: StateWriter) -> None:
        """Canonical: the kept buckets in id order (count_distinct values sorted)."""
        out.put(0 if self._head is None else 1, self._head or 0, -1 if self._since is None else self._since)
        out.put(len(self._used))
        out.put_ints(self._used)
        for j in self._used:
            cell = self._buckets[j]
            if isinstance(cell, dict):
                keys = sorted(cell)
                out.put(len(keys))
                out.put_strings(keys)
                out.put_ints([cell[k] for k in keys])
            else:
                out.put(len(cell))
                out.put_ints(cell)

    @classmethod
    def decode(cls, spec: AggregationSpec, reader: StateReader) -> WindowedAggregation:
        has_head, head, since, n_used = reader.take_ints(4)
        agg = cls(spec, None if since == -1 else since)
        if not has_head:
            return agg
        agg._head = head
        agg._used = reader.take_ints(n_used)
        for j in agg._used:
            size = reader.take()
            if spec.function == "count_distinct":
                keys = reader.take_strings(size)
                agg._buckets[j] = dict(zip(keys, reader.take_ints(size), strict=True))
            else:
                cell = reader.take_ints(size)
                agg._buckets[j] = cell
                if spec.function in ("count", "sum", "mean"):
                    agg._count += cell[0]
                    agg._sum += cell[1]
        used = agg._used
        if used and (used != sorted(used) or used[-1] > head or used[0] <= head - agg._n):
            raise StateFormatError("declared window state is inconsistent")
        return agg


FORMAT_VERSION: Final = 1
_KIND: Final = b"D"


class DeclaredFeatures:
    """One entity's state in one declared view: an aggregation per declared output.

    Offers what `streaming.entities.Aggregate` needs, so the job's `EntityTable`
    coalesces, schedules and evicts it like the built-ins.
    """

    __slots__ = ("view", "_newest", "_aggregations")

    def __init__(self, view: DeclaredView, newest: int | None, aggregations: tuple[WindowedAggregation, ...]) -> None:
        self.view = view
        self._newest = newest
        self._aggregations = aggregations

    @classmethod
    def empty(cls, view: DeclaredView) -> DeclaredFeatures:
        return cls(view, None, tuple(WindowedAggregation(spec) for spec in view.aggregations))

    @property
    def newest_event_ms(self) -> int | None:
        return self._newest

    def apply(self, event: InteractionEvent) -> bool:
        """Fold one event in; False (nothing changed) if the view's filter leaves it out."""
        if not self.view.admits(event):
            return False
        t = event.event_time_ms
        if self._newest is None or t > self._newest:
            self._newest = t
        for agg in self._aggregations:
            agg.add(t, column_value(event, agg.spec.column))
        return True

    def values(self, as_of_ms: int) -> dict[str, FeatureValue | None]:
        newest = self._newest
        t = as_of_ms if newest is None or as_of_ms > newest else newest
        out: dict[str, FeatureValue | None] = {}
        for agg in self._aggregations:
            value = agg.value(t)
            out[agg.spec.name] = float(value) if agg.spec.dtype == "float64" and isinstance(value, int) else value
        return out

    def next_change_ms(self, as_of_ms: int) -> int | None:
        newest = self._newest
        if newest is None:
            return None
        t = as_of_ms if as_of_ms > newest else newest
        changes = [when for agg in self._aggregations if (when := agg.next_change_ms(t)) is not None]
        return min(changes) if changes else None

    def warming_up(self, as_of_ms: int) -> list[str]:
        """Outputs whose window reaches back before their aggregation existed (added to a running view)."""
        return [agg.spec.name for agg in self._aggregations if agg.warming_up(as_of_ms)]

    def to_bytes(self) -> bytes:
        out = StateWriter()
        out.put(-1 if self._newest is None else self._newest, len(self._aggregations))
        out.put_strings([agg.spec.identity for agg in self._aggregations])
        for agg in self._aggregations:
            agg.encode(out)
        return out.to_bytes(FORMAT_VERSION, _KIND)

    @classmethod
    def from_bytes(cls, view: DeclaredView, data: bytes, restored_at_ms: int | None = None) -> DeclaredFeatures:
        """Decode state written for this view or an earlier version of it (the rule for a changed view):
        an aggregation with the same identity keeps its state; a new one starts empty, warming up from
        `restored_at_ms` (default: the entity's newest event); a dropped one's state is discarded."""
        reader = StateReader(data, FORMAT_VERSION, _KIND)
        newest, count = reader.take_ints(2)
        identities = reader.take_strings(count)
        wanted = {spec.identity: spec for spec in view.aggregations}
        restored: dict[str, WindowedAggregation] = {}
        for identity in identities:
            spec = wanted.get(identity)
            if spec is None:  # dropped from the view: decode with a stand-in spec to skip its bytes
                _skip(identity, reader)
                continue
            restored[identity] = WindowedAggregation.decode(spec, reader)
        reader.done()
        newest_ms = None if newest == -1 else newest
        since = restored_at_ms if restored_at_ms is not None else newest_ms
        aggregations = tuple(
            restored.get(spec.identity) or WindowedAggregation(spec, since if newest_ms is not None else None)
            for spec in view.aggregations
        )
        if newest_ms is not None:
            for agg in aggregations:
                if agg._head is None:
                    agg.advance(newest_ms)
        return cls(view, newest_ms, aggregations)


def _skip(identity: str, reader: StateReader) -> None:
    function, rest = identity.split("(", 1)
    column, rest = rest.split(")/", 1)
    length, bucket = (int(x) for x in rest.split("/"))
    spec = AggregationSpec("dropped", column, function, WindowSpec("dropped", length, bucket), "int64")
    WindowedAggregation.decode(spec, reader)


def replay_declared(
    view: DeclaredView, events: Iterable[InteractionEvent], as_of_ms: int
) -> dict[str, FeatureValue | None] | None:
    """One entity's declared features as of `as_of_ms` from its event log (first event_id wins, nothing
    after as_of_ms); None when no event passes the view's filter (the job writes no row then)."""
    key = (lambda e: e.user_id) if view.entity_key == "user_id" else (lambda e: e.item_id)
    state = DeclaredFeatures.empty(view)
    applied = False
    for event in point_in_time(events, as_of_ms, key, view.entity_key):
        applied = state.apply(event) or applied
    return state.values(as_of_ms) if applied else None
