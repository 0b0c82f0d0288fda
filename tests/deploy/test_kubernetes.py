"""deploy/kubernetes: valid Kubernetes objects that run the layout they carry.

Offline: the manifests are checked against the Kubernetes JSON schemas that the
kubernetes-validate package ships, and against each other and the layout, with no
cluster and no kubectl.
"""

from __future__ import annotations

import copy
import posixpath
import runpy
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from fanout.layout import ENGINES, LAYOUT_ENV, POOL_ENV, Layout
from tests.deploy.support import (
    DEPLOY,
    IMAGE_UID,
    REPO,
    baked_conversions,
    conversions,
    image_model_folders,
    load_image_layout,
    loopback,
    parse_dockerfile,
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
    assert str(layout.front.bind) == "0.0.0.0:8000"  # the edge's: the pod's port
    for pool in layout.pools.values():
        # One GPU per pod (nvidia.com/gpu: 1), which the pod sees as cuda:0.
        assert pool.devices and set(pool.devices) == {"cuda:0"}
        assert pool.bind.host == "0.0.0.0"  # the pod's address, for its Service
        assert pool.engine in ENGINES and pool.engine == "ctranslate2", pool.name
        assert pool.quantization == "int8_float16", pool.name


def test_the_image_holds_the_conversions_the_cluster_layout_serves(
        layout: Layout, tmp_path: Path) -> None:
    # A pod's root filesystem is read-only: a conversion missing from the image would
    # stop the pool at start-up.
    served = conversions(layout)
    assert served and served <= baked_conversions(tmp_path / "baked")


@pytest.mark.parametrize("name", sorted(objects("Deployment")))
def test_no_volume_hides_the_images_conversions(name: str) -> None:
    cache = posixpath.normpath(parse_dockerfile().envs["FANOUT_CACHE_DIR"])
    spec = objects("Deployment")[name]["spec"]["template"]["spec"]
    for container in spec["containers"]:
        env = env_of(container)
        assert env.get("FANOUT_CACHE_DIR", cache) == cache, container["name"]
        for mount in container["volumeMounts"]:
            path = posixpath.normpath(mount["mountPath"])
            assert not (cache == path or cache.startswith(path + "/")), mount


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


def front_pod() -> dict[str, Object]:
    """The containers of the front's pod, by name."""
    spec = objects("Deployment")["fanout-front"]["spec"]["template"]["spec"]
    return {container["name"]: container for container in spec["containers"]}


def test_the_cluster_layout_puts_the_front_behind_its_edge(layout: Layout) -> None:
    assert layout.edge.enabled
    # The pod's loopback: only the containers of the pod reach it, and the front
    # believes X-Forwarded-For from loopback alone.
    assert loopback(layout.front_listen)
    assert layout.front_listen.port != layout.front.bind.port


def test_the_front_pod_runs_the_edge_beside_the_front(layout: Layout) -> None:
    spec = objects("Deployment")["fanout-front"]["spec"]["template"]["spec"]
    pod = front_pod()
    assert list(pod) == ["front", "edge"]  # the front first: kubectl's default container
    front, edge = pod["front"], pod["edge"]
    assert front["args"] == ["front"] and edge["args"] == ["edge"]
    assert front["image"] == edge["image"]  # one image, the command picks the tier
    for container in pod.values():
        assert POOL_ENV not in env_of(container)
    # One network namespace: the pod's (never the node's), shared by both containers.
    assert not spec.get("hostNetwork", False)
    # The edge listens on front.bind; the front on loopback, where nothing else reaches
    # it, so it declares no port.
    assert container_port(edge, "http") == layout.front.bind.port
    assert "ports" not in front


def test_the_service_reaches_the_edge_and_never_the_front(layout: Layout) -> None:
    service = objects("Service")["fanout-front"]
    assert deployment_for(service) is objects("Deployment")["fanout-front"]
    [port] = service["spec"]["ports"]
    assert port["port"] == layout.front.bind.port
    assert container_port(front_pod()["edge"], port["targetPort"]) == layout.front.bind.port
    assert layout.front_listen.port not in {port["port"], port["targetPort"]}


def test_the_front_is_probed_from_inside_its_container(layout: Layout) -> None:
    front, edge = front_pod()["front"], front_pod()["edge"]
    # The kubelet probes the pod's address; the front listens on its loopback.
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert not {"httpGet", "tcpSocket"} & set(front.get(probe, {})), probe
    command = front["livenessProbe"]["exec"]["command"]
    assert command[:2] == ["python", "/usr/local/bin/fanout-healthcheck"]
    # A connection only: a pool that is down must not restart the front.
    assert command[2:] == ["--listening", "front"]
    # The pod's readiness: through the edge to the front's /health.
    assert edge["readinessProbe"]["httpGet"]["path"] == "/health"
    assert container_port(edge, edge["readinessProbe"]["httpGet"]["port"]) == \
        layout.front.bind.port
    assert "readinessProbe" not in front  # the edge's covers it


def test_the_edge_and_the_front_stop_without_dropping_requests(
        layout: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = objects("Deployment")["fanout-front"]["spec"]["template"]["spec"]
    front, edge = front_pod()["front"], front_pod()["edge"]
    # nginx drops requests in flight on SIGTERM: its preStop asks PID 1 (nginx) to quit
    # gracefully, after a pause for the Service to stop sending requests here.
    [shell, flag, script] = edge["lifecycle"]["preStop"]["exec"]["command"]
    assert (shell, flag) == ("/bin/sh", "-c") and "kill -QUIT 1" in script
    edge_pause = int(script.split(";")[0].removeprefix("sleep "))
    # gunicorn stops listening on SIGTERM: the front gets it once the edge has stopped
    # taking requests, and a client that had begun its headers has sent them.
    [sleep, seconds] = front["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep" and int(seconds) >= edge_pause + layout.edge.header_timeout
    # Then gunicorn's graceful timeout for this layout must fit.
    monkeypatch.setenv(LAYOUT_ENV, str(layout.source))
    for variable in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
        monkeypatch.delenv(variable, raising=False)  # the settings drop them
    graceful = runpy.run_path(str(REPO / "frontend_api" / "gunicorn_conf.py"))[
        "graceful_timeout"]
    assert spec["terminationGracePeriodSeconds"] >= int(seconds) + graceful


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
    containers = objects("Deployment")[name]["spec"]["template"]["spec"]["containers"]
    ready = [c for c in containers if "readinessProbe" in c]
    assert ready, "the pod would take traffic before it can serve"
    for container in ready:
        readiness = container["readinessProbe"]
        assert readiness["httpGet"]["path"] == "/health"
        assert container_port(container, readiness["httpGet"]["port"])
    for container in containers:
        liveness = container["livenessProbe"]
        # Liveness must not hang on /health: a busy pool, or a pool that is down for
        # the front, is no reason to restart a container.
        command = liveness.get("exec", {}).get("command", [])
        assert "tcpSocket" in liveness or "--listening" in command \
            or liveness.get("httpGet", {}).get("path") == "/health", container["name"]
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


def policy_for(component: str) -> Object:
    """The one NetworkPolicy that selects the pods of a component (front, pool)."""
    [policy] = [p for p in objects("NetworkPolicy").values()
                if p["spec"]["podSelector"]["matchLabels"].get(
                    "app.kubernetes.io/component") == component]
    return policy


def test_only_the_front_may_reach_the_pools() -> None:
    policy = policy_for("pool")
    selected = policy["spec"]["podSelector"]["matchLabels"].items()
    [rule] = policy["spec"]["ingress"]
    [source] = rule["from"]
    allowed = source["podSelector"]["matchLabels"].items()
    for deployment, container in containers():
        labels = deployment["spec"]["template"]["metadata"]["labels"].items()
        is_pool = POOL_ENV in env_of(container)
        assert (selected <= labels) == is_pool
        assert (allowed <= labels) == (not is_pool)


def test_the_front_pods_are_reached_on_the_edges_port_alone(layout: Layout) -> None:
    policy = policy_for("front")
    front = objects("Deployment")["fanout-front"]
    labels = front["spec"]["template"]["metadata"]["labels"].items()
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= labels
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    [rule] = policy["spec"]["ingress"]
    assert "from" not in rule  # clients come from anywhere: an Ingress, other pods
    ports = {container_port(front_pod()["edge"], p["port"]) for p in rule["ports"]}
    assert ports == {layout.front.bind.port}


def test_every_container_runs_the_same_image() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    [image] = kustomization["images"]
    for _, container in containers():
        name, _, tag = container["image"].partition(":")
        assert (name, tag) == (image["name"], image["newTag"])
