"""Feast objects for freshrank, generated from `features.definitions` so the online schema cannot drift.

The stream job writes these views through Feast's provider API; the feed API
reads them. `feast apply` registers them.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource
from feast.types import Array, FeastType, Float64, Int64, String
from feast.value_type import ValueType

from features.definitions import ITEM_FEATURES, USER_FEATURES, FeatureSpec

USER_VIEW = "user_stream_features"
ITEM_VIEW = "item_stream_features"
# Every row also says as of which time its values hold: serving reports feature age from it.
AS_OF_FIELD = "as_of_ms"

_FEAST_TYPES: dict[str, FeastType] = {
    "int64": Int64,
    "float64": Float64,
    "string_list": Array(String),
    "float_list": Array(Float64),
}
_OFFLINE_DIR = Path(__file__).parent / "data"

user = Entity(name="user", join_keys=["user_id"], value_type=ValueType.STRING, description="A feed user.")
item = Entity(name="item", join_keys=["item_id"], value_type=ValueType.STRING, description="A feed item.")
JOIN_KEYS: dict[str, str] = {USER_VIEW: user.join_key, ITEM_VIEW: item.join_key}
"""Join key of each built-in view's entity: the entity id column of `get_online_features` rows."""


def _schema(specs: tuple[FeatureSpec, ...]) -> list[Field]:
    fields = [Field(name=spec.name, dtype=_FEAST_TYPES[spec.dtype], description=spec.description) for spec in specs]
    fields.append(Field(name=AS_OF_FIELD, dtype=Int64, description="Time (epoch ms) the values hold as of."))
    return fields


def _push_source(name: str) -> PushSource:
    # Feast requires a batch source behind a push source; the stream job pushes online only.
    batch = FileSource(
        name=f"{name}_batch",
        path=str(_OFFLINE_DIR / f"{name}.parquet"),
        timestamp_field="event_timestamp",
    )
    return PushSource(name=name, batch_source=batch)


user_push = _push_source("user_features_push")
item_push = _push_source("item_features_push")

user_stream_features = FeatureView(
    name=USER_VIEW,
    entities=[user],
    ttl=timedelta(days=1),
    schema=_schema(USER_FEATURES),
    source=user_push,
    online=True,
    description="Per-user streaming features, kept fresh by the PyFlink job.",
)
item_stream_features = FeatureView(
    name=ITEM_VIEW,
    entities=[item],
    ttl=timedelta(days=1),
    schema=_schema(ITEM_FEATURES),
    source=item_push,
    online=True,
    description="Per-item streaming features, kept fresh by the PyFlink job.",
)

ranker_features = FeatureService(
    name="ranker_features",
    features=[user_stream_features, item_stream_features],
    description="Everything the ranker reads online.",
)
