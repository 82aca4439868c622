"""`freshrank features check`: the stream feature views declared with Feast that the stream job computes."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.options import (
    console,
    fail,
)

if TYPE_CHECKING:
    from features.declared import ViewDraft

features_app = typer.Typer(
    help="Streaming features declared with Feast (KafkaSource + StreamFeatureView) that the stream job computes.",
    no_args_is_help=True,
)


def repo_drafts(repo: Path | None) -> tuple[Path, list[ViewDraft]]:
    """The stream feature views of a Feast repo (default: freshrank's feature_repo/); a CLI error (exit 2)
    when it is not a Feast repo or its Python does not load."""
    from feature_repo.declared import drafts_from_repo
    from feature_repo.store import REPO_PATH

    path = repo or REPO_PATH
    if not (path / "feature_store.yaml").is_file():
        raise fail(f"{path} is not a Feast repo (no feature_store.yaml): pass --feature-repo or --repo", code=2)
    try:
        return path, drafts_from_repo(path)
    except Exception as error:  # the user's Python: an import error, a Feast ValueError
        raise fail(f"cannot load the Feast repo {path}: {type(error).__name__}: {error}", code=2) from None


@features_app.command("check")
def features_check(
    repo: Annotated[Path | None, typer.Option(help="Feast repo to read (default: freshrank's feature_repo/).")] = None,
    topic: Annotated[str | None, typer.Option(help="Topic the stream job reads [env FRESHRANK_STREAM_TOPIC].")] = None,
) -> None:
    """What the stream job will compute from the repo's stream feature views, and what it refuses (exit 1) and why.

    Run it before `feast apply`: the job refuses at start whatever this command refuses.
    """
    from feature_repo.declared import check
    from streaming.settings import StreamSettings

    path, drafts = repo_drafts(repo)
    accepted, refused = check(drafts, topic or StreamSettings().topic)
    for view in accepted:
        kept = "all events" if view.event_types is None else "event types " + ", ".join(sorted(view.event_types))
        console.print(f"[green]{view.name}[/]: keyed by {view.entity_key}, {kept}")
        for agg in view.aggregations:
            w = agg.window
            console.print(
                f"  {agg.name} = {agg.function}({agg.column}) over {w.length_ms // 1000} s "
                f"in {w.n_buckets} buckets of {w.bucket_ms // 1000} s ({agg.dtype})"
            )
    if not drafts:
        console.print(f"no stream feature views in {path}")
    if refused:
        for refusal in refused:
            console.print(f"[red]refused[/] {refusal}")
        raise fail(f"{len(refused)} problem(s): the stream job would refuse to start; fix them before `feast apply`")
    console.print(f"[green]{len(accepted)} declared view(s) ok[/]")
