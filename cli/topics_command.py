"""`freshrank topics tail`."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from cli.options import (
    StateDir,
    console,
    errors,
    fail,
    resolve_bootstrap,
)

topics_app = typer.Typer(help="Inspect the Kafka topics (works where old kcat builds cannot).", no_args_is_help=True)


@topics_app.command("tail")
def topics_tail(
    topic: Annotated[str, typer.Argument(help="e.g. interactions or interactions.dlq")],
    last: Annotated[int, typer.Option("--last", "-n", min=0, help="Records per partition from the end.")] = 10,
    from_beginning: Annotated[bool, typer.Option("--from-beginning", help="Every record still in the topic.")] = False,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep waiting for new records (Ctrl-C stops).")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    bootstrap: Annotated[str | None, typer.Option(help="Kafka bootstrap servers (default: the local stack).")] = None,
    state_dir: StateDir = None,
) -> None:
    """Print key, headers and the decoded event of each record; for the DLQ, its reason header.

    Reads with manual partition assignment and never commits offsets. Values are decoded
    with the schema registry at FRESHRANK_SCHEMA_REGISTRY_URL when set, else the repo's.
    """
    from cli.topics import tail
    from sdk.schema_registry import SchemaRegistrySettings, consumer_codec
    from sdk.settings import KafkaSettings

    settings = KafkaSettings(bootstrap_servers=resolve_bootstrap(bootstrap, state_dir))
    codec = consumer_codec(SchemaRegistrySettings())
    records = tail(
        {**settings.client_config(), "client.id": "freshrank-topics-tail"},
        topic,
        codec,
        last=None if from_beginning else last,
        from_beginning=from_beginning,
        follow=follow,
    )
    shown = 0
    try:
        for record in records:
            shown += 1
            if as_json:
                print(json.dumps(record.as_json()), flush=True)  # noqa: T201 - the CLI's output
                continue
            headers = " ".join(f"{k}={v}" for k, v in record.headers.items())
            line = f"[bold]{topic}[/]/{record.partition}@{record.offset} key={record.key}"
            console.print(line + (f" headers: {headers}" if headers else ""), highlight=False)
            if record.event is not None:
                console.print(f"  {json.dumps(record.event)}", highlight=False, soft_wrap=True)
            else:
                console.print(f"  [yellow]value does not decode:[/] {record.problem}", highlight=False)
    except LookupError as error:
        raise fail(str(error)) from None
    except KeyboardInterrupt:
        pass
    if not as_json:
        errors.print(f"{shown} records from {topic} at {settings.bootstrap_servers}")
