"""The deployment files agree with the code: settings names, ports, probes, commands, images.

No Docker engine or Kubernetes API server is available where the tests run, so these
are static checks: every manifest is parsed, and what it tells a container (its
environment, command, ports, probes and volumes) is checked against the settings
classes, the ``streamrec`` CLI, the serving routes and the Dockerfile. Everything
the checks compare against is derived from the code, never from a second list.
``tests/integration/test_compose_rehearsal.py`` runs the compose services for real.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import json
import re
import shutil
import subprocess
import sys
import tomllib
from importlib import metadata
from importlib.metadata import packages_distributions
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

import pytest
import typer
import typer.core
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import SecretStr

from tests.deploy_manifests import (
    COMPOSE,
    COMPOSE_GPU,
    COMPOSE_VARIABLES,
    DEPLOY,
    DOCKERFILE,
    IMAGE_NAME,
    K8S,
    REPO,
    WORKLOAD_KINDS,
    all_containers,
    compose_container,
    compose_containers,
    compose_model,
    containers_running,
    dockerfile,
    is_persistent,
    k8s_containers,
    k8s_documents,
    k8s_objects,
    load_documents,
    pod_annotations,
    settings_from_env,
    settings_variables,
    streamrec_containers,
    volume_holding,
)

# Which settings group configures the process each subcommand starts.
GROUP_OF_SUBCOMMAND = {"flow": "flow", "learn": "learner", "drift": "drift", "serve": "serving"}


# --- what the code says ---------------------------------------------------------------


@functools.cache
def cli() -> typer.core.TyperGroup:
    """The ``streamrec`` command tree, with every stage's commands registered."""
    from cli.app import app

    return typer.main.get_command(app)


def parse_streamrec_args(args: list[str]) -> typer.Context:
    """Parse ``streamrec ARGS`` the way the CLI would, without running the command.

    Fails when a subcommand does not exist or an option is unknown or badly typed.
    """
    command: typer.core.TyperCommand | typer.core.TyperGroup = cli()
    path = ["streamrec"]
    while isinstance(command, typer.core.TyperGroup):
        assert args, f"`{' '.join(path)}` needs a subcommand"
        name, *args = args
        sub = command.get_command(typer.Context(command), name)
        assert sub is not None, f"`{' '.join(path)} {name}` is not a streamrec command"
        command, path = sub, [*path, name]
    return command.make_context(" ".join(path), list(args))


def serving_routes() -> set[str]:
    """The paths the serving app answers (its own list, which it also labels metrics by)."""
    from serving.app import ROUTES

    return set(ROUTES)


# --- parsing and names ----------------------------------------------------------------


def test_every_manifest_parses() -> None:
    paths = [p for p in DEPLOY.rglob("*") if p.suffix in {".yaml", ".yml", ".json"}]
    assert {COMPOSE, COMPOSE_GPU, K8S / "kustomization.yaml"} <= set(paths)
    for path in paths:
        assert load_documents(path), f"{path} is empty"


def test_every_streamrec_variable_the_manifests_set_exists_in_the_settings() -> None:
    valid = set(settings_variables())
    assert {"STREAMREC_BOOTSTRAP_SERVERS", "STREAMREC_SERVING_PORT"} <= valid
    set_somewhere: dict[str, set[str]] = {}
    for container in all_containers():
        for name in container.env:
            set_somewhere.setdefault(name, set()).add(container.where)
    gpu = compose_model(COMPOSE, COMPOSE_GPU)["services"]["learner"]["environment"]
    set_somewhere.update({name: {"compose.gpu.yaml"} for name in gpu})
    for obj in (*k8s_objects("ConfigMap").values(), *k8s_objects("Secret").values()):
        for name in obj.get("data") or obj.get("stringData") or {}:
            set_somewhere.setdefault(name, set()).add(f"k8s:{obj['metadata']['name']}")
    unknown = {
        n: w for n, w in set_somewhere.items() if n.startswith("STREAMREC_") and n not in valid
    }
    assert not unknown, f"not a setting: {unknown}"


def test_every_streamrec_container_environment_builds_valid_settings() -> None:
    for container in streamrec_containers():
        settings = container.settings()
        assert settings.kafka.bootstrap_servers != "127.0.0.1:9092", container.where
        assert settings.serving.host == "0.0.0.0", container.where


# --- commands and images --------------------------------------------------------------


def test_every_command_is_a_real_streamrec_subcommand_with_valid_options() -> None:
    containers = streamrec_containers()
    assert {c.subcommand for c in containers} >= {"services", *GROUP_OF_SUBCOMMAND}
    for container in containers:
        assert container.argv[:1] == ["streamrec"], f"{container.where}: {container.argv}"
        parse_streamrec_args(container.argv[1:])


def test_compose_references_only_declared_volumes_and_existing_files() -> None:
    model = compose_model(COMPOSE)
    for container in compose_containers(model):
        for source in container.mounts.values():
            if source.startswith((".", "/")):
                assert (COMPOSE.parent / source).exists(), f"{container.where}: {source}"
            else:
                assert source in model["volumes"], f"{container.where}: {source}"
        for dependency in container.spec.get("depends_on", {}):
            assert dependency in model["services"], f"{container.where}: {dependency}"


def test_the_topic_jobs_run_services_up_once() -> None:
    jobs = [c for c in streamrec_containers() if c.argv[1:] == ["services", "up"]]
    assert sorted(c.where for c in jobs) == ["compose:topics", "k8s:Job/streamrec-topics"]
    compose = compose_model(COMPOSE)["services"]
    assert compose["topics"]["restart"] == "no"
    for name, service in compose.items():
        if service["image"].startswith(f"{IMAGE_NAME}:") and name != "topics":
            assert service["depends_on"]["topics"] == {
                "condition": "service_completed_successfully"
            }, name


def test_images_are_the_dockerfile_variants_built_by_compose() -> None:
    docker = dockerfile()
    assert set(docker.variants) == {"cpu", "cuda"}
    assert docker.entrypoint == ("streamrec",)
    built = {}
    for path in (COMPOSE, COMPOSE_GPU):
        for name, service in compose_model(path)["services"].items():
            if "build" not in service:
                continue
            build = service["build"]
            assert (path.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
            variant = build["args"]["VARIANT"]
            assert variant in docker.variants, name
            assert service["image"] == f"{IMAGE_NAME}:{variant}", name
            built[service["image"]] = variant
    assert set(built) == {f"{IMAGE_NAME}:{v}" for v in docker.variants}
    for container in streamrec_containers():
        assert container.image in built, f"{container.where}: {container.image} is never built"


def test_the_image_holds_every_package_and_the_build_context_allows_it() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = {
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    copied = {c.rstrip("/") for c in dockerfile().copies}
    assert packages | {"pyproject.toml", pyproject["project"]["readme"]} <= copied
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for source in copied:
        assert (REPO / source).exists(), source
        assert source in allowed, f"{source} is copied but excluded by .dockerignore"


def test_the_image_installs_every_third_party_module_the_code_imports() -> None:
    # The image installs pyproject's dependencies (and what they require), nothing else:
    # a module installed by hand in a developer's virtualenv would crash the container.
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    packages = [
        p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    ]
    installed = requirement_closure(pyproject["project"]["dependencies"])
    distributions = packages_distributions()
    missing: dict[str, str] = {}
    for package in packages:
        for path in sorted((REPO / package).rglob("*.py")):
            for module in imported_modules(path):
                if module in sys.stdlib_module_names or module in packages:
                    continue
                provided_by = {canonicalize_name(d) for d in distributions.get(module, [module])}
                if not provided_by & installed:
                    missing.setdefault(module, str(path.relative_to(REPO)))
    assert not missing, f"imported but not a dependency in pyproject.toml: {missing}"


def imported_modules(path: Path) -> set[str]:
    """Top-level names of the absolute imports in a module, lazy ones inside functions too."""
    modules = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module.split(".")[0])
    return modules


def requirement_closure(requirements: list[str]) -> set[str]:
    """The distributions pip installs for ``requirements``: them and, recursively, theirs."""
    installed: set[tuple[str, str]] = set()
    pending = [Requirement(r) for r in requirements]
    while pending:
        requirement = pending.pop()
        for extra in requirement.extras or {""}:
            key = (canonicalize_name(requirement.name), extra)
            if key in installed:
                continue
            installed.add(key)
            for line in metadata.requires(requirement.name) or []:
                sub = Requirement(line)
                if sub.marker is None or sub.marker.evaluate({"extra": extra}):
                    pending.append(sub)
    return {name for name, _ in installed}


def test_the_learner_gets_a_gpu_and_only_cuda_containers_ask_for_one() -> None:
    for container in k8s_containers():
        limits = container.spec.get("resources", {}).get("limits", {})
        wants_gpu = int(limits.get("nvidia.com/gpu", 0)) > 0
        assert wants_gpu == container.image.endswith(":cuda"), container.where
    learner = containers_running("learn")
    assert any(c.image.endswith(":cuda") for c in learner)
    gpu = compose_model(COMPOSE, COMPOSE_GPU)["services"]["learner"]
    assert gpu["image"] == f"{IMAGE_NAME}:cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert settings_from_env(gpu["environment"]).learner.device == "cuda"


# --- ports, probes and metrics --------------------------------------------------------


def test_serving_ports_and_probes_match_the_code() -> None:
    routes = serving_routes()
    assert {"/healthz", "/readyz", "/metrics"} <= routes
    for container in containers_running("serve"):
        port = container.settings().serving.port
        assert port in container.ports.values(), container.where
        if container.where.startswith("k8s:"):
            assert container.ports["http"] == port
            probes = {k: container.spec[k]["httpGet"] for k in ("livenessProbe", "readinessProbe")}
            assert probes["livenessProbe"]["path"] == "/healthz"
            assert probes["readinessProbe"]["path"] == "/readyz"
            for probe in [*probes.values(), container.spec["startupProbe"]["httpGet"]]:
                assert probe["path"] in routes and container.ports[probe["port"]] == port
            assert pod_annotations(container)["prometheus.io/path"] in routes
            assert int(pod_annotations(container)["prometheus.io/port"]) == port
        else:
            url = urlparse(re.search(r"http://[^']+", container.spec["healthcheck"]["test"][-1])[0])
            assert url.port == port and url.path in routes


def test_metrics_ports_match_the_settings() -> None:
    for subcommand in ("flow", "learn", "drift"):
        for container in containers_running(subcommand):
            group = getattr(container.settings(), GROUP_OF_SUBCOMMAND[subcommand])
            assert group.metrics_port > 0, container.where
            if container.where.startswith("k8s:"):
                assert container.ports["metrics"] == group.metrics_port, container.where
                assert int(pod_annotations(container)["prometheus.io/port"]) == group.metrics_port


def test_prometheus_scrapes_every_process_on_its_port_and_loads_the_rules() -> None:
    mounts = compose_container("prometheus").mounts
    config = load_documents(DEPLOY / mounts["/etc/prometheus/prometheus.yml"])[0]
    expected = {}
    for container in compose_containers(compose_model(COMPOSE)):
        name = container.where.removeprefix("compose:")
        if container.subcommand in {"flow", "learn", "drift"}:
            group = getattr(container.settings(), GROUP_OF_SUBCOMMAND[container.subcommand])
            expected[name] = group.metrics_port
        elif container.subcommand == "serve":
            expected[name] = container.settings().serving.port
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job["static_configs"]
        for target in static["targets"]
    }
    assert targets == {f"{name}:{port}" for name, port in expected.items()}
    paths = {job.get("metrics_path", "/metrics") for job in config["scrape_configs"]}
    assert paths == {"/metrics"} and "/metrics" in serving_routes()
    rule_files = [f for f in (DEPLOY / mounts["/etc/prometheus/rules"]).glob("*") if f.is_file()]
    for pattern in config["rule_files"]:
        directory, glob = str(PurePosixPath(pattern).parent), PurePosixPath(pattern).name
        assert directory == "/etc/prometheus/rules"
        assert any(fnmatch.fnmatch(f.name, glob) for f in rule_files), f"no rules match {glob}"


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_compose_prometheus_config() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", "--syntax-only", str(DEPLOY / "compose/prometheus.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisions_the_dashboards_from_deploy_grafana() -> None:
    mounts = compose_container("grafana").mounts
    provisioning = DEPLOY / mounts["/etc/grafana/provisioning"]
    providers = load_documents(provisioning / "dashboards" / "streamrec.yml")[0]["providers"]
    dashboards_dir = DEPLOY / mounts[providers[0]["options"]["path"]]
    assert dashboards_dir == DEPLOY / "grafana"
    dashboards = list(dashboards_dir.rglob("*.json"))
    assert dashboards, "deploy/grafana has no dashboard"
    datasources = load_documents(provisioning / "datasources" / "prometheus.yml")[0]
    provisioned = {d["uid"] for d in datasources["datasources"]}
    for path in dashboards:
        used = {ref["uid"] for ref in datasource_refs(json.loads(path.read_text()))}
        assert used and used <= provisioned, f"{path.name} uses data sources {used - provisioned}"


def datasource_refs(node: Any) -> list[dict[str, Any]]:
    """Every ``"datasource": {"uid": ...}`` object in a dashboard."""
    if isinstance(node, list):
        return [ref for value in node for ref in datasource_refs(value)]
    if not isinstance(node, dict):
        return []
    refs = [node["datasource"]] if isinstance(node.get("datasource"), dict) else []
    return refs + [ref for value in node.values() for ref in datasource_refs(value)]


# --- state: recovery, model store, Redis ----------------------------------------------


def test_the_flow_processes_share_one_persistent_recovery_volume() -> None:
    for where in ("compose", "k8s"):
        volumes = set()
        for container in containers_running("flow"):
            if not container.where.startswith(where):
                continue
            settings = container.settings()
            assert settings.flow.recovery_enabled
            mount, volume = volume_holding(container, settings.flow.recovery_dir)
            # The flow creates its partitions only when the directory is missing, so the
            # directory must lie below the mount point, not be it.
            assert mount != settings.flow.recovery_dir, container.where
            volumes.add(volume)
        (volume,) = volumes
        assert is_persistent(volume), f"{where}: recovery on {volume}"
    (k8s_volume,) = volumes
    pvc = k8s_objects("PersistentVolumeClaim")[k8s_volume.removeprefix("pvc:")]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_flow_cluster_addresses_name_every_process_once() -> None:
    compose = [c for c in containers_running("flow") if c.where.startswith("compose:")]
    ids = set()
    for container in compose:
        params = parse_streamrec_args(container.argv[1:]).params
        hosts = [a.rsplit(":", 1)[0] for a in params["addresses"].split(";")]
        assert sorted(hosts) == sorted(c.where.removeprefix("compose:") for c in compose)
        ids.add(params["process_id"])
    assert ids == set(range(len(compose))) and len(compose) >= 2
    (k8s,) = [c for c in containers_running("flow") if c.where.startswith("k8s:")]
    workload = k8s.workload
    params = parse_streamrec_args(k8s.argv[1:]).params
    addresses = params["addresses"].split(";")
    name, service = workload["metadata"]["name"], workload["spec"]["serviceName"]
    port = k8s.ports["cluster"]
    assert addresses == [
        f"{name}-{i}.{service}:{port}" for i in range(workload["spec"]["replicas"])
    ]
    assert k8s_objects("Service")[service]["spec"]["clusterIP"] == "None"


def test_every_model_reader_and_writer_shares_one_read_write_many_model_store() -> None:
    by_where: dict[str, set[str]] = {"compose": set(), "k8s": set()}
    for subcommand in ("learn", "drift", "serve", "train"):
        for container in containers_running(subcommand):
            _, volume = volume_holding(container, container.settings().model.store_dir)
            assert is_persistent(volume), f"{container.where}: model store on {volume}"
            by_where[container.where.split(":")[0]].add(volume)
    assert len(by_where["compose"]) == 1 and len(by_where["k8s"]) == 1, by_where
    (claim,) = by_where["k8s"]
    pvc = k8s_objects("PersistentVolumeClaim")[claim.removeprefix("pvc:")]
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_redis_requires_the_password_the_streamrec_url_carries() -> None:
    services = compose_model(COMPOSE)["services"]
    redis = services["redis"]
    assert "--requirepass" in " ".join(redis["command"])
    for container in compose_containers(compose_model(COMPOSE)):
        if container.is_streamrec:
            url = urlparse(container.settings().redis.redis_url.get_secret_value())
            assert url.password == COMPOSE_VARIABLES["REDIS_PASSWORD"], container.where
            assert url.hostname == "redis"
    assert redis["environment"]["REDISCLI_AUTH"] == COMPOSE_VARIABLES["REDIS_PASSWORD"]


def test_secrets_live_in_kubernetes_secrets_not_in_the_config_map() -> None:
    secret_names = {n for n, kind in settings_variables().items() if kind is SecretStr}
    config = k8s_objects("ConfigMap")["streamrec-config"]["data"]
    assert not secret_names & set(config)
    secret = k8s_objects("Secret")["streamrec-secrets"]["stringData"]
    assert secret_names <= set(secret)
    assert config["STREAMREC_SECURITY_PROTOCOL"].startswith("SASL_")
    for container in filter(lambda c: c.is_streamrec, k8s_containers()):
        ca = str(container.settings().kafka.ssl_ca_location)
        assert str(PurePosixPath(ca).parent) in container.mounts, container.where


# --- Kubernetes wiring ----------------------------------------------------------------


def test_the_kustomization_lists_every_manifest() -> None:
    listed = set(load_documents(K8S / "kustomization.yaml")[0]["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == {n for n in on_disk if not n.endswith(".example.yaml")}


def test_selectors_services_and_autoscaler_point_at_real_workloads() -> None:
    templates = {
        doc["metadata"]["name"]: doc["spec"]["template"]["metadata"]["labels"]
        for doc in k8s_documents()
        if doc["kind"] in WORKLOAD_KINDS
    }
    for doc in k8s_documents():
        if doc["kind"] in {"Deployment", "StatefulSet"}:
            selector = doc["spec"]["selector"]["matchLabels"]
            assert selector.items() <= templates[doc["metadata"]["name"]].items()
    for name, service in k8s_objects("Service").items():
        selector = service["spec"]["selector"]
        matched = [w for w, labels in templates.items() if selector.items() <= labels.items()]
        assert matched, f"Service {name} selects no workload"
        ports = {
            n
            for c in k8s_containers()
            if c.workload["metadata"]["name"] in matched
            for n in c.ports
        }
        for port in service["spec"]["ports"]:
            assert str(port.get("targetPort", port["name"])) in ports, (name, port)
    for name, hpa in k8s_objects("HorizontalPodAutoscaler").items():
        target = k8s_objects(hpa["spec"]["scaleTargetRef"]["kind"])[
            hpa["spec"]["scaleTargetRef"]["name"]
        ]
        assert "replicas" not in target["spec"], f"{name}: the autoscaler owns replicas"
        assert hpa["spec"]["minReplicas"] >= 2
    for name, budget in k8s_objects("PodDisruptionBudget").items():
        labels = budget["spec"]["selector"]["matchLabels"]
        assert any(labels.items() <= t.items() for t in templates.values()), name


def test_every_container_has_resource_requests_and_limits_and_runs_unprivileged() -> None:
    for container in k8s_containers():
        resources = container.spec["resources"]
        for bound in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(resources[bound]), (container.where, bound)
        security = container.spec["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert container.workload["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"]
        for claim in (m for m in container.mounts.values() if m.startswith("pvc:")):
            assert claim.removeprefix("pvc:") in k8s_objects("PersistentVolumeClaim")


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl not installed")
def test_kustomize_renders_every_resource_into_the_namespace() -> None:
    result = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    listed = [d for d in k8s_documents() if d["kind"] != "Secret"]
    generated = load_documents(K8S / "kustomization.yaml")[0].get("configMapGenerator", [])
    assert len(rendered) == len(listed) + len(generated)
    namespaced = [d for d in rendered if d["kind"] != "Namespace"]
    assert all(d["metadata"]["namespace"] == "streamrec" for d in namespaced)
