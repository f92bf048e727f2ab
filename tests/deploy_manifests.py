"""What the deployment manifests tell each container, read into one model for the tests.

``deploy/compose.yaml`` (with compose's interpolation and merge rules) and the
Kubernetes manifests of ``deploy/k8s`` are turned into ``Container`` records: the argv
the process runs (the Dockerfile's ENTRYPOINT plus the command), its effective
environment (the Dockerfile's ENV, ConfigMaps and Secrets, the container's own
variables), its ports and what is mounted where. The unit tests check these records
against the code; the compose rehearsal runs them. ``exported_metric_names`` is what the
Prometheus rules and the Grafana dashboard may query.
"""

from __future__ import annotations

import functools
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import yaml
from prometheus_client import CollectorRegistry
from pydantic_settings import BaseSettings

from flows.metrics import FlowMetrics
from online_models.alerts.metrics import AlertMetrics
from online_models.drift.metrics import DriftMetrics
from online_models.learner.metrics import LearnerMetrics
from serving.metrics import ServingMetrics
from streamrec.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_GPU = DEPLOY / "compose.gpu.yaml"
K8S = DEPLOY / "k8s"
IMAGE_NAME = "streamrec"
# Values for the variables compose interpolates (the real ones come from the shell).
COMPOSE_VARIABLES = {"REDIS_PASSWORD": "redis-pass", "GRAFANA_ADMIN_PASSWORD": "grafana-pass"}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "Job"}
# Every component's metrics class, and those the drift monitor process exports.
METRICS_CLASSES = (FlowMetrics, LearnerMetrics, DriftMetrics, AlertMetrics, ServingMetrics)
DRIFT_MONITOR_METRICS = (DriftMetrics, AlertMetrics)
# Series of a family with no sample yet (a labelled metric before its first label).
_SERIES_SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum")}


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


def exported_metric_names(metrics_classes: tuple[type, ...] = METRICS_CLASSES) -> frozenset[str]:
    """Every series name the given metrics classes expose (counters with their ``_total``,
    histograms with ``_bucket``/``_count``/``_sum``), each built on a fresh registry."""
    registry = CollectorRegistry()
    for metrics_class in metrics_classes:
        metrics_class(registry)
    names: set[str] = set()
    for family in registry.collect():
        names.update(sample.name for sample in family.samples)
        names.update(family.name + s for s in _SERIES_SUFFIXES.get(family.type, ("",)))
    return frozenset(name for name in names if not name.endswith("_created"))


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
