"""The container image, the compose file and the Kubernetes manifests, checked statically.

No container runtime or cluster runs here (docs/deploy.md says what was and was not run), so
these are what can be checked without one: every manifest against the Kubernetes API's own
schemas (kubernetes-validate, offline), and every file cross-checked against the code it
deploys: the settings the service reads, the services and volumes it names, the paths its
probes ask, the commands it runs.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from pydantic import ValidationError

from features.settings import Settings
from serving.openapi import openapi_spec

ROOT = Path(__file__).resolve().parents[1]
KUBERNETES = ROOT / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.30.0"
"""The oldest Kubernetes release still supported by the major clouds when this was written."""


def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yaml").read_text())


def manifests() -> list[tuple[str, dict]]:
    """Every Kubernetes object of deploy/kubernetes, with its file's name."""
    return [(path.name, doc) for path in sorted(KUBERNETES.glob("*.yaml"))
            if path.name != "kustomization.yaml"
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def objects(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in manifests() if doc["kind"] == kind}


def nextbest_services() -> dict[str, dict]:
    """The compose services that run the nextbest image with nextbest's settings."""
    return {name: service for name, service in compose()["services"].items()
            if any(k.startswith("NEXTBEST_") for k in service.get("environment", {}))}


def settings_from(env: dict[str, str]) -> Settings:
    """The settings a process started with ``env`` reads (as every layer reads them)."""
    unknown = sorted(k for k in env if k.startswith("NEXTBEST_")
                     and k.removeprefix("NEXTBEST_").lower() not in Settings.model_fields)
    assert not unknown, f"not settings nextbest reads: {unknown}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, str(value))
        return Settings()


# ---------------------------------------------------------------------------- Kubernetes
@pytest.mark.parametrize("name,doc", manifests(),
                         ids=[f"{n}:{d['kind']}" for n, d in manifests()])
def test_each_manifest_is_valid_against_the_kubernetes_api_schema(name, doc):
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as error:
        pytest.fail(f"{name}: {doc['kind']} {doc['metadata']['name']}: {error.message} "
                    f"at {'.'.join(map(str, error.path))}")


def test_the_kustomization_lists_every_manifest_and_nothing_else():
    listed = yaml.safe_load((KUBERNETES / "kustomization.yaml").read_text())["resources"]
    on_disk = sorted(p.name for p in KUBERNETES.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(listed) == on_disk


def test_the_configmap_holds_only_settings_nextbest_reads_and_they_are_valid():
    data = objects("ConfigMap")["nextbest"]["data"]
    settings = settings_from(data)
    assert settings.online_backend == "redis", "several pods need one shared online state"
    assert settings.data_dir == Path("/data")


def test_the_api_and_the_worker_are_deployments_of_the_image_with_the_settings():
    deployments = objects("Deployment")
    api, worker = (deployments[n]["spec"]["template"]["spec"]["containers"][0]
                   for n in ("nextbest-api", "nextbest-worker"))
    assert api["args"][:3] == ["bentoml", "serve", "serving.service:NextBest"]
    assert worker["args"] == ["nextbest", "worker"]
    for container in (api, worker):
        assert {"configMapRef": {"name": "nextbest"}} in container["envFrom"]
        assert container["resources"]["requests"]["memory"]
    assert deployments["nextbest-worker"]["spec"]["replicas"] == 1, "once per deployment"


def test_the_api_probes_ask_the_service_s_liveness_and_readiness_paths():
    api = objects("Deployment")["nextbest-api"]["spec"]["template"]["spec"]["containers"][0]
    served = openapi_spec("nextbest", "test")["paths"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/livez" in served
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz" in served
    port = api["ports"][0]
    assert port["containerPort"] == int(api["args"][api["args"].index("--port") + 1])
    assert api["livenessProbe"]["httpGet"]["port"] == port["name"]


def test_the_worker_s_liveness_probe_runs_the_heartbeat_check():
    worker = objects("Deployment")["nextbest-worker"]["spec"]["template"]["spec"]["containers"][0]
    command = worker["livenessProbe"]["exec"]["command"]
    assert command[:3] == ["python", "-m", "serving.background"]
    from serving.background import main

    assert main(command[3:]) in (0, 1), "the probe's arguments parse"


def test_the_secret_s_keys_are_the_ones_the_deployments_read():
    secret = objects("Secret")["nextbest"]["stringData"]
    read = {ref["valueFrom"]["secretKeyRef"]["key"]
            for doc in objects("Deployment").values()
            for c in doc["spec"]["template"]["spec"]["containers"]
            for ref in c.get("env", []) if "secretKeyRef" in ref.get("valueFrom", {})}
    assert read == set(secret)
    assert {k for k in secret if k.startswith("NEXTBEST_")} <= {
        f"NEXTBEST_{f.upper()}" for f in Settings.model_fields}


def test_the_tracking_uri_names_the_mlflow_service_and_its_port():
    uri = urlparse(objects("ConfigMap")["nextbest"]["data"]["NEXTBEST_TRACKING_URI"])
    service = objects("Service")[uri.hostname]
    assert uri.port in [p["port"] for p in service["spec"]["ports"]]
    args = " ".join(objects("Deployment")[uri.hostname]["spec"]["template"]["spec"]
                    ["containers"][0]["args"])
    assert f"{uri.hostname}:{uri.port}" in args, "MLflow refuses Host headers it does not allow"


def test_every_service_selects_the_pods_of_a_deployment():
    deployments = objects("Deployment")
    for name, service in objects("Service").items():
        labels = service["spec"]["selector"]
        assert any(labels.items() <= d["spec"]["template"]["metadata"]["labels"].items()
                   for d in deployments.values()), f"Service {name} selects no pods"


def test_the_autoscaler_scales_the_api_deployment_by_cpu():
    hpa = objects("HorizontalPodAutoscaler")["nextbest-api"]["spec"]
    assert hpa["scaleTargetRef"]["name"] in objects("Deployment")
    assert hpa["minReplicas"] >= 2
    api = objects("Deployment")["nextbest-api"]["spec"]["template"]["spec"]["containers"][0]
    assert api["resources"]["requests"]["cpu"], "utilization is relative to the request"


def test_the_api_s_memory_request_is_the_sizing_table_s_for_one_million_customers():
    table = (ROOT / "docs" / "deploy.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| 1M "))
    api = objects("Deployment")["nextbest-api"]["spec"]["template"]["spec"]["containers"][0]
    assert f"`{api['resources']['requests']['memory']}`" in row


# ---------------------------------------------------------------------------- compose
def test_every_nextbest_service_s_environment_is_valid_settings():
    for name, service in nextbest_services().items():
        try:
            settings_from(service["environment"])
        except ValidationError as error:
            pytest.fail(f"docker-compose.yaml service {name}: {error}")


def test_compose_runs_the_api_worker_redis_mlflow_and_postgresql():
    services = compose()["services"]
    assert {"api", "worker", "redis", "mlflow", "postgres"} <= set(services)
    assert services["worker"]["command"] == ["nextbest", "worker"]
    assert "command" not in services["api"], "the image's default command is the API"


def test_the_hosts_the_settings_name_are_services_of_the_compose_file():
    services = compose()["services"]
    for name, service in nextbest_services().items():
        settings = settings_from(service["environment"])
        for url in (settings.tracking_uri, settings.redis_url, settings.stream_url):
            if url:
                assert urlparse(url).hostname in services, f"{name}: {url} names no service"


def test_the_mlflow_server_allows_the_host_the_clients_call_it_by():
    services = compose()["services"]
    command = " ".join(services["mlflow"]["command"])
    for service in nextbest_services().values():
        uri = urlparse(service["environment"]["NEXTBEST_TRACKING_URI"])
        assert f"--port {uri.port}" in command
        assert re.search(rf"--allowed-hosts \S*{uri.hostname}:{uri.port}", command)


def test_every_dependency_and_volume_the_services_name_is_declared():
    spec = compose()
    for name, service in spec["services"].items():
        for needed in service.get("depends_on", {}):
            assert needed in spec["services"], f"{name} depends on unknown {needed}"
        for volume in service.get("volumes", []):
            assert volume.split(":")[0] in spec["volumes"], f"{name}: volume {volume}"


def test_the_image_serves_on_the_port_compose_publishes():
    dockerfile = (ROOT / "Dockerfile").read_text()
    exposed = re.search(r"^EXPOSE (\d+)$", dockerfile, re.M).group(1)
    assert compose()["services"]["api"]["ports"] == [f"{exposed}:{exposed}"]
    command = re.search(r"^CMD (\[.*\])$", dockerfile, re.M).group(1)
    assert f"--port {exposed}" in shlex.join(yaml.safe_load(command))


def test_the_image_copies_every_package_pyproject_installs():
    import tomllib

    dockerfile = (ROOT / "Dockerfile").read_text()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["include"]
    for package in packages:
        name = package.rstrip("*")
        assert re.search(rf"^COPY {name} \./{name}$", dockerfile, re.M), f"{name} not copied"
