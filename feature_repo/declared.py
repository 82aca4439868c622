"""Reading declared stream feature views out of Feast: a repo's Python files, or the registry `feast apply` wrote.

The edge between Feast's objects and `features.declared`: each `StreamFeatureView`
becomes a plain `ViewDraft` (names, columns, windows in ms, the entity's join key),
which `features.declared.validate_all` accepts or refuses. Nothing here decides
what freshrank can run.

`freshrank features check` reads a repo (before `feast apply`); the stream job
reads the registry (what `feast apply` registered, which is also what
`get_online_features` serves).
"""

from __future__ import annotations

import contextlib
import os
import sys
import warnings
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureStore, KafkaSource, StreamFeatureView
from feast.types import Float64, Int64

from feature_repo.definitions import ITEM_VIEW, USER_VIEW
from features.declared import AggregationDraft, DeclaredView, Refusal, ViewDraft, validate_all

BUILT_IN_VIEWS = (USER_VIEW, ITEM_VIEW)


def _ms(delta: timedelta | None) -> int | None:
    return None if delta is None else round(delta.total_seconds() * 1000)


def _dtype_name(dtype: object) -> str:
    if dtype == Int64:
        return "Int64"
    if dtype == Float64:
        return "Float64"
    return str(dtype)


def draft_of(view: StreamFeatureView, entities: Mapping[str, Entity]) -> ViewDraft:
    """The plain description of one Feast stream feature view; `entities` by name, for their join keys."""
    source = view.stream_source
    topic = message_format = None
    source_timestamp = ""
    if isinstance(source, KafkaSource):
        topic = source.kafka_options.topic
        message_format = type(source.kafka_options.message_format).__name__
        source_timestamp = source.timestamp_field
    join_keys: list[tuple[str, str]] = []
    for name in view.entities:
        entity = entities.get(name)
        if entity is None:
            join_keys.append((name, "UNKNOWN"))
        else:
            join_keys.append((entity.join_key, entity.value_type.name))
    join_names = {key for key, _ in join_keys}
    transformation = None
    if view.udf is not None or view.feature_transformation is not None or view.udf_string:
        transformation = f"{view.mode} udf"
    return ViewDraft(
        name=view.name,
        source_kind=type(source).__name__ if source is not None else "no source",
        topic=topic,
        message_format=message_format,
        source_timestamp_field=source_timestamp,
        timestamp_field=view.timestamp_field,
        join_keys=tuple(join_keys),
        aggregations=tuple(
            AggregationDraft(
                column=agg.column,
                function=agg.function,
                window_ms=_ms(agg.time_window),
                slide_ms=_ms(agg.slide_interval),
                name=agg.resolved_name(agg.time_window),
            )
            for agg in view.aggregations
        ),
        schema={f.name: _dtype_name(f.dtype) for f in view.schema if f.name not in join_names},
        transformation=transformation,
        tags=dict(view.tags),
    )


@contextlib.contextmanager
def _inside(repo: Path) -> Iterator[None]:
    """Feast imports a repo's files as modules named relative to the working directory, as `feast apply` does."""
    cwd = os.getcwd()
    sys.path.insert(0, str(repo))
    os.chdir(repo)
    try:
        yield
    finally:
        os.chdir(cwd)
        with contextlib.suppress(ValueError):
            sys.path.remove(str(repo))
        # Feast imports the files under their bare names (`team_features`, `definitions`): forget them, or the
        # next repo read in this process would get this repo's modules from the import cache instead of its own.
        for name, module in list(sys.modules.items()):
            file = getattr(module, "__file__", None)
            if file and Path(file).resolve().is_relative_to(repo):
                del sys.modules[name]


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Feast warns on every StreamFeatureView it builds that they are alpha; freshrank is their engine here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Stream feature views are experimental", category=RuntimeWarning)
        yield


def drafts_from_repo(repo: Path) -> list[ViewDraft]:
    """Every stream feature view defined in a Feast repo's Python files (imports them, as `feast apply` does)."""
    from feast.repo_operations import parse_repo

    repo = repo.resolve()
    with _inside(repo), _quiet():
        contents = parse_repo(repo)
    return _drafts(contents.stream_feature_views, contents.entities)


def drafts_from_registry(store: FeatureStore) -> list[ViewDraft]:
    """Every stream feature view `feast apply` registered in the store's project."""
    with _quiet():
        return _drafts(store.list_stream_feature_views(), store.list_entities())


def _drafts(views: Iterable[StreamFeatureView], entities: Iterable[Entity]) -> list[ViewDraft]:
    by_name = {entity.name: entity for entity in entities}
    unique = {view.name: view for view in views}
    return [draft_of(view, by_name) for view in unique.values()]


def check(drafts: Iterable[ViewDraft], topic: str) -> tuple[list[DeclaredView], list[Refusal]]:
    """What the stream job would run and refuse for these views on `topic`."""
    return validate_all(drafts, topic, reserved=BUILT_IN_VIEWS)


def load_declared(
    redis_address: str, registry_path: Path | str, topic: str
) -> tuple[list[DeclaredView], list[Refusal]]:
    """The declared views in the registry `feast apply` wrote (none when there is no registry yet)."""
    from feature_repo.store import open_store

    if "://" not in str(registry_path) and not Path(registry_path).exists():
        return [], []
    return check(drafts_from_registry(open_store(redis_address, registry_path)), topic)
