"""Rendering helm/freshrank with Helm's own template engine, and validating what it renders.

Helm runs in process through helm-python-sdk (libhelm_c: Helm's Go SDK behind a C ABI), so
the chart is rendered exactly as `helm template` would, with no helm binary. Built-in kinds
are validated with kubernetes-validate's schemas (strict: unknown fields fail); the chart's
two custom resources with the minimal schemas in schemas/ (see schemas/README.md).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import yaml

REPO = Path(__file__).resolve().parents[3]
CHART = REPO / "helm" / "freshrank"
PRODUCTION_VALUES = CHART / "values-production.yaml"
SCHEMAS = Path(__file__).parent / "schemas"
RELEASE = "fr"
NAMESPACE = "feeds"

# Oldest and newest Kubernetes the chart is checked against (Chart.yaml kubeVersion: >=1.27;
# CronJob.timeZone is GA there). The newest is the newest kubernetes-validate ships.
KUBE_VERSIONS = ("1.27.0", kubernetes_validate.latest_version())

CUSTOM_SCHEMAS = {
    ("flink.apache.org/v1beta1", "FlinkDeployment"): "flinkdeployment-flink-v1beta1.json",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "servicemonitor-monitoring-v1.json",
}

Manifest = dict[str, Any]


def load_values(path: Path) -> dict[str, Any]:
    values = yaml.safe_load(path.read_text())
    assert isinstance(values, dict)
    return values


def render_files(values: Mapping[str, Any] | None = None, release: str = RELEASE) -> dict[str, str]:
    """Template path -> rendered text, as `helm template` with these values over values.yaml."""
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(dict(values or {}), name=release, namespace=NAMESPACE, is_install=True)


def render(values: Mapping[str, Any] | None = None, release: str = RELEASE) -> list[Manifest]:
    """Every manifest the chart renders (NOTES.txt and empty documents left out)."""
    manifests: list[Manifest] = []
    for path, text in sorted(render_files(values, release).items()):
        if not path.endswith((".yaml", ".yml")):
            continue
        manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return manifests


def one(manifests: list[Manifest], kind: str, name_suffix: str = "") -> Manifest:
    found = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"].endswith(name_suffix)]
    assert len(found) == 1, f"expected one {kind} named *{name_suffix}, found {[m['metadata']['name'] for m in found]}"
    return found[0]


@cache
def _custom_schema(filename: str) -> dict[str, Any]:
    schema = json.loads((SCHEMAS / filename).read_text())
    assert isinstance(schema, dict)
    return schema


def validate(manifest: Manifest, kube_version: str) -> None:
    """Raise if `manifest` is not valid for `kube_version`; unknown kinds are an error, not a skip."""
    key = (manifest["apiVersion"], manifest["kind"])
    if key in CUSTOM_SCHEMAS:
        jsonschema.Draft202012Validator(_custom_schema(CUSTOM_SCHEMAS[key])).validate(manifest)
        for template in pod_templates_of_custom(manifest):
            kubernetes_validate.validate(template, kube_version, strict=True)
        return
    kubernetes_validate.validate(manifest, kube_version, strict=True)


def pod_templates_of_custom(manifest: Manifest) -> Iterator[Manifest]:
    """A FlinkDeployment's pod templates, as core Pods, for kubernetes-validate."""
    if manifest["kind"] != "FlinkDeployment":
        return
    spec = manifest["spec"]
    for holder in (spec, spec["jobManager"], spec["taskManager"]):
        template = holder.get("podTemplate")
        if template:
            yield {"apiVersion": "v1", "kind": "Pod", **template}


def pod_spec(manifest: Manifest) -> dict[str, Any]:
    """The pod spec of any workload the chart renders."""
    kind = manifest["kind"]
    if kind == "Deployment" or kind == "Job":
        spec = manifest["spec"]["template"]["spec"]
    elif kind == "CronJob":
        spec = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    elif kind == "FlinkDeployment":
        spec = manifest["spec"]["podTemplate"]["spec"]
    else:
        raise AssertionError(f"{kind} has no pod spec")
    assert isinstance(spec, dict)
    return spec


WORKLOAD_KINDS = ("Deployment", "Job", "CronJob", "FlinkDeployment")


def workloads(manifests: list[Manifest]) -> list[Manifest]:
    return [m for m in manifests if m["kind"] in WORKLOAD_KINDS]


def env_of(container: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Env var name -> its EnvVar entry; a name set twice is an error (the last one would win silently)."""
    entries = container.get("env", [])
    names = [entry["name"] for entry in entries]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    assert not duplicates, f"env vars set twice in {container['name']}: {duplicates}"
    return {entry["name"]: entry for entry in entries}


def plain_env(container: Mapping[str, Any]) -> dict[str, str]:
    return {name: entry["value"] for name, entry in env_of(container).items() if "value" in entry}


def secret_refs(container: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    """Env var name -> (Secret name, key) for every variable read from a Secret."""
    refs: dict[str, tuple[str, str]] = {}
    for name, entry in env_of(container).items():
        ref = entry.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            refs[name] = (ref["name"], ref["key"])
    return refs
