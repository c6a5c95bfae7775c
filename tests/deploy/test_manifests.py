"""Offline checks for deploy/: Kubernetes manifests and the Dockerfile.

Every YAML document under deploy/kubernetes is validated against the Kubernetes
JSON schemas shipped with ``kubernetes-validate`` (strict mode, so unknown or
misspelled fields fail), and the properties the gateway relies on at runtime
(health probe paths, non-root user, Secret references, config mount, graceful
shutdown budget) are asserted explicitly.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.version import Version

REPO_ROOT = Path(__file__).resolve().parents[2]
DEPLOY_DIR = REPO_ROOT / "deploy"
K8S_DIR = DEPLOY_DIR / "kubernetes"
DOCKERFILE = DEPLOY_DIR / "Dockerfile"

APP_NAME = "ai-cost-gateway"
SECRET_NAME = "ai-cost-gateway"
APP_UID = 10001
LIVE_PATH = "/api/health/live"
READY_PATH = "/api/health/ready"
PORT_NAME = "http"
CONTAINER_PORT = 8080
CONFIG_PATH = "/app/config/gateway.toml"
REQUIRED_SECRET_KEYS = ("GATEWAY_ADMIN_TOKEN", "GATEWAY_DATABASE_URL")
OPTIONAL_SECRET_KEYS = (
    "GATEWAY_REDIS_URL",
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GEMINI_API_KEY",
    "AZURE_OPENAI_API_KEY",
    "MISTRAL_API_KEY",
    "COHERE_API_KEY",
)
# Seconds the gateway needs after SIGTERM to drain and flush its usage ledger.
GATEWAY_DRAIN_SECONDS = 20

EXPECTED_FILES = {
    "deployment.yaml": "Deployment",
    "service.yaml": "Service",
    "configmap.yaml": "ConfigMap",
    "secret.example.yaml": "Secret",
    "hpa.yaml": "HorizontalPodAutoscaler",
    "pdb.yaml": "PodDisruptionBudget",
    "kustomization.yaml": "Kustomization",
}

# Newest Kubernetes schema version bundled with kubernetes-validate (1.37 at the
# time of writing); the dev extra requires kubernetes-validate>=1.30.
K8S_VERSION = kubernetes_validate.latest_version()


# --------------------------------------------------------------------------- helpers


def _load_docs(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as fh:
        docs = [doc for doc in yaml.safe_load_all(fh) if doc is not None]
    for doc in docs:
        assert isinstance(doc, dict), f"{path.name}: every YAML document must be a mapping"
    return docs


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S_DIR.iterdir() if p.suffix in {".yaml", ".yml"})


def _single(filename: str, kind: str) -> dict[str, Any]:
    docs = _load_docs(K8S_DIR / filename)
    assert len(docs) == 1, f"{filename}: expected exactly one document, got {len(docs)}"
    assert docs[0]["kind"] == kind, f"{filename}: expected kind {kind}, got {docs[0]['kind']}"
    return docs[0]


def _k8s_validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def deployment() -> dict[str, Any]:
    return _single("deployment.yaml", "Deployment")


@pytest.fixture(scope="module")
def pod_spec(deployment: dict[str, Any]) -> dict[str, Any]:
    return deployment["spec"]["template"]["spec"]


@pytest.fixture(scope="module")
def container(pod_spec: dict[str, Any]) -> dict[str, Any]:
    containers = pod_spec["containers"]
    assert len(containers) == 1, "the gateway pod should run exactly one container"
    return containers[0]


@pytest.fixture(scope="module")
def env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    entries = container.get("env", [])
    names = [e["name"] for e in entries]
    assert len(names) == len(set(names)), f"duplicate env vars: {names}"
    return {e["name"]: e for e in entries}


def _dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments and line continuations resolved."""
    instructions: list[tuple[str, str]] = []
    buf = ""
    for raw in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#"):
            continue  # comments and parser directives; allowed inside continuations too
        if line.endswith("\\"):
            buf += line[:-1].strip() + " "
            continue
        buf += line
        if buf.strip():
            keyword, _, rest = buf.strip().partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
        buf = ""
    assert not buf.strip(), "Dockerfile ends inside a line continuation"
    return instructions


def _final_stage() -> list[tuple[str, str]]:
    instructions = _dockerfile_instructions()
    froms = [i for i, (kw, _) in enumerate(instructions) if kw == "FROM"]
    assert froms, "Dockerfile has no FROM"
    return instructions[froms[-1] :]


def _exec_form(args: str, keyword: str) -> list[str]:
    try:
        value = json.loads(args)
    except json.JSONDecodeError as exc:
        raise AssertionError(f"{keyword} must use the JSON exec form, got {args!r}") from exc
    assert isinstance(value, list) and all(isinstance(v, str) for v in value)
    return value


# ------------------------------------------------------------------ file inventory


def test_kubernetes_validate_ships_a_recent_schema() -> None:
    assert Version(K8S_VERSION) >= Version("1.30")


def test_expected_manifest_files_exist() -> None:
    present = {p.name for p in _manifest_files()}
    missing = set(EXPECTED_FILES) - present
    assert not missing, f"missing manifests: {sorted(missing)}"


@pytest.mark.parametrize("filename", sorted(EXPECTED_FILES))
def test_one_resource_kind_per_file(filename: str) -> None:
    kinds = {doc["kind"] for doc in _load_docs(K8S_DIR / filename)}
    assert kinds == {EXPECTED_FILES[filename]}


# -------------------------------------------------------------- schema validation


@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifest_matches_kubernetes_schema(path: Path) -> None:
    docs = _load_docs(path)
    assert docs, f"{path.name} contains no YAML documents"
    for doc in docs:
        assert {"apiVersion", "kind"} <= doc.keys(), f"{path.name}: missing apiVersion/kind"
        try:
            _k8s_validate(doc)
        except kubernetes_validate.SchemaNotFoundError:
            # Only kustomize's own config file may lack a Kubernetes schema; it is
            # checked separately in test_kustomization_*.
            assert doc["kind"] == "Kustomization", (
                f"{path.name}: no schema for {doc['apiVersion']} {doc['kind']} "
                f"in Kubernetes {K8S_VERSION}"
            )
        except kubernetes_validate.ValidationError as exc:
            location = "/".join(str(p) for p in exc.absolute_path)
            pytest.fail(f"{path.name} ({doc['kind']}): {exc.message} at {location or '<root>'}")


def test_validator_rejects_invalid_manifests(deployment: dict[str, Any]) -> None:
    """Guard against the schema check silently passing everything."""
    import copy

    typo = copy.deepcopy(deployment)
    typo["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        _k8s_validate(typo)

    wrong_type = copy.deepcopy(deployment)
    wrong_type["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        _k8s_validate(wrong_type)


def test_manifests_are_namespace_agnostic() -> None:
    for path in _manifest_files():
        for doc in _load_docs(path):
            assert "namespace" not in doc.get("metadata", {}), f"{path.name} hard-codes a namespace"


# ------------------------------------------------------------------- kustomization


def test_kustomization_lists_existing_files_except_example_secret() -> None:
    kustomization = _single("kustomization.yaml", "Kustomization")
    assert kustomization["apiVersion"].startswith("kustomize.config.k8s.io/")
    resources = kustomization.get("resources", [])
    assert len(resources) == len(set(resources)), f"duplicate resources: {resources}"
    for resource in resources:
        assert (K8S_DIR / resource).is_file(), f"kustomization lists missing file {resource}"
    assert "secret.example.yaml" not in resources, "the example Secret must not be applied"
    expected = set(EXPECTED_FILES) - {"secret.example.yaml", "kustomization.yaml"}
    assert set(resources) == expected


# ---------------------------------------------------------------------- deployment


def test_deployment_rollout(deployment: dict[str, Any]) -> None:
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    selector = spec["selector"]["matchLabels"]
    labels = spec["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items(), "selector must match the pod template labels"


def test_container_image_and_port(container: dict[str, Any]) -> None:
    assert container["image"] == "ghcr.io/example/ai-cost-gateway:0.1.0"
    ports = {p["name"]: p for p in container["ports"]}
    assert ports[PORT_NAME]["containerPort"] == CONTAINER_PORT


@pytest.mark.parametrize(
    ("probe", "path"),
    [
        ("livenessProbe", LIVE_PATH),
        ("readinessProbe", READY_PATH),
        ("startupProbe", LIVE_PATH),
    ],
)
def test_probes_hit_health_endpoints_on_named_port(
    container: dict[str, Any], probe: str, path: str
) -> None:
    http_get = container[probe]["httpGet"]
    assert http_get["path"] == path
    assert http_get["port"] == PORT_NAME
    assert http_get.get("scheme", "HTTP") == "HTTP"


def test_readiness_and_liveness_are_distinct(container: dict[str, Any]) -> None:
    # A PostgreSQL outage makes /ready fail; it must not restart pods via liveness.
    assert container["livenessProbe"]["httpGet"]["path"] != READY_PATH
    assert container["readinessProbe"]["httpGet"]["path"] != LIVE_PATH


def test_resources_set(container: dict[str, Any]) -> None:
    resources = container["resources"]
    for section in ("requests", "limits"):
        assert {"cpu", "memory"} <= resources[section].keys(), f"missing {section}"


def test_pod_runs_as_non_root(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    pod_sc = pod_spec["securityContext"]
    ctr_sc = container["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert ctr_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == APP_UID
    assert ctr_sc.get("runAsUser", APP_UID) == APP_UID
    assert ctr_sc["allowPrivilegeEscalation"] is False
    assert ctr_sc["readOnlyRootFilesystem"] is True
    assert ctr_sc["capabilities"]["drop"] == ["ALL"]
    assert not ctr_sc["capabilities"].get("add")
    assert ctr_sc.get("privileged", False) is False


def test_tmp_is_a_writable_emptydir(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    volumes = {v["name"]: v for v in pod_spec["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/tmp" in mounts, "read-only root filesystem needs a writable /tmp"
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    assert not mounts["/tmp"].get("readOnly", False)


def test_data_dir_is_under_writable_tmp(env: dict[str, dict[str, Any]]) -> None:
    assert env["GATEWAY_DATA_DIR"]["value"].startswith("/tmp/")


def test_config_file_mounted_from_configmap(
    pod_spec: dict[str, Any], container: dict[str, Any], env: dict[str, dict[str, Any]]
) -> None:
    assert env["GATEWAY_CONFIG"]["value"] == CONFIG_PATH
    configmap = _single("configmap.yaml", "ConfigMap")
    volumes = {v["name"]: v for v in pod_spec["volumes"]}

    # Either the file itself is mounted via subPath, or its directory is mounted.
    matches = []
    for mount in container["volumeMounts"]:
        source = volumes[mount["name"]].get("configMap")
        if source is None or source["name"] != configmap["metadata"]["name"]:
            continue
        items = {i["key"]: i["path"] for i in source.get("items", [])}
        file_in_volume = items.get("gateway.toml", "gateway.toml")
        if mount.get("subPath"):
            mounted_at = mount["mountPath"] if mount["subPath"] == file_in_volume else None
        else:
            mounted_at = f"{mount['mountPath'].rstrip('/')}/{file_in_volume}"
        if mounted_at == CONFIG_PATH:
            matches.append(mount)
    assert matches, f"ConfigMap key gateway.toml is not mounted at {CONFIG_PATH}"
    assert all(m.get("readOnly") for m in matches)


def test_required_secrets_are_referenced(env: dict[str, dict[str, Any]]) -> None:
    for name in REQUIRED_SECRET_KEYS:
        assert name in env, f"{name} is not set"
        ref = env[name].get("valueFrom", {}).get("secretKeyRef")
        assert ref is not None, f"{name} must come from a Secret, not a literal value"
        assert ref["name"] == SECRET_NAME
        assert ref["key"] == name
        assert ref.get("optional", False) is False, f"{name} must be required"


def test_optional_secrets_are_optional(env: dict[str, dict[str, Any]]) -> None:
    for name in OPTIONAL_SECRET_KEYS:
        assert name in env, f"{name} is not set"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == SECRET_NAME
        assert ref["key"] == name
        assert ref.get("optional") is True, f"{name} must be optional: true"


def test_no_secret_values_inlined(env: dict[str, dict[str, Any]]) -> None:
    for name in (*REQUIRED_SECRET_KEYS, *OPTIONAL_SECRET_KEYS):
        assert "value" not in env[name], f"{name} must not be a literal in the Deployment"


def test_graceful_shutdown_budget(pod_spec: dict[str, Any], container: dict[str, Any]) -> None:
    grace = pod_spec["terminationGracePeriodSeconds"]
    assert grace == 30
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] in {"sleep", "/bin/sleep"}
    pre_stop_seconds = int(command[1])
    assert pre_stop_seconds > 0
    # The preStop sleep runs before SIGTERM but counts against the grace period.
    assert pre_stop_seconds + GATEWAY_DRAIN_SECONDS < grace


def test_prometheus_scrape_annotations(deployment: dict[str, Any]) -> None:
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == "/metrics"
    assert annotations["prometheus.io/port"] == str(CONTAINER_PORT)


# --------------------------------------------------------- service, hpa, pdb, config


def test_service_targets_named_port(deployment: dict[str, Any]) -> None:
    service = _single("service.yaml", "Service")
    spec = service["spec"]
    assert spec.get("type", "ClusterIP") == "ClusterIP"
    (port,) = spec["ports"]
    assert port["port"] == 80
    assert port["targetPort"] == PORT_NAME
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"], "service selector must not be empty"
    assert spec["selector"].items() <= pod_labels.items(), "service selects no gateway pods"


def test_hpa_scales_the_deployment_on_cpu(deployment: dict[str, Any]) -> None:
    hpa = _single("hpa.yaml", "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    target = spec["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 10)
    resource_metrics = [m["resource"] for m in spec["metrics"] if m["type"] == "Resource"]
    assert any(m["name"] == "cpu" for m in resource_metrics)


def test_pdb_covers_gateway_pods(deployment: dict[str, Any]) -> None:
    pdb = _single("pdb.yaml", "PodDisruptionBudget")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["minAvailable"] == 1
    selector = pdb["spec"]["selector"]["matchLabels"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert selector and selector.items() <= pod_labels.items()


def test_configmap_gateway_toml_is_valid_production_config() -> None:
    configmap = _single("configmap.yaml", "ConfigMap")
    config = tomllib.loads(configmap["data"]["gateway.toml"])
    assert config["server"]["host"] == "0.0.0.0"
    assert config["server"]["port"] == CONTAINER_PORT
    assert config["logging"]["format"] == "json"


def test_configmap_holds_no_secrets() -> None:
    text = _single("configmap.yaml", "ConfigMap")["data"]["gateway.toml"].lower()
    for marker in ("api_key", "password", "token", "postgresql://", "postgres://"):
        assert marker not in text, f"ConfigMap must not contain {marker!r}"


def test_example_secret_is_marked_and_provides_required_keys() -> None:
    path = K8S_DIR / "secret.example.yaml"
    assert "DO NOT COMMIT" in path.read_text(encoding="utf-8").upper()
    secret = _single("secret.example.yaml", "Secret")
    assert secret["metadata"]["name"] == SECRET_NAME
    data = secret.get("stringData", {})
    for key in REQUIRED_SECRET_KEYS:
        assert key in data, f"example Secret lacks {key}"
    for key, value in data.items():
        assert "CHANGE-ME" in value, f"example Secret value for {key} is not a placeholder"


# ---------------------------------------------------------------------- Dockerfile


def test_dockerfile_is_multistage_slim() -> None:
    instructions = _dockerfile_instructions()
    args = {}
    for kw, rest in instructions:
        if kw == "ARG" and "=" in rest:
            key, _, value = rest.partition("=")
            args[key.strip()] = value.strip()
    froms = [rest for kw, rest in instructions if kw == "FROM"]
    assert len(froms) >= 2, "expected a builder stage and a runtime stage"
    for line in froms:
        image = line.split()[0]
        image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image)
        assert image.startswith("python:3.11-slim"), f"unexpected base image {image}"
    # The runtime stage installs the wheel built by an earlier stage.
    final = _final_stage()
    assert any("from=builder" in rest for kw, rest in final if kw in {"RUN", "COPY"})


def test_dockerfile_runs_as_fixed_non_root_uid() -> None:
    users = [rest for kw, rest in _final_stage() if kw == "USER"]
    assert users, "runtime stage has no USER instruction (would run as root)"
    user, _, group = users[-1].partition(":")
    assert user.isdigit(), "use a numeric UID so Kubernetes can verify runAsNonRoot"
    assert int(user) == APP_UID
    assert int(user) != 0 and (not group or int(group) != 0)


def test_dockerfile_exposes_8080_and_runs_gateway_serve() -> None:
    final = _final_stage()
    exposed = {port for kw, rest in final if kw == "EXPOSE" for port in rest.split()}
    assert str(CONTAINER_PORT) in exposed or f"{CONTAINER_PORT}/tcp" in exposed

    entrypoints = [_exec_form(rest, kw) for kw, rest in final if kw == "ENTRYPOINT"]
    cmds = [_exec_form(rest, kw) for kw, rest in final if kw == "CMD"]
    assert entrypoints and cmds
    argv = entrypoints[-1] + cmds[-1]
    assert argv[:2] == ["gateway", "serve"]
    assert argv[argv.index("--port") + 1] == str(CONTAINER_PORT)
    assert argv[argv.index("--host") + 1] == "0.0.0.0"


def _dockerfile_env(final: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for kw, rest in final:
        if kw == "ENV":
            for pair in rest.split():
                key, sep, value = pair.partition("=")
                assert sep, f"use ENV key=value, got {pair!r}"
                env[key] = value.strip('"')
    return env


def test_dockerfile_points_gateway_at_app_files() -> None:
    # The package's defaults for migrations/ and prices.toml are relative to the
    # source tree, i.e. site-packages once installed from a wheel.
    env = _dockerfile_env(_final_stage())
    assert env["GATEWAY_CONFIG"] == CONFIG_PATH
    assert env["GATEWAY_DATABASE_MIGRATIONS_DIR"] == "/app/migrations"
    assert env["GATEWAY_PRICING_FILE"] == "/app/config/prices.toml"
    assert env["GATEWAY_DATA_DIR"].startswith("/tmp/")
    workdirs = [rest for kw, rest in _final_stage() if kw == "WORKDIR"]
    assert workdirs and workdirs[-1] == "/app"


def test_configmap_and_image_env_load_with_gateway_settings(tmp_path: Path) -> None:
    """The production config plus the image/pod environment passes the gateway's own
    settings validation (skipped if the settings loader is not importable)."""
    settings_mod = pytest.importorskip("gateway.settings")
    load_settings = getattr(settings_mod, "load_settings", None)
    if load_settings is None:
        pytest.skip("gateway.settings.load_settings not available")
    config_file = tmp_path / "gateway.toml"
    config_file.write_text(
        _single("configmap.yaml", "ConfigMap")["data"]["gateway.toml"], encoding="utf-8"
    )
    deployment = _single("deployment.yaml", "Deployment")
    container_env = deployment["spec"]["template"]["spec"]["containers"][0].get("env", [])
    pod_env = {e["name"]: e["value"] for e in container_env if "value" in e}
    environ = {
        **_dockerfile_env(_final_stage()),
        **pod_env,
        "GATEWAY_CONFIG": str(config_file),
        "GATEWAY_DATABASE_URL": "postgresql://gateway:x@db.invalid:5432/gateway",
        "GATEWAY_ADMIN_TOKEN": "test-token",
    }
    settings = load_settings(environ=environ)
    assert settings.server.host == "0.0.0.0"
    assert settings.server.port == CONTAINER_PORT
    assert str(settings.database.migrations_dir) == "/app/migrations"


def test_dockerfile_env_healthcheck_and_app_files() -> None:
    final = _final_stage()
    env_text = " ".join(rest for kw, rest in final if kw == "ENV")
    assert re.search(r"\bPYTHONUNBUFFERED=1\b", env_text)
    healthchecks = [rest for kw, rest in final if kw == "HEALTHCHECK"]
    assert healthchecks and LIVE_PATH in healthchecks[-1] and "urllib" in healthchecks[-1]
    copies = [rest.split() for kw, rest in final if kw == "COPY"]
    destinations = {c[-1].rstrip("/") for c in copies if not c[0].startswith("--from")}
    assert {"/app/config", "/app/migrations"} <= destinations
