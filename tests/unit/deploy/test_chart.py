"""helm/freshrank renders valid manifests that run what an SRE expects, and refuses what cannot work."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from typing import Any

import helm_python as helm
import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.unit.deploy.chart import (
    CHART,
    KUBE_VERSIONS,
    PRODUCTION_VALUES,
    REPO,
    Manifest,
    env_of,
    load_values,
    one,
    plain_env,
    pod_spec,
    render,
    render_files,
    secret_refs,
    validate,
    workloads,
)

PRODUCTION = load_values(PRODUCTION_VALUES)
DEFAULTS = load_values(CHART / "values.yaml")


@pytest.fixture(scope="module")
def default_manifests() -> list[Manifest]:
    return render()


@pytest.fixture(scope="module")
def production_manifests() -> list[Manifest]:
    return render(PRODUCTION)


def test_helm_library_is_the_real_template_engine() -> None:
    # Not a stub: the SDK reports Helm's version, and sprig functions compute real results
    # (the API's config checksum is the SHA-256 of the rendered ConfigMap).
    assert re.fullmatch(r"v[34]\.\d+\.\d+", helm.helm_sdk_version())
    files = render_files()
    configmap = files["freshrank/templates/configmap-experiments.yaml"]
    deployment = yaml.safe_load(files["freshrank/templates/api-deployment.yaml"])
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["checksum/experiments"] == hashlib.sha256(configmap.encode()).hexdigest()


@pytest.mark.parametrize("kube_version", KUBE_VERSIONS)
@pytest.mark.parametrize("values_name", ["defaults", "production"])
def test_every_rendered_manifest_validates(values_name: str, kube_version: str) -> None:
    manifests = render(PRODUCTION if values_name == "production" else None)
    kinds = {m["kind"] for m in manifests}
    assert {"Deployment", "Service", "FlinkDeployment", "CronJob", "ConfigMap"} <= kinds
    for manifest in manifests:
        try:
            validate(manifest, kube_version)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as error:
            path = ".".join(str(p) for p in error.absolute_path)
            pytest.fail(f"{manifest['kind']}/{manifest['metadata']['name']} at {path}: {error.message}")


def test_validation_catches_misspelt_and_mistyped_fields(default_manifests: list[Manifest]) -> None:
    # The validators are strict, not permissive: one wrong key fails the check.
    deployment = copy.deepcopy(one(default_manifests, "Deployment", "-api"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinessprobe"):
        validate(deployment, KUBE_VERSIONS[-1])

    flink = copy.deepcopy(one(default_manifests, "FlinkDeployment"))
    flink["spec"]["job"]["upgradeMode"] = "last_state"
    with pytest.raises(jsonschema.ValidationError, match="last_state"):
        validate(flink, KUBE_VERSIONS[-1])

    flink = copy.deepcopy(one(default_manifests, "FlinkDeployment"))
    flink["spec"]["podTemplate"]["spec"]["containers"][0]["volumemounts"] = []
    with pytest.raises(kubernetes_validate.ValidationError, match="volumemounts"):
        validate(flink, KUBE_VERSIONS[-1])


def test_chart_lints_clean() -> None:
    for values in ({}, PRODUCTION):
        report = helm.lint(str(CHART), values, strict=True, namespace="feeds")
        problems = [m for m in report["messages"] if m["severity"] >= 2]  # 2 = warning, 3 = error
        assert not report["errors"] and not problems, problems


def test_api_has_probes_image_port_and_binds_all_interfaces(default_manifests: list[Manifest]) -> None:
    deployment = one(default_manifests, "Deployment", "-api")
    container = pod_spec(deployment)["containers"][0]
    assert container["image"] == "freshrank:0.1.0"  # chart appVersion when no tag is given
    assert container["args"] == ["serve"]
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    env = plain_env(container)
    assert env["FRESHRANK_SERVE_HOST"] == "0.0.0.0"  # the settings default is loopback
    assert env["FRESHRANK_SERVE_PORT"] == "8000"
    assert env["FRESHRANK_SERVE_ENVIRONMENT"] == "production"
    assert env["FRESHRANK_SERVE_ONLINE_STORE__ADDRESS"] == "redis-master:6379"
    assert env["FRESHRANK_SERVE_EVENTS__BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["FRESHRANK_SERVE_MODEL_REGISTRY"] == "/var/lib/freshrank/models"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["FRESHRANK_SERVE_EXPERIMENTS_PATH"].rsplit("/", 1)[0] in mounts
    assert "/var/lib/freshrank" in mounts


def test_api_service_hpa_and_pdb_select_the_api_pods(default_manifests: list[Manifest]) -> None:
    deployment = one(default_manifests, "Deployment", "-api")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    service = one(default_manifests, "Service", "-api")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    pdb = one(default_manifests, "PodDisruptionBudget", "-api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = one(default_manifests, "HorizontalPodAutoscaler", "-api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] == 2 and hpa["spec"]["maxReplicas"] == 10
    # With an HPA the Deployment leaves the replica count to it, or every upgrade would reset it.
    assert "replicas" not in deployment["spec"]
    fixed = one(render({"api": {"autoscaling": {"enabled": False}, "replicaCount": 4}}), "Deployment", "-api")
    assert fixed["spec"]["replicas"] == 4


def test_changing_an_ab_arm_rolls_the_api_pods() -> None:
    def checksum(values: dict[str, Any]) -> str:
        deployment = one(render(values), "Deployment", "-api")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/experiments"])

    canary = {"salt": "s", "arms": [{"name": "control", "weight": 90, "model": "ranker", "version": 7}]}
    promoted = {"salt": "s", "arms": [{"name": "control", "weight": 100, "model": "ranker", "version": 8}]}
    assert checksum({"api": {"experiments": canary}}) != checksum({"api": {"experiments": promoted}})
    configmap = one(render({"api": {"experiments": promoted}}), "ConfigMap", "-experiments")
    assert yaml.safe_load(configmap["data"]["experiments.yaml"]) == promoted


def test_no_secret_is_created_and_credentials_come_from_existing_secrets(
    default_manifests: list[Manifest], production_manifests: list[Manifest]
) -> None:
    for manifests in (default_manifests, production_manifests):
        assert not [m for m in manifests if m["kind"] == "Secret"]
    kafka = ("freshrank-kafka", "username"), ("freshrank-kafka", "password")
    redis = ("freshrank-redis", "password")
    expected = {
        "FRESHRANK_KAFKA_SASL_USERNAME": kafka[0],
        "FRESHRANK_KAFKA_SASL_PASSWORD": kafka[1],
        "FRESHRANK_REDIS_PASSWORD": redis,
        "FRESHRANK_SCHEMA_REGISTRY_BASIC_AUTH_USER_INFO": ("freshrank-schema-registry", "userInfo"),
    }
    by_role = {
        "Deployment": {
            **expected,
            "FRESHRANK_SERVE_API_KEYS": ("freshrank-api-keys", "api-keys"),
            "FRESHRANK_SERVE_ONLINE_STORE__PASSWORD": redis,
            "FRESHRANK_SERVE_EVENTS__SASL_USERNAME": kafka[0],
            "FRESHRANK_SERVE_EVENTS__SASL_PASSWORD": kafka[1],
        },
        "FlinkDeployment": {
            **expected,
            "FRESHRANK_STREAM_SASL_USERNAME": kafka[0],
            "FRESHRANK_STREAM_SASL_PASSWORD": kafka[1],
            "FRESHRANK_STREAM_REDIS_PASSWORD": redis,
        },
        "CronJob": expected,
        "Job": expected,
    }
    for workload in workloads(production_manifests):
        container = pod_spec(workload)["containers"][0]
        assert secret_refs(container) == by_role[workload["kind"]], workload["metadata"]["name"]
        # Nothing that looks like a credential is ever a plain value.
        for name in plain_env(container):
            assert not re.search(r"PASSWORD|API_KEYS|USERNAME|TOKEN|USER_INFO", name), f"{name} is a plain value"
    # Without credentials configured, no workload asks for one (defaults: no SASL, no Redis AUTH).
    for workload in workloads(default_manifests):
        refs = secret_refs(pod_spec(workload)["containers"][0])
        assert set(refs) <= {"FRESHRANK_SERVE_API_KEYS"}


def test_feast_config_uses_the_registry_value_and_keeps_the_redis_password_in_the_environment(
    production_manifests: list[Manifest], monkeypatch: pytest.MonkeyPatch
) -> None:
    configmap = one(production_manifests, "ConfigMap", "-feast")
    text = configmap["data"]["feature_store.yaml"]
    # Feast loads feature_store.yaml as yaml.safe_load(os.path.expandvars(text))
    # (feast.repo_config.load_repo_config); importing Feast here would cost ~15 s.
    monkeypatch.setenv("FRESHRANK_REDIS_PASSWORD", "s3cr3t")
    chart_config = yaml.safe_load(os.path.expandvars(text))
    assert "s3cr3t" not in text
    assert chart_config["online_store"] == {
        "type": "redis",
        "connection_string": "redis.feeds.svc.cluster.local:6379,password=s3cr3t",
    }
    assert chart_config["registry"] == "/var/lib/freshrank/feast/registry.db"
    # Everything else is the repo's own feature_store.yaml, which Feast reads in the
    # integration tests: the chart adds no drift.
    repo_config = yaml.safe_load((REPO / "feature_repo" / "feature_store.yaml").read_text())
    assert chart_config.keys() == repo_config.keys()
    for key in chart_config.keys() - {"registry", "online_store"}:
        assert chart_config[key] == repo_config[key], key
    assert repo_config["online_store"]["type"] == "redis"
    # Every pod that may run Feast finds this file and its variables.
    for workload in workloads(production_manifests):
        container = pod_spec(workload)["containers"][0]
        mount_dirs = {m["mountPath"] for m in container["volumeMounts"]}
        env = plain_env(container)
        assert env["FEAST_FS_YAML_FILE_PATH"].rsplit("/", 1)[0] in mount_dirs
        assert "FRESHRANK_REDIS_PASSWORD" in env_of(container)


def test_cronjobs_run_candidates_hourly_and_training_daily(default_manifests: list[Manifest]) -> None:
    candidates = one(default_manifests, "CronJob", "-candidates")
    training = one(default_manifests, "CronJob", "-training")
    assert candidates["spec"]["schedule"] == "0 * * * *"
    assert training["spec"]["schedule"] == "30 3 * * *"
    for cronjob, args in ((candidates, ["candidates"]), (training, ["train"])):
        assert cronjob["spec"]["concurrencyPolicy"] == "Forbid"  # a slow run never overlaps the next
        assert cronjob["spec"]["timeZone"] == "Etc/UTC"
        spec = pod_spec(cronjob)
        assert spec["restartPolicy"] == "Never"
        container = spec["containers"][0]
        assert container["args"] == args
        env = plain_env(container)
        assert env["FRESHRANK_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["FRESHRANK_REDIS_ADDRESS"] == "redis-master:6379"
        assert env["FRESHRANK_MODEL_REGISTRY"] == "/var/lib/freshrank/models"
    schedules = {"candidates": {"schedule": "15 */2 * * *"}, "training": {"schedule": "0 1 * * 0"}}
    custom = render(schedules)
    assert one(custom, "CronJob", "-candidates")["spec"]["schedule"] == "15 */2 * * *"
    assert one(custom, "CronJob", "-training")["spec"]["schedule"] == "0 1 * * 0"
    assert not [m for m in render({"candidates": {"enabled": False}}) if m["metadata"]["name"].endswith("-candidates")]


def test_stream_job_runs_the_python_entry_with_savepoint_upgrades_and_checkpoint_uri(
    default_manifests: list[Manifest],
) -> None:
    flink = one(default_manifests, "FlinkDeployment")
    spec = flink["spec"]
    job = spec["job"]
    assert job["entryClass"] == "org.apache.flink.client.python.PythonDriver"
    assert job["jarURI"] == "local:///opt/flink/opt/flink-python.jar"
    # PythonDriver parses its own options first; the module comes last.
    assert job["args"][-2:] == ["-pym", "streaming.job_main"]
    assert job["args"][job["args"].index("-pyclientexec") + 1] == "/opt/freshrank/venv/bin/python"
    assert job["upgradeMode"] == "savepoint" and job["state"] == "running"
    assert job["parallelism"] == 2
    config = spec["flinkConfiguration"]
    assert config["execution.checkpointing.dir"] == "file:///var/lib/freshrank/flink/checkpoints"
    assert config["execution.checkpointing.savepoint-dir"] == "file:///var/lib/freshrank/flink/savepoints"
    assert config["execution.checkpointing.mode"] == "EXACTLY_ONCE"
    assert config["python.execution-mode"] == "thread"
    assert config["python.executable"] == "/opt/freshrank/venv/bin/python"
    # A lost JobManager resumes from the latest checkpoint instead of starting over.
    assert config["high-availability.type"] == "kubernetes"
    assert config["high-availability.storageDir"] == "file:///var/lib/freshrank/flink/ha"
    assert spec["image"] == "freshrank:0.1.0" and spec["serviceAccount"] == "flink"
    container = spec["podTemplate"]["spec"]["containers"][0]
    assert container["name"] == "flink-main-container"  # the name the operator merges into
    env = plain_env(container)
    assert env["FRESHRANK_STREAM_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert env["FRESHRANK_STREAM_REDIS_ADDRESS"] == "redis-master:6379"
    assert env["FRESHRANK_STREAM_FEAST_REGISTRY"] == "/var/lib/freshrank/feast/registry.db"
    # The operator owns checkpoint and restore paths; the job must not be told its own.
    assert "FRESHRANK_STREAM_CHECKPOINT_DIR" not in env

    s3 = {"stream": {"checkpoints": {"uri": "s3://bucket/ckpt", "savepointsUri": "s3://bucket/sp"}}}
    config = one(render(s3), "FlinkDeployment")["spec"]["flinkConfiguration"]
    assert config["execution.checkpointing.dir"] == "s3://bucket/ckpt"
    assert config["execution.checkpointing.savepoint-dir"] == "s3://bucket/sp"


def test_production_stream_job_has_ha_periodic_savepoints_and_settings(production_manifests: list[Manifest]) -> None:
    spec = one(production_manifests, "FlinkDeployment")["spec"]
    config = spec["flinkConfiguration"]
    assert config["high-availability.type"] == "kubernetes"
    assert config["high-availability.storageDir"] == "file:///var/lib/freshrank/flink/ha"
    assert config["kubernetes.operator.periodic.savepoint.interval"] == "6h"
    assert config["kubernetes.operator.job.upgrade.last-state-fallback.enabled"] == "true"
    assert spec["image"].startswith("registry.example.com/feeds/freshrank@sha256:")
    env = plain_env(spec["podTemplate"]["spec"]["containers"][0])
    assert env["FRESHRANK_STREAM_LATENESS_MS"] == "300000"
    assert env["FRESHRANK_STREAM_PARALLELISM"] == "8"
    assert env["FRESHRANK_STREAM_SECURITY_PROTOCOL"] == "SASL_SSL"


def test_every_pod_runs_as_non_root_without_privilege_escalation(
    default_manifests: list[Manifest], production_manifests: list[Manifest]
) -> None:
    for workload in workloads(default_manifests) + workloads(production_manifests):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["runAsUser"] == 10001, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            assert container["securityContext"]["allowPrivilegeEscalation"] is False, name
            assert container["securityContext"]["capabilities"]["drop"] == ["ALL"], name
        if workload["kind"] != "FlinkDeployment":  # Flink writes logs inside its distribution
            assert spec["containers"][0]["securityContext"]["readOnlyRootFilesystem"] is True, name
            assert spec["automountServiceAccountToken"] is False, name


def test_all_roles_share_one_volume_and_one_image(production_manifests: list[Manifest]) -> None:
    images = set()
    for workload in workloads(production_manifests):
        spec = pod_spec(workload)
        claims = {v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v}
        assert claims == {"freshrank-shared"}, workload["metadata"]["name"]
        is_flink = workload["kind"] == "FlinkDeployment"
        images.add(workload["spec"]["image"] if is_flink else spec["containers"][0]["image"])
    assert images == {"registry.example.com/feeds/freshrank@sha256:" + "0" * 64}
    assert not [m for m in production_manifests if m["kind"] == "PersistentVolumeClaim"]  # existingClaim is used


def test_without_a_claim_pods_fall_back_to_emptydir_and_notes_warn() -> None:
    values = {"storage": {"create": False}}
    for workload in workloads(render(values)):
        data = [v for v in pod_spec(workload)["volumes"] if v["name"] == "data"]
        assert data == [{"name": "data", "emptyDir": {}}]
    assert "WARNING" in render_files(values)["freshrank/templates/NOTES.txt"]
    pvc = one(render(), "PersistentVolumeClaim")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"  # models survive uninstall


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"kafka": {"securityProtocol": "SASL_SSL", "saslMechanism": "PLAIN"}}, "needs kafka.existingSecret"),
        ({"kafka": {"securityProtocol": "SASL_SSL", "existingSecret": "k"}}, "needs kafka.saslMechanism"),
        ({"api": {"existingSecret": ""}}, "api.environment=production needs api.existingSecret"),
        ({"stream": {"upgradeMode": "last-state", "highAvailability": {"enabled": False}}}, "needs stream.high"),
        ({"stream": {"jobManager": {"replicas": 2}, "highAvailability": {"enabled": False}}}, "needs stream.high"),
        ({"stream": {"checkpoints": {"savepointsUri": ""}}}, "needs stream.checkpoints.savepointsUri"),
    ],
)
def test_refuses_to_render_a_release_that_cannot_work(values: dict[str, Any], message: str) -> None:
    with pytest.raises(helm.HelmRenderError, match=re.escape(message)):
        render(values)


def test_a_dev_api_may_run_without_an_api_key_secret() -> None:
    deployment = one(render({"api": {"environment": "dev", "existingSecret": ""}}), "Deployment", "-api")
    assert "FRESHRANK_SERVE_API_KEYS" not in env_of(pod_spec(deployment)["containers"][0])


def test_long_release_names_stay_within_kubernetes_and_flink_limits() -> None:
    release = "a-very-long-release-name-for-the-feeds-team-in-europe"
    manifests = render(release=release)
    limits = {"FlinkDeployment": 45, "CronJob": 52}
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        assert len(name) <= limits.get(manifest["kind"], 63), (manifest["kind"], name)
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name
    names = [(m["kind"], m["metadata"]["name"]) for m in manifests]
    assert len(names) == len(set(names))


def test_every_value_is_documented_next_to_its_key() -> None:
    # CONVENTIONS rule 13. A key is documented by a "# -- " comment block right above it. A
    # documented block whose children carry no docs of their own (podSecurityContext: plain
    # Kubernetes fields) documents them all; section banners ("# --- ...") document nothing.
    lines = (CHART / "values.yaml").read_text().splitlines()
    keys: list[tuple[int, int, bool]] = []  # (line index, indent, has its own doc)
    for number, line in enumerate(lines):
        match = re.match(r"^( *)([A-Za-z0-9_.-]+):", line)
        if not match:
            continue
        block = []
        for above in reversed(lines[:number]):
            if not above.lstrip().startswith("#"):
                break
            block.append(above)
        keys.append((number, len(match.group(1)), any(re.match(r"^\s*# -- ", c) for c in block)))

    def children(index: int) -> list[tuple[int, int, bool]]:
        _, indent, _ = keys[index]
        found = []
        for later in keys[index + 1 :]:
            if later[1] <= indent:
                break
            found.append(later)
        child_indent = min((k[1] for k in found), default=0)
        return [k for k in found if k[1] == child_indent]

    covered: set[int] = set()
    for index, (_, _, documented) in enumerate(keys):
        kids = children(index)
        if documented and kids and not any(kid[2] for kid in kids):
            covered.update(k[0] for k in keys[index + 1 :] if k[1] > keys[index][1] and k[0] < _block_end(keys, index))
    undocumented = [
        f"line {number + 1}: {lines[number].strip()}"
        for index, (number, _, documented) in enumerate(keys)
        if not children(index) and not documented and number not in covered
    ]
    assert not undocumented, "undocumented values:\n" + "\n".join(undocumented)


def _block_end(keys: list[tuple[int, int, bool]], index: int) -> int:
    """Line index where the block of keys[index] ends (the next key at the same or lower indent)."""
    for later in keys[index + 1 :]:
        if later[1] <= keys[index][1]:
            return later[0]
    return 1 << 30


def test_every_default_value_key_is_used_by_a_template() -> None:
    # A documented value that no template reads would be a setting that silently does nothing.
    templates = "\n".join(p.read_text() for p in (CHART / "templates").iterdir())
    # Blocks the templates reach through a variable: the CronJob helper gets a role's values
    # as $job, the FlinkDeployment binds the checkpoint block to $ckpt.
    aliases = {"candidates": "$job", "training": "$job", "stream.checkpoints": "$ckpt"}
    unused = []

    def used(path: str) -> bool:
        """Read as a whole (`.Values.api.resources`), not only through a sub-key (`.Values.api.enabled`)."""
        references = [rf"\.Values\.{re.escape(path)}"]
        references += [
            rf"{re.escape(alias)}\.{re.escape(path[len(block) + 1 :])}"
            for block, alias in aliases.items()
            if path.startswith(block + ".")
        ]
        return any(re.search(reference + r"(?![.\w])", templates) for reference in references)

    def walk(prefix: str, node: Any) -> None:
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            if used(path) and path not in aliases:  # an aliased block is checked key by key
                continue
            if isinstance(value, dict) and value:
                walk(path, value)
            else:
                unused.append(path)

    walk("", DEFAULTS)
    assert not unused, unused


@pytest.mark.parametrize(
    ("values", "where"),
    [
        ({"api": {"replicas": 3}}, "/api"),  # the key is replicaCount
        ({"stream": {"upgradeMode": "last_state"}}, "/stream/upgradeMode"),
        ({"kafka": {"securityProtocol": "SASL"}}, "/kafka/securityProtocol"),
        ({"stream": {"parallelism": 0}}, "/stream/parallelism"),
        ({"candidates": {"args": "candidates"}}, "/candidates/args"),
    ],
)
def test_misspelt_or_invalid_values_are_rejected_by_the_values_schema(values: dict[str, Any], where: str) -> None:
    # Without values.schema.json Helm would ignore an unknown key and deploy the default.
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        render(values)


def test_values_schema_names_exactly_the_keys_of_values_yaml() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    # Keys a user may add that have no default (the operator's optional Resource field).
    optional = {".stream.jobManager.resource.ephemeralStorage", ".stream.taskManager.resource.ephemeralStorage"}
    mismatches: list[str] = []

    def compare(path: str, node_schema: dict[str, Any], node: Any) -> None:
        if "properties" not in node_schema:
            return  # a free-form block (resources, nodeSelector, experiments, ...)
        assert node_schema.get("additionalProperties") is False, f"{path or 'root'} must forbid unknown keys"
        declared, present = set(node_schema["properties"]), set(node)
        mismatches.extend(f"{path}.{key}: in values.yaml, not in the schema" for key in present - declared)
        mismatches.extend(
            f"{path}.{key}: in the schema, not in values.yaml"
            for key in declared - present
            if f"{path}.{key}" not in optional
        )
        for key in declared & present:
            compare(f"{path}.{key}", node_schema["properties"][key], node[key])

    compare("", schema, DEFAULTS)
    assert not mismatches, mismatches


def test_notes_say_how_to_reach_the_flink_dashboard_behind_the_operators_rest_service() -> None:
    notes = render_files()["freshrank/templates/NOTES.txt"]
    stream = one(render(), "FlinkDeployment")["metadata"]["name"]
    # The Flink operator names the JobManager's REST/UI service after the deployment.
    assert f"port-forward svc/{stream}-rest 8081" in notes
