"""`freshrank schema ...`: the event schema in a Confluent-compatible schema registry."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.options import (
    console,
    fail,
)

schema_app = typer.Typer(
    help="The event schema in a Confluent-compatible schema registry (FRESHRANK_SCHEMA_REGISTRY_URL).",
    no_args_is_help=True,
)
RegistryUrl = Annotated[
    str | None, typer.Option("--url", help="Registry URL [env FRESHRANK_SCHEMA_REGISTRY_URL]; auth/TLS from env.")
]
Subject = Annotated[str, typer.Option(help="Subject (TopicNameStrategy: <topic>-value).")]


def _registry(url: str | None) -> Any:
    from sdk.schema_registry import SchemaRegistrySettings, connect

    settings = SchemaRegistrySettings()
    if url:
        settings = settings.model_copy(update={"url": url})
    if not settings.enabled:
        raise fail("no schema registry: pass --url or set FRESHRANK_SCHEMA_REGISTRY_URL")
    return connect(settings)


def _read_avsc(path: Path) -> dict[str, Any]:
    import avro.schema
    import fastavro

    try:
        definition = json.loads(path.read_text())
        # Both parsers: fastavro decodes the events, Avro's own checks compatibility.
        fastavro.parse_schema(definition)
        avro.schema.parse(json.dumps(definition))
    except OSError as error:
        raise fail(f"cannot read {path}: {error.strerror}", code=2) from None
    except ValueError as error:
        raise fail(f"{path} is not valid JSON: {error}", code=2) from None
    except Exception as error:  # fastavro's SchemaParseException and friends
        raise fail(f"{path} is not a valid Avro schema: {error}", code=2) from None
    if not isinstance(definition, dict):
        raise fail(f"{path} is not an Avro record schema", code=2)
    return definition


@schema_app.command("register")
def schema_register(url: RegistryUrl = None, subject: Subject = "interactions-value") -> None:
    """Register every version of the event schema in the repo, oldest first; print the id of each."""
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from features.codec import SCHEMA_DIR

    client = _registry(url)
    index = json.loads((SCHEMA_DIR / "registry.json").read_text())
    for version in sorted(index["subjects"]["interactions-value"], key=lambda v: v["id"]):
        text = (SCHEMA_DIR / version["file"]).read_text()
        try:
            schema_id = client.register_schema(subject, Schema(json.dumps(json.loads(text)), "AVRO"))
        except SchemaRegistryError as error:
            raise fail(f"the registry refused {version['file']} under {subject}: {error.error_message}") from None
        except Exception as error:
            raise fail(f"cannot reach the schema registry: {error}") from None
        console.print(f"{version['file']}: subject {subject}, schema id {schema_id}")


@schema_app.command("check")
def schema_check(
    schema: Annotated[Path, typer.Argument(help="The new .avsc to check before it ships.")],
    url: RegistryUrl = None,
    subject: Subject = "interactions-value",
) -> None:
    """BACKWARD check: can a reader with SCHEMA read what the latest schema wrote? Exit 1 with the reasons if not.

    Checked against the newest schema in the repo, and, with a registry URL, against the
    subject's latest version there and by the registry itself (it applies the subject's
    configured level).
    """
    from features.codec import SchemaRegistry, compatibility_problem

    new = _read_avsc(schema)
    problems: list[str] = []
    local = SchemaRegistry().latest()
    problem = compatibility_problem(local.definition, new)
    where = f"repo schema id {local.schema_id}"
    console.print(f"{where}: " + ("[green]compatible[/]" if problem is None else f"[red]incompatible[/]: {problem}"))
    if problem is not None:
        problems.append(f"{where}: {problem}")
    if url or os.environ.get("FRESHRANK_SCHEMA_REGISTRY_URL"):
        problems.extend(_check_in_registry(_registry(url), subject, new))
    if problems:
        raise fail(f"{schema} is not BACKWARD compatible:\n" + "\n".join(problems))
    console.print(f"[green]{schema} is BACKWARD compatible[/]")


def _check_in_registry(client: Any, subject: str, new: dict[str, Any]) -> list[str]:
    from confluent_kafka.schema_registry import Schema
    from confluent_kafka.schema_registry.error import SchemaRegistryError

    from features.codec import compatibility_problem

    try:
        latest = client.get_latest_version(subject)
    except SchemaRegistryError as error:
        if error.http_status_code == 404:
            console.print(f"registry: subject {subject} has no version yet; nothing to be compatible with")
            return []
        raise fail(f"schema registry: {error.error_message}") from None
    except Exception as error:
        raise fail(f"cannot reach the schema registry: {error}") from None
    where = f"registry {subject} version {latest.version} (id {latest.schema_id})"
    problem = compatibility_problem(json.loads(latest.schema.schema_str), new)
    try:
        accepted = client.test_compatibility(subject, Schema(json.dumps(new), "AVRO"))
    except SchemaRegistryError as error:
        raise fail(f"schema registry compatibility test failed: {error.error_message}") from None
    verdict = "[green]compatible[/]" if problem is None else f"[red]incompatible[/]: {problem}"
    console.print(f"{where}: {verdict}; the registry says {'compatible' if accepted else 'incompatible'}")
    problems = [f"{where}: {problem}"] if problem is not None else []
    if not accepted and problem is None:
        problems.append(f"{where}: the registry refuses it (its compatibility level may be stricter than BACKWARD)")
    return problems
