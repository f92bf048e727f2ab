"""The deployment files agree with the code: settings names, ports, probes, commands, images.

No Docker engine or Kubernetes API server is available where the tests run, so these
are static checks: every manifest is parsed, and what it tells a container (its
environment, command, ports, probes and volumes) is checked against the settings
classes, the ``streamrec`` CLI, the serving routes and the Dockerfile. Everything
the checks compare against is derived from the code, never from a second list.
"""

from __future__ import annotations

import ast
import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from importlib import metadata
from importlib.metadata import packages_distributions
from pathlib import Path, PurePosixPath
from typing import Any
from unittest import mock
from urllib.parse import urlparse

import pytest
import typer
import typer.core
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from streamrec.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yaml"
K8S = DEPLOY / "k8s"
IMAGE_NAME = "streamrec"
# Values for the variables compose interpolates (the real ones come from the shell).
COMPOSE_VARIABLES = {"REDIS_PASSWORD": "redis-pass", "GRAFANA_ADMIN_PASSWORD": "grafana-pass"}
# Which settings group configures the process each subcommand starts.
GROUP_OF_SUBCOMMAND = {"flow": "flow", "learn": "learner", "drift": "drift", "serve": "serving"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}


# --- what the code says ---------------------------------------------------------------


def settings_variables(cls: type[BaseSettings] = Settings) -> dict[str, Any]:
    """Every environment variable the settings read (group prefix + field name) -> its type."""
    prefix = cls.model_config.get("env_prefix", "")
    variables: dict[str, Any] = {}
    for name, info in cls.model_fields.items():
        if isinstance(info.annotation, type) and issubclass(info.annotation, BaseSettings):
            variables |= settings_variables(info.annotation)
        else:
            variables[f"{prefix}{name}".upper()] = info.annotation
    return variables


def settings_from_env(env: dict[str, str]) -> Settings:
    """The settings a process with exactly this environment builds (validation included)."""
    with mock.patch.dict(os.environ, env, clear=True):
        return load_settings()


@functools.cache
def cli() -> typer.core.TyperGroup:
    """The ``streamrec`` command tree, with every stage's commands registered."""
    from streamrec import cli as cli_module

    cli_module._register_areas()
    return typer.main.get_command(cli_module.app)


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


@dataclass(frozen=True)
class Dockerfile:
    stages: tuple[str, ...]
    variants: tuple[str, ...]
    entrypoint: tuple[str, ...]
    env: dict[str, str]
    copies: tuple[str, ...]


@functools.cache
def dockerfile() -> Dockerfile:
    """Stage names, torch variants (``torch-<variant>`` stages), ENTRYPOINT, ENV, COPY sources."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages, entrypoint, env, copies = [], (), {}, []
    for line in text.splitlines():
        words = line.split()
        if not words or words[0].startswith("#"):
            continue
        instruction = words[0].upper()
        if instruction == "FROM" and len(words) == 4 and words[2].upper() == "AS":
            stages.append(words[3])
        elif instruction == "ENTRYPOINT":
            entrypoint = tuple(json.loads(line.split(None, 1)[1]))
        elif instruction == "ENV":
            env.update(pair.split("=", 1) for pair in words[1:])
        elif instruction == "COPY" and not any(w.startswith("--from") for w in words):
            copies.extend(words[1:-1])
    variants = tuple(s.removeprefix("torch-") for s in stages if s.startswith("torch-"))
    return Dockerfile(tuple(stages), variants, entrypoint, env, tuple(copies))


# --- what the manifests say -----------------------------------------------------------


def load_documents(path: Path) -> list[Any]:
    if path.suffix == ".json":
        return [json.loads(path.read_text())]
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


_COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def _substitute(match: re.Match[str]) -> str:
    name, operator, default = match.groups()
    if name in COMPOSE_VARIABLES:
        return COMPOSE_VARIABLES[name]
    assert operator == "-", f"${{{name}}} is required but not in COMPOSE_VARIABLES"
    return default


def interpolate(node: Any) -> Any:
    """Compose's ``${VAR...}`` substitution with COMPOSE_VARIABLES, ``$$`` as a literal ``$``."""
    if isinstance(node, str):
        return _COMPOSE_VARIABLE.sub(_substitute, node).replace("$$", "$")
    if isinstance(node, dict):
        return {key: interpolate(value) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate(value) for value in node]
    return node


def merge(base: Any, override: Any) -> Any:
    """Compose's merge of an override file: mappings merge, everything else is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {
            key: merge(base[key], value) if key in base else value
            for key, value in {**base, **override}.items()
        }
    return override


def compose_model(*files: Path) -> dict[str, Any]:
    model: dict[str, Any] = {}
    for path in files:
        model = merge(model, interpolate(load_documents(path)[0]))
    return model


@dataclass
class Container:
    """One process as a manifest runs it, with the image's defaults applied."""

    where: str
    image: str
    argv: list[str]
    env: dict[str, str]
    ports: dict[str, int] = field(default_factory=dict)
    mounts: dict[str, str] = field(default_factory=dict)  # container path -> volume id
    spec: dict[str, Any] = field(default_factory=dict)  # the container (compose: service)
    workload: dict[str, Any] = field(default_factory=dict)  # what runs it (compose: service)

    @property
    def is_streamrec(self) -> bool:
        return self.image.split(":")[0] == IMAGE_NAME

    @property
    def subcommand(self) -> str:
        return self.argv[1] if self.argv[:1] == ["streamrec"] else ""

    def settings(self) -> Settings:
        return settings_from_env({k: v for k, v in self.env.items() if k.startswith("STREAMREC_")})


def compose_containers(model: dict[str, Any]) -> list[Container]:
    containers = []
    for name, service in model["services"].items():
        image = service["image"]
        is_streamrec = image.split(":")[0] == IMAGE_NAME
        command = service.get("command", [])
        env = dict(dockerfile().env) if is_streamrec else {}
        env.update({k: str(v) for k, v in (service.get("environment") or {}).items()})
        ports = {}
        for mapping in service.get("ports", []):
            port = int(str(mapping).split(":")[-1])
            ports[str(port)] = port
        mounts = {}
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            mounts[target] = source
        argv = [*dockerfile().entrypoint, *command] if is_streamrec else list(command)
        containers.append(
            Container(f"compose:{name}", image, argv, env, ports, mounts, service, service)
        )
    return containers


@functools.cache
def k8s_documents() -> tuple[dict[str, Any], ...]:
    """The kustomization's resources plus the example secrets (applied by hand)."""
    kustomization = load_documents(K8S / "kustomization.yaml")[0]
    paths = [K8S / name for name in kustomization["resources"]]
    paths += sorted(K8S.glob("*.example.yaml"))
    return tuple(doc for path in paths for doc in load_documents(path))


def k8s_objects(kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in k8s_documents() if d["kind"] == kind}


def k8s_env_source(kind: str, name: str) -> dict[str, str]:
    obj = k8s_objects(kind).get(name)
    assert obj is not None, f"{kind} {name} is referenced but not defined"
    return {k: str(v) for k, v in (obj.get("data") or obj.get("stringData") or {}).items()}


def k8s_containers() -> list[Container]:
    containers = []
    for doc in k8s_documents():
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        pod = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: volume_id(v) for v in pod.get("volumes", [])}
        for template in doc["spec"].get("volumeClaimTemplates", []):
            volumes[template["metadata"]["name"]] = f"claim-template:{template['metadata']['name']}"
        for spec in pod["containers"]:
            image = spec["image"]
            env = dict(dockerfile().env) if image.split(":")[0] == IMAGE_NAME else {}
            for source in spec.get("envFrom", []):
                if "configMapRef" in source:
                    env.update(k8s_env_source("ConfigMap", source["configMapRef"]["name"]))
                if "secretRef" in source:
                    env.update(k8s_env_source("Secret", source["secretRef"]["name"]))
            for var in spec.get("env", []):
                env[var["name"]] = str(var["value"]) if "value" in var else "0"
            argv = list(spec.get("command", dockerfile().entrypoint)) + [
                re.sub(r"\$\((\w+)\)", lambda m, env=env: env[m.group(1)], arg)
                for arg in spec.get("args", [])
            ]
            ports = {
                p.get("name", str(p["containerPort"])): p["containerPort"]
                for p in spec.get("ports", [])
            }
            mounts = {}
            for mount in spec.get("volumeMounts", []):
                assert mount["name"] in volumes, (
                    f"{doc['metadata']['name']}: no volume {mount['name']}"
                )
                mounts[mount["mountPath"]] = volumes[mount["name"]]
            where = f"k8s:{doc['kind']}/{doc['metadata']['name']}"
            containers.append(Container(where, image, argv, env, ports, mounts, spec, doc))
    return containers


def volume_id(volume: dict[str, Any]) -> str:
    if "persistentVolumeClaim" in volume:
        return f"pvc:{volume['persistentVolumeClaim']['claimName']}"
    if "secret" in volume:
        return f"secret:{volume['secret']['secretName']}"
    return "emptyDir" if "emptyDir" in volume else f"other:{volume['name']}"


def compose_container(service: str) -> Container:
    (found,) = [
        c for c in compose_containers(compose_model(COMPOSE)) if c.where == f"compose:{service}"
    ]
    return found


def pod_annotations(container: Container) -> dict[str, str]:
    return container.workload["spec"]["template"]["metadata"]["annotations"]


def all_containers() -> list[Container]:
    return compose_containers(compose_model(COMPOSE)) + k8s_containers()


def streamrec_containers() -> list[Container]:
    return [c for c in all_containers() if c.is_streamrec]


def containers_running(subcommand: str) -> list[Container]:
    found = [c for c in streamrec_containers() if c.subcommand == subcommand]
    assert found, f"no manifest runs `streamrec {subcommand}`"
    return found


def volume_holding(container: Container, path: Path) -> tuple[Path, str]:
    """The mount point (deepest) under which ``path`` lies in the container, and its volume."""
    mounts = [Path(m) for m in container.mounts if path.is_relative_to(m)]
    assert mounts, f"{container.where}: nothing is mounted at {path}"
    deepest = max(mounts, key=lambda m: len(m.parts))
    return deepest, container.mounts[str(deepest)]


def is_persistent(volume: str) -> bool:
    """A PersistentVolumeClaim, or a compose named volume."""
    named = set(compose_model(COMPOSE)["volumes"])
    return volume.startswith("pvc:") or volume in named


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
    for container in k8s_containers():
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
    assert len(rendered) == len(listed)
    namespaced = [d for d in rendered if d["kind"] != "Namespace"]
    assert all(d["metadata"]["namespace"] == "streamrec" for d in namespaced)
