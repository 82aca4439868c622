"""`freshrank schema register|check` against a registry speaking Confluent's REST API."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli.main import app
from features.codec import SchemaRegistry
from tests.schema_registry_server import FakeSchemaRegistry

runner = CliRunner()
OURS = SchemaRegistry().latest().definition


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeSchemaRegistry]:
    monkeypatch.delenv("FRESHRANK_SCHEMA_REGISTRY_URL", raising=False)
    with FakeSchemaRegistry() as server:
        yield server


def flat(output: str) -> str:
    """Rich wraps lines at the terminal width; compare words."""
    return " ".join(output.split())


def write(tmp_path: Path, schema: object, name: str = "next.avsc") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(schema))
    return path


def test_register_puts_every_repo_version_under_the_subject(registry: FakeSchemaRegistry) -> None:
    result = runner.invoke(app, ["schema", "register", "--url", registry.url])
    assert result.exit_code == 0, flat(result.output)
    assert "interaction_event.v1.avsc: subject interactions-value, schema id 100001" in flat(result.output)
    assert registry.state.subjects == {"interactions-value": [100001]}
    again = runner.invoke(app, ["schema", "register", "--url", registry.url])
    assert again.exit_code == 0 and registry.state.subjects == {"interactions-value": [100001]}


def test_check_accepts_an_added_optional_field(registry: FakeSchemaRegistry, tmp_path: Path) -> None:
    runner.invoke(app, ["schema", "register", "--url", registry.url])
    newer = copy.deepcopy(OURS)
    newer["fields"].append({"name": "app_version", "type": ["null", "string"], "default": None})
    result = runner.invoke(app, ["schema", "check", str(write(tmp_path, newer)), "--url", registry.url])
    assert result.exit_code == 0, flat(result.output)
    assert "the registry says compatible" in flat(result.output)
    assert "is BACKWARD compatible" in flat(result.output)


def test_check_refuses_a_new_required_field_and_names_it(registry: FakeSchemaRegistry, tmp_path: Path) -> None:
    runner.invoke(app, ["schema", "register", "--url", registry.url])
    newer = copy.deepcopy(OURS)
    newer["fields"].append({"name": "app_version", "type": "string"})
    result = runner.invoke(app, ["schema", "check", str(write(tmp_path, newer)), "--url", registry.url])
    assert result.exit_code == 1
    assert "reader_field_missing_default_value: app_version" in flat(result.output)
    assert "the registry says incompatible" in flat(result.output)


def test_check_without_a_registry_compares_with_the_repo_schema(registry: FakeSchemaRegistry, tmp_path: Path) -> None:
    narrower = copy.deepcopy(OURS)
    narrower["fields"][3]["type"]["symbols"].remove("share")
    result = runner.invoke(app, ["schema", "check", str(write(tmp_path, narrower))])
    assert result.exit_code == 1
    assert "missing_enum_symbols" in flat(result.output) and "share" in flat(result.output)
    assert registry.state.requests == []


def test_check_of_a_broken_file_says_what_is_wrong(registry: FakeSchemaRegistry, tmp_path: Path) -> None:
    path = tmp_path / "broken.avsc"
    path.write_text("{not json")
    result = runner.invoke(app, ["schema", "check", str(path)])
    assert result.exit_code == 2 and "is not valid JSON" in flat(result.output)
    bad_type = runner.invoke(app, ["schema", "check", str(write(tmp_path, {"type": "record", "name": "X"}))])
    assert bad_type.exit_code == 2 and "not a valid Avro schema" in flat(bad_type.output)


def test_register_without_a_url_says_how_to_give_one(registry: FakeSchemaRegistry) -> None:
    result = runner.invoke(app, ["schema", "register"])
    assert result.exit_code == 1 and "FRESHRANK_SCHEMA_REGISTRY_URL" in flat(result.output)
