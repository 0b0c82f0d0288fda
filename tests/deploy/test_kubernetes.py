"""deploy/kubernetes: valid Kubernetes objects that run the layout they carry.

Offline: the manifests are checked against the Kubernetes JSON schemas that the
kubernetes-validate package ships, and against each other and the layout, with no
cluster and no kubectl.
"""

from __future__ import annotations

import copy
import posixpath
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fanout.layout import POOL_ENV, Layout
from tests.deploy.support import (
    DEPLOY,
    IMAGE_UID,
    image_model_folders,
    load_image_layout,
    pool_addresses,
)

MANIFESTS = DEPLOY / "kubernetes"
# The oldest Kubernetes still widely run that has everything used here; the package
# ships its schemas (and those of later releases), so no download is needed.
KUBERNETES_VERSION = "1.30.0"
LAYOUT_MOUNT = "/etc/fanout/gpu_layout.yaml"

Object = dict[str, Any]


def manifest_files() -> list[Path]:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    return [MANIFESTS / name for name in kustomization["resources"]]


def load_objects() -> list[Object]:
    return [doc for path in manifest_files()
            for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


OBJECTS = load_objects()


def objects(kind: str) -> dict[str, Object]:
    return {o["metadata"]["name"]: o for o in OBJECTS if o["kind"] == kind}


def containers() -> list[tuple[Object, Object]]:
    """(Deployment, container) for every container of every Deployment."""
    return [(deployment, container) for deployment in objects("Deployment").values()
            for container in deployment["spec"]["template"]["spec"]["containers"]]


def env_of(container: Object) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container.get("env", []) if "value" in item}


def container_port(container: Object, port: int | str) -> int:
    """A Service's targetPort (a number or a port name) as the container's port number."""
    for item in container["ports"]:
        if port in (item["containerPort"], item.get("name")):
            return int(item["containerPort"])
    raise AssertionError(f"container {container['name']} has no port {port!r}")


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return load_image_layout(cluster_layout_text(), tmp_path)


def cluster_layout_text() -> str:
    return str(objects("ConfigMap")["fanout-layout"]["data"]["gpu_layout.yaml"])


def deployment_for(service: Object) -> Object:
    """The one Deployment whose pods the Service selects."""
    selector = service["spec"]["selector"].items()
    chosen = [d for d in objects("Deployment").values()
              if selector <= d["spec"]["template"]["metadata"]["labels"].items()]
    assert len(chosen) == 1, f"service {service['metadata']['name']} selects {len(chosen)}"
    return chosen[0]


def test_the_kustomization_lists_every_manifest() -> None:
    listed = {path.name for path in manifest_files()}
    present = {path.name for path in MANIFESTS.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present
    assert {"ConfigMap", "Deployment", "Service"} <= {o["kind"] for o in OBJECTS}


@pytest.mark.parametrize("manifest", OBJECTS,
                         ids=[f"{o['kind']}/{o['metadata']['name']}" for o in OBJECTS])
def test_every_manifest_is_a_valid_kubernetes_object(manifest: Object) -> None:
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_refuses_a_misspelt_field() -> None:
    # Strict mode refuses unknown fields, so a typo in a manifest cannot pass unnoticed.
    broken = copy.deepcopy(objects("Deployment")["fanout-front"])
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_cluster_layout_serves_both_pools_on_the_pods_gpu(layout: Layout) -> None:
    assert list(layout.pools) == ["small", "medium"]
    assert str(layout.front.bind) == "0.0.0.0:8000"
    for pool in layout.pools.values():
        # One GPU per pod (nvidia.com/gpu: 1), which the pod sees as cuda:0.
        assert pool.devices and set(pool.devices) == {"cuda:0"}
        assert pool.bind.host == "0.0.0.0"  # the pod's address, for its Service


def test_the_layout_names_only_models_the_image_ships() -> None:
    dockerfile = (DEPLOY.parent / "Dockerfile").read_text()
    for folder in image_model_folders(cluster_layout_text()):
        assert f" {folder}\n" in dockerfile, f"{folder} is not copied into the image"


def test_each_pool_is_reached_through_its_own_service(layout: Layout) -> None:
    services = objects("Service")
    for pool in layout.pools.values():
        [(host, port)] = pool_addresses(pool)
        assert host in services, f"pools.{pool.name}.hosts names no Service: {host}"
        service = services[host]
        [service_port] = [p for p in service["spec"]["ports"] if p["port"] == port]
        deployment = deployment_for(service)
        [container] = deployment["spec"]["template"]["spec"]["containers"]
        assert container_port(container, service_port["targetPort"]) == pool.bind.port
        assert env_of(container)[POOL_ENV] == pool.name
        assert container["args"] == ["pool"]
    pool_deployments = [d for d, c in containers() if POOL_ENV in env_of(c)]
    assert len(pool_deployments) == len(layout.pools)


def test_the_front_serves_the_layouts_front_bind(layout: Layout) -> None:
    front = objects("Deployment")["fanout-front"]
    [container] = front["spec"]["template"]["spec"]["containers"]
    assert container["args"] == ["front"] and POOL_ENV not in env_of(container)
    assert container_port(container, "http") == layout.front.bind.port
    service = objects("Service")["fanout-front"]
    assert deployment_for(service) is front
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http"}


@pytest.mark.parametrize("name", sorted(objects("Deployment")))
def test_every_pod_reads_the_layout_from_the_configmap(name: str) -> None:
    spec = objects("Deployment")[name]["spec"]["template"]["spec"]
    configmap = {v["name"] for v in spec["volumes"]
                 if v.get("configMap", {}).get("name") == "fanout-layout"}
    assert "gpu_layout.yaml" in objects("ConfigMap")["fanout-layout"]["data"]
    for container in spec["containers"]:
        assert env_of(container)["FANOUT_LAYOUT"] == LAYOUT_MOUNT
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        mount = mounts[posixpath.dirname(LAYOUT_MOUNT)]
        assert mount["name"] in configmap and mount.get("readOnly") is True


@pytest.mark.parametrize("name", sorted(objects("Deployment")))
def test_every_container_is_probed_on_health(name: str) -> None:
    for container in objects("Deployment")[name]["spec"]["template"]["spec"]["containers"]:
        readiness = container["readinessProbe"]
        assert readiness["httpGet"]["path"] == "/health"
        assert container_port(container, readiness["httpGet"]["port"])
        liveness = container["livenessProbe"]
        # Liveness must not hang on /health: a busy pool, or a pool that is down for
        # the front, is no reason to restart a container.
        assert "tcpSocket" in liveness or liveness.get("httpGet", {}).get("path") == "/health"
        assert liveness.get("failureThreshold", 3) >= 3


def test_a_worker_probe_outlasts_the_longest_generation(layout: Layout) -> None:
    for _, container in containers():
        if POOL_ENV in env_of(container):
            assert container["readinessProbe"]["timeoutSeconds"] > layout.limits.max_time
            startup = container["startupProbe"]
            assert startup["httpGet"]["path"] == "/health"
            assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize("name", sorted(objects("Deployment")))
def test_every_container_runs_as_the_images_non_root_user(name: str) -> None:
    spec = objects("Deployment")[name]["spec"]["template"]["spec"]
    pod = spec.get("securityContext", {})
    writable = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
    for container in spec["containers"]:
        context = {**pod, **container.get("securityContext", {})}
        assert context["runAsNonRoot"] is True and context["runAsUser"] == IMAGE_UID
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        # gunicorn's heartbeat files and the pools' state live in the temp dir.
        tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and tmp[0]["name"] in writable


@pytest.mark.parametrize("name", sorted(objects("Deployment")))
def test_every_container_has_requests_and_a_memory_limit(name: str) -> None:
    for container in objects("Deployment")[name]["spec"]["template"]["spec"]["containers"]:
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"])
        assert "memory" in resources["limits"]


def test_pool_pods_each_ask_for_one_gpu_and_the_front_for_none() -> None:
    for _, container in containers():
        gpus = container["resources"]["limits"].get("nvidia.com/gpu")
        assert gpus == (1 if POOL_ENV in env_of(container) else None), container["name"]


def test_only_the_front_may_reach_the_pools() -> None:
    [policy] = objects("NetworkPolicy").values()
    selected = policy["spec"]["podSelector"]["matchLabels"].items()
    [rule] = policy["spec"]["ingress"]
    [source] = rule["from"]
    allowed = source["podSelector"]["matchLabels"].items()
    for deployment, container in containers():
        labels = deployment["spec"]["template"]["metadata"]["labels"].items()
        is_pool = POOL_ENV in env_of(container)
        assert (selected <= labels) == is_pool
        assert (allowed <= labels) == (not is_pool)


def test_every_container_runs_the_same_image() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    [image] = kustomization["images"]
    for _, container in containers():
        name, _, tag = container["image"].partition(":")
        assert (name, tag) == (image["name"], image["newTag"])
