"""`freshrank train`, `eval`, `candidates` and `datasets fetch`: the offline side (training/)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.progress import Progress, TaskID
from rich.table import Table

from cli.options import (
    SERVING_TREES,
    BootstrapOption,
    console,
    fail,
    progress_bar,
    resolve_bootstrap,
    resolve_redis,
)

if TYPE_CHECKING:
    from features.declared import DeclaredView
    from training.sources import EventSource

app = typer.Typer()


DatasetOption = Annotated[
    str, typer.Option("--dataset", help="synthetic (generated in memory), ml-100k, or log (--events/--topic).")
]
UsersOption = Annotated[int, typer.Option(min=1, help="Synthetic world: users.")]
ItemsOption = Annotated[int, typer.Option(min=1, help="Synthetic world: items at the start.")]
SecondsOption = Annotated[float, typer.Option(min=60, help="Synthetic world: seconds of event time.")]
RateOption = Annotated[float, typer.Option(min=1, help="Synthetic world: events per second.")]
SeedOption = Annotated[int, typer.Option(help="Synthetic world: seed (same seed, same world).")]
NewItemsOption = Annotated[float, typer.Option(min=0, help="Synthetic world: new items per minute.")]
EventsOption = Annotated[Path | None, typer.Option(help="Event log file (parquet or .avro); implies --dataset log.")]
TopicOption = Annotated[str | None, typer.Option(help="Read the whole Kafka topic instead; implies --dataset log.")]
CatalogOption = Annotated[Path | None, typer.Option(help="Item catalog parquet for --dataset log.")]
CacheOption = Annotated[Path, typer.Option(help="Where external datasets are cached.")]
DeclaredFeaturesOption = Annotated[
    bool,
    typer.Option(
        "--declared-features",
        help="Also give the ranker the stream feature views declared in the Feast repo (--feature-repo), "
        "replayed point-in-time; the registered model's feature list names them.",
    ),
]
FeatureRepoOption = Annotated[
    Path | None, typer.Option(help="Feast repo of --declared-features (default: freshrank's feature_repo/).")
]


def _declared_views(enabled: bool, repo: Path | None, topic: str | None) -> list[DeclaredView]:
    """The repo's declared views as the stream job would run them; a CLI error naming every refusal."""
    if not enabled:
        return []
    from cli.declared_features import repo_drafts
    from feature_repo.declared import check
    from sdk.settings import INTERACTIONS_TOPIC

    path, drafts = repo_drafts(repo)
    views, refused = check(drafts, topic or INTERACTIONS_TOPIC)
    if refused:
        raise fail(
            "the stream job would refuse these declared views, so they cannot be trained on: "
            + "; ".join(str(refusal) for refusal in refused)
            + " (`freshrank features check` says the same)",
            code=2,
        )
    if not views:
        raise fail(f"--declared-features: {path} declares no stream feature views", code=2)
    return views


def _step_progress(progress: Progress) -> Callable[[str, int, int], None]:
    tasks: dict[str, TaskID] = {}

    def update(step: str, done: int, total: int) -> None:
        if step not in tasks:
            tasks[step] = progress.add_task(step, total=total)
        progress.update(tasks[step], completed=done, total=total)

    return update


def _training_source(
    dataset: str,
    *,
    users: int,
    items: int,
    seconds: float,
    rate: float,
    seed: int,
    new_items_per_minute: float = 1.0,
    events: Path | None,
    topic: str | None,
    bootstrap: str | None,
    catalog: Path | None,
    cache_dir: Path,
    progress: Progress,
) -> EventSource:
    from training.movielens import ml100k_source
    from training.sources import log_source, synthetic_source

    if events is not None or topic is not None:
        dataset = "log"
    if dataset == "synthetic":
        expected = int(rate * seconds)
        task = progress.add_task("generating the synthetic world", total=expected)
        source = synthetic_source(
            users=users,
            items=items,
            seconds=seconds,
            rate=rate,
            seed=seed,
            new_items_per_minute=new_items_per_minute,
            progress=lambda n: progress.update(task, completed=min(n, expected)),
        )
        progress.update(task, completed=expected)
        return source
    if dataset == "ml-100k":
        with console.status("loading ml-100k (fetching the recbole wheel on first use)..."):
            return ml100k_source(cache_dir)
    if dataset == "log":
        with console.status("reading the event log..."):
            return log_source(
                events_path=events,
                topic=topic,
                bootstrap_servers=resolve_bootstrap(bootstrap, None) if topic else None,
                catalog_path=catalog,
            )
    raise fail(f"unknown dataset {dataset!r}: use synthetic, ml-100k or log")


def _metrics_table(report: dict[str, Any], title: str) -> Table:
    from training.evaluate import SCORERS

    table = Table(title=title)
    for column in ("scorer", "NDCG@10", "AUC", "log loss"):
        table.add_column(column)

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.4f}"

    for name in SCORERS:
        table.add_row(
            name, cell(report["ndcg@10"].get(name)), cell(report["auc"].get(name)), cell(report["log_loss"].get(name))
        )
    return table


def _print_report(report: dict[str, Any]) -> None:
    test = report["test"]
    console.print(_metrics_table(report, f"test period: {test['impressions']} impressions, {test['slates']} slates"))
    for name, sliced in report["slices"].items():
        console.print(_metrics_table(sliced, f"{name}: {sliced['impressions']} impressions"))
    goal = report.get("targets")
    if goal:
        verdict = "[green]met[/]" if goal["met"] else "[yellow]not met[/]"
        console.print(
            f"targets {verdict}: AUC {goal['auc_ranker_live']} (>= {goal['auc_target']}), "
            f"NDCG@10 lift over popularity {goal['ndcg_lift_over_popularity']} (>= {goal['ndcg_lift_target']})"
        )


def _write_json(report: dict[str, Any], path: Path | None) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=2, sort_keys=True) + "\n")
        console.print(f"report written to {path}")


@app.command()
def train(
    dataset: DatasetOption = "synthetic",
    users: UsersOption = 1000,
    items: ItemsOption = 500,
    seconds: SecondsOption = 10_800.0,
    rate: RateOption = 20.0,
    seed: SeedOption = 0,
    new_items_per_minute: NewItemsOption = 1.0,
    events: EventsOption = None,
    topic: TopicOption = None,
    bootstrap: BootstrapOption = None,
    catalog: CatalogOption = None,
    cache_dir: CacheOption = Path(".freshrank/datasets"),
    registry: Annotated[Path, typer.Option(help="Model registry directory.")] = Path(".freshrank/models"),
    name: Annotated[str, typer.Option(help="Model name in the registry.")] = "ranker",
    serving_trees: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Register only the first N trees: scoring is linear in trees; the report adds the full model's "
            "metrics as full_model (a number >= the trained trees keeps them all).",
        ),
    ] = SERVING_TREES,
    json_path: Annotated[Path | None, typer.Option("--json", help="Also write the test report here.")] = None,
    declared_features: DeclaredFeaturesOption = False,
    feature_repo: FeatureRepoOption = None,
) -> None:
    """Replay events into a point-in-time dataset, train the LightGBM ranker, export ONNX, check parity, register."""
    from registry.errors import RegistryError
    from registry.layout import register
    from training.errors import TrainingError
    from training.evaluate import run_experiment
    from training.ranker import TrainConfig

    declared = _declared_views(declared_features, feature_repo, topic)
    try:
        with progress_bar() as progress:
            source = _training_source(
                dataset, users=users, items=items, seconds=seconds, rate=rate, seed=seed, events=events,
                topic=topic, bootstrap=bootstrap, catalog=catalog, cache_dir=cache_dir, progress=progress,
                new_items_per_minute=new_items_per_minute,
            )  # fmt: skip
            experiment = run_experiment(
                source,
                train_config=TrainConfig(serving_trees=serving_trees),
                progress=_step_progress(progress),
                declared=declared,
            )
        report = experiment.report
        registered = register(registry, experiment.onnx, experiment.model_spec(source.name), name)
    except (TrainingError, RegistryError) as error:
        raise fail(str(error)) from None
    _print_report(report)
    console.print(
        f"ONNX parity: max |LightGBM - ONNX| = {experiment.parity_max_abs_diff:.2e} (< 1e-5)\n"
        f"[green]registered[/] {name} version {registered.metadata.version} in {registered.directory}"
    )
    _write_json(report, json_path)


@app.command("eval")
def evaluate_command(
    dataset: DatasetOption = "synthetic",
    users: UsersOption = 1000,
    items: ItemsOption = 500,
    seconds: SecondsOption = 10_800.0,
    rate: RateOption = 20.0,
    seed: SeedOption = 0,
    new_items_per_minute: NewItemsOption = 1.0,
    events: EventsOption = None,
    topic: TopicOption = None,
    bootstrap: BootstrapOption = None,
    catalog: CatalogOption = None,
    cache_dir: CacheOption = Path(".freshrank/datasets"),
    registry: Annotated[Path, typer.Option(help="Model registry directory (with --model-version).")] = Path(
        ".freshrank/models"
    ),
    name: Annotated[str, typer.Option(help="Model name in the registry.")] = "ranker",
    model_version: Annotated[
        int | None, typer.Option(help="Score with this registered model instead of training one on the train period.")
    ] = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the report (JSON) here.")] = None,
    check_targets: Annotated[
        bool, typer.Option("--check-targets", help="Exit 1 unless AUC >= 0.75 and NDCG@10 >= 1.10 x popularity.")
    ] = False,
    declared_features: DeclaredFeaturesOption = False,
    feature_repo: FeatureRepoOption = None,
) -> None:
    """Popularity vs ranker (live / stale user features / no user features) vs oracle on the test period."""
    from registry.errors import RegistryError
    from registry.layout import load
    from training.dataset import DatasetConfig, build_dataset
    from training.errors import TrainingError
    from training.evaluate import evaluate, run_experiment, split_dataset, targets
    from training.ranker import OnnxRanker

    declared = _declared_views(declared_features, feature_repo, topic)
    try:
        with progress_bar() as progress:
            source = _training_source(
                dataset, users=users, items=items, seconds=seconds, rate=rate, seed=seed, events=events,
                topic=topic, bootstrap=bootstrap, catalog=catalog, cache_dir=cache_dir, progress=progress,
                new_items_per_minute=new_items_per_minute,
            )  # fmt: skip
            update = _step_progress(progress)
            if model_version is None:
                report = run_experiment(source, progress=update, declared=declared).report
            else:
                model = load(registry, name, model_version)
                rows = build_dataset(
                    source.events,
                    source.catalog,
                    progress=lambda d, t: update("replaying events", d, t),
                    declared=declared,
                )
                if declared:
                    rows = rows.with_declared_inputs()
                if model.metadata.spec.feature_names != rows.feature_names:
                    raise fail(
                        f"model {name} version {model_version} takes {len(model.metadata.spec.feature_names)} "
                        f"inputs, the dataset has {len(rows.feature_names)}: evaluate a model trained with "
                        "--declared-features with the same flag and the same declared views, and one trained "
                        "without it without",
                        code=2,
                    )
                _, _, _, test = split_dataset(rows, 0.2, 0.2, DatasetConfig().attribution_window_ms)
                meta = model.metadata.spec
                scorer = OnnxRanker(model.model_path.read_bytes(), meta.input_name, meta.output_name, meta.output_index)
                report = evaluate(scorer, test, source.truth)
                report["targets"] = targets(report)
                report["model"] = {"name": name, "version": model.metadata.version}
    except (TrainingError, RegistryError) as error:
        raise fail(str(error)) from None
    report["dataset"] = source.name
    _print_report(report)
    _write_json(report, json_path)
    if check_targets and not report["targets"]["met"]:
        raise typer.Exit(1)


datasets_app = typer.Typer(help="External datasets for evaluation (cached, never committed).", no_args_is_help=True)


@datasets_app.command("fetch")
def datasets_fetch(
    dataset: Annotated[str, typer.Argument(help="Only ml-100k for now.")],
    cache_dir: CacheOption = Path(".freshrank/datasets"),
) -> None:
    """Fetch MovieLens-100k from the recbole wheel on PyPI (sha256-pinned) and convert it to an event log."""
    from training.errors import TrainingError
    from training.movielens import RECBOLE_VERSION, fetch_ml100k

    if dataset != "ml-100k":
        raise fail(f"unknown dataset {dataset!r}; available: ml-100k")
    try:
        with console.status(f"downloading recbole=={RECBOLE_VERSION} and converting ml-100k..."):
            out = fetch_ml100k(cache_dir)
    except TrainingError as error:
        raise fail(str(error)) from None
    console.print(f"ml-100k ready: {out / 'events.parquet'} and {out / 'catalog.parquet'}")


@app.command()
def candidates(
    dataset: DatasetOption = "log",
    events: EventsOption = None,
    topic: TopicOption = None,
    bootstrap: BootstrapOption = None,
    catalog: CatalogOption = None,
    users: UsersOption = 1000,
    items: ItemsOption = 500,
    seconds: SecondsOption = 3600.0,
    rate: RateOption = 20.0,
    seed: SeedOption = 0,
    cache_dir: CacheOption = Path(".freshrank/datasets"),
    redis_address: Annotated[
        str | None, typer.Option("--redis", help="Redis host:port [env FRESHRANK_REDIS_ADDRESS; default local stack].")
    ] = None,
    ttl: Annotated[int, typer.Option(min=1, help="Seconds before a written list expires.")] = 24 * 3600,
    per_user: Annotated[int, typer.Option(min=1, max=500, help="Candidates per user.")] = 500,
    now_ms: Annotated[int | None, typer.Option(help="Generate as of this event time (default: newest event).")] = None,
) -> None:
    """Co-visitation + new + popular candidate lists per user, and popular fallbacks, written to Redis with a TTL."""
    from sdk.settings import INTERACTIONS_TOPIC
    from training.candidates import CandidateConfig, CandidateWriter, generate_candidates
    from training.errors import TrainingError

    if dataset == "log" and events is None and topic is None:
        topic = INTERACTIONS_TOPIC
    writer = CandidateWriter(resolve_redis(redis_address), ttl_s=ttl)
    try:
        with progress_bar() as progress:
            source = _training_source(
                dataset, users=users, items=items, seconds=seconds, rate=rate, seed=seed, events=events,
                topic=topic, bootstrap=bootstrap, catalog=catalog, cache_dir=cache_dir, progress=progress,
            )  # fmt: skip
            with console.status("counting co-visitation and popularity..."):
                lists = generate_candidates(source.events, source.catalog, now_ms, CandidateConfig(per_user=per_user))
            writer.open()
            try:
                update = _step_progress(progress)
                written = writer.write(lists, lambda done, total: update("writing to Redis", done, total))
            finally:
                writer.close()
    except TrainingError as error:
        raise fail(str(error)) from None
    sizes = [len(ids) for ids in lists.users.values()]
    console.print(
        f"wrote {written} keys to {writer.address} (TTL {ttl} s): {len(lists.users)} users "
        f"(median {sorted(sizes)[len(sizes) // 2] if sizes else 0} candidates), "
        f"{len(lists.popular_by_country)} countries, {len(lists.popular_global)} global popular items"
    )
