"""The Dockerfile, its entry point and health check, and deploy/docker/compose.yaml.

No Docker needed: the Dockerfile is parsed with dockerfile-parse, the compose file read
as YAML, and the health check script run against a small local HTTP server.
"""

from __future__ import annotations

import fnmatch
import http.server
import importlib.util
import json
import shlex
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from fanout.launch.tiers import tiers
from fanout.layout import ENGINES, POOL_ENV, Layout, load_layout
from tests.deploy.support import (
    DEPLOY,
    IMAGE_APP,
    IMAGE_UID,
    REPO,
    baked_conversions,
    build_conversions,
    conversions,
    copies,
    image_model_folders,
    instructions,
    load_image_layout,
    loopback,
    parse_dockerfile,
    pool_addresses,
)

COMPOSE_DIR = DEPLOY / "docker"
COMPOSE_LAYOUTS = ["gpu_layout.yaml", "gpu_layout.cuda.yaml"]
SOURCE = ("fanout", "frontend_api", "worker_api")
# Where the image's containers get volumes: the layout, /tmp, models and a writable cache
# of your own. Nothing baked into the image can live under them.
MOUNT_POINTS = ("/etc/fanout", "/tmp", "/models", "/var/cache/fanout")


@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    return parse_dockerfile()


def first(parser: DockerfileParser, instruction: str, containing: str = "") -> int:
    """The position of the first such instruction whose value contains the text."""
    for index, item in enumerate(instructions(parser)):
        if item["instruction"] == instruction and containing in item["value"]:
            return index
    raise AssertionError(f"no {instruction} containing {containing!r}")


def test_the_image_is_python_311_slim_with_the_torch_build_args(
        dockerfile: DockerfileParser) -> None:
    assert dockerfile.baseimage == "python:3.11-slim"
    assert dockerfile.args == {"TORCH": "torch==2.13.0", "TORCH_INDEX_URL": ""}
    install = instructions(dockerfile)[first(dockerfile, "RUN", "$TORCH")]["value"]
    assert "pip install" in install and '--index-url "$TORCH_INDEX_URL"' in install


def test_torch_and_the_requirements_install_before_the_source_is_copied(
        dockerfile: DockerfileParser) -> None:
    torch = first(dockerfile, "RUN", '"$TORCH"')
    requirements = first(dockerfile, "RUN", "install_requires")
    assert first(dockerfile, "COPY", "setup.cfg") < requirements
    for package in SOURCE:
        source = first(dockerfile, "COPY", f"{package} ")
        assert torch < requirements < source, package
        assert first(dockerfile, "COPY", "models/") < source  # models change less often


def test_it_runs_as_a_fixed_non_root_user(dockerfile: DockerfileParser) -> None:
    users = [(i, item["value"]) for i, item in enumerate(instructions(dockerfile))
             if item["instruction"] == "USER"]
    assert users, "no USER: the image would run as root"
    position, user = users[-1]
    assert user.split(":")[0] == str(IMAGE_UID)
    assert position < first(dockerfile, "ENTRYPOINT") and position < first(dockerfile, "CMD")
    assert f"--uid {IMAGE_UID}" in instructions(dockerfile)[first(dockerfile, "RUN", "useradd")][
        "value"]


def test_it_installs_debians_nginx_for_the_edge_as_root(dockerfile: DockerfileParser) -> None:
    position = first(dockerfile, "RUN", "apt-get install")
    install = instructions(dockerfile)[position]["value"]
    assert "apt-get update" in install and "--no-install-recommends nginx" in install
    assert "rm -rf /var/lib/apt/lists/*" in install  # in the same layer, or it stays
    assert position < first(dockerfile, "USER")
    assert position < first(dockerfile, "RUN", '"$TORCH"')  # it changes least often


def test_the_build_checks_its_nginx_accepts_the_edges_configuration(
        dockerfile: DockerfileParser) -> None:
    position = first(dockerfile, "RUN", "fanout edge")
    check = instructions(dockerfile)[position]["value"]
    assert "python -m fanout edge --print" in check and "nginx -t" in check
    assert first(dockerfile, "COPY", "fanout ") < position < first(dockerfile, "USER")


def test_it_checks_its_health_without_curl(dockerfile: DockerfileParser) -> None:
    check = instructions(dockerfile)[first(dockerfile, "HEALTHCHECK")]["value"]
    assert "CMD" in check and "curl" not in check
    assert copies(dockerfile)["deploy/docker/healthcheck.py"] in check
    assert "--start-period" in check  # a worker loads its model before it is healthy


def test_the_entry_point_runs_the_tiers_as_the_procfile_does(
        dockerfile: DockerfileParser) -> None:
    entrypoint = (COMPOSE_DIR / "entrypoint.sh").read_text()
    for tier in tiers(load_layout(REPO / "gpu_layout.yaml"), python="python"):
        assert f"exec {shlex.join(tier.argv)}" in entrypoint, tier.name
    installed = copies(dockerfile)["deploy/docker/entrypoint.sh"]
    entry = json.loads(instructions(dockerfile)[first(dockerfile, "ENTRYPOINT")]["value"])
    assert entry == [installed] or entry == [Path(installed).name]  # /usr/local/bin: on PATH
    assert json.loads(instructions(dockerfile)[first(dockerfile, "CMD")]["value"]) == ["front"]


def test_the_edge_tier_writes_its_configuration_under_tmp_and_execs_nginx(
        tmp_path: Path) -> None:
    # The image's way, with stand-ins: `python` on PATH, the source on PYTHONPATH, and a
    # "nginx" that reports how it was run. A read-only image writes only under $TMPDIR.
    bin_dir, tmp = tmp_path / "bin", tmp_path / "tmp"
    bin_dir.mkdir()
    tmp.mkdir()
    for name, script in (("python", f'exec {shlex.quote(sys.executable)} "$@"'),
                         ("nginx", 'printf "%s\\n" "$@"')):
        (bin_dir / name).write_text(f"#!/bin/sh\n{script}\n")
        (bin_dir / name).chmod(0o755)
    layout = load_image_layout((COMPOSE_DIR / "gpu_layout.yaml").read_text(), tmp_path)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(REPO), "TMPDIR": str(tmp),
           "FANOUT_LAYOUT": str(layout.source), "FANOUT_NGINX": str(bin_dir / "nginx")}
    ran = subprocess.run(["sh", str(COMPOSE_DIR / "entrypoint.sh"), "edge"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    [e, stderr, c, config, g, daemon] = ran.stdout.splitlines()
    assert (e, stderr, c, g, daemon) == ("-e", "stderr", "-c", "-g", "daemon off;")
    config_path = Path(config)
    assert config_path.parent.parent == tmp and config_path.name == "nginx.conf"
    written = config_path.read_text()
    assert f"listen {layout.front.bind} " in written  # the public address
    assert f"server {layout.front_listen};" in written  # the front, on loopback
    for line in written.splitlines():
        if line.strip().startswith(("pid ", "client_body_temp_path", "proxy_temp_path")):
            assert str(config_path.parent) in line, line  # nothing outside its run dir


def test_the_image_holds_the_layout_and_the_models_it_names(
        dockerfile: DockerfileParser) -> None:
    assert dockerfile.envs["FANOUT_LAYOUT"] == f"{IMAGE_APP}/gpu_layout.yaml"
    copied = copies(dockerfile)
    assert copied["gpu_layout.yaml"] == f"{IMAGE_APP}/gpu_layout.yaml"
    for package in SOURCE:
        assert copied[package] == f"{IMAGE_APP}/{package}"
    for layout in [*COMPOSE_LAYOUTS, "../kubernetes/configmap.yaml"]:
        for folder in image_model_folders((COMPOSE_DIR / layout).read_text()):
            source = folder.removeprefix(IMAGE_APP + "/")
            assert copied.get(source) == folder and (REPO / source).is_dir(), folder


def under(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def test_the_image_keeps_its_conversions_where_nothing_is_mounted(
        dockerfile: DockerfileParser, compose: dict[str, Any]) -> None:
    cache = dockerfile.envs["FANOUT_CACHE_DIR"]
    assert cache.startswith("/") and not under(cache, IMAGE_APP)
    # The runtime user's HOME is no place for it either: pods set HOME=/tmp.
    for folder in (*MOUNT_POINTS, "/home"):
        assert not under(cache, folder), folder
    for service in compose["services"].values():
        targets = [next(part for part in volume.rsplit(":", 2)[1:] if part.startswith("/"))
                   for volume in service["volumes"]]
        for target in [*targets, *service["tmpfs"]]:
            assert not under(cache, target), target
    # The mount point for a writable cache of your own exists, owned by the runtime user.
    users = instructions(dockerfile)[first(dockerfile, "RUN", "useradd")]["value"]
    assert "/var/cache/fanout" in users and "chown fanout:fanout /var/cache/fanout" in users


def test_the_build_converts_the_models_before_it_drops_root(
        dockerfile: DockerfileParser) -> None:
    converting = build_conversions(dockerfile)
    assert converting, "no fanout convert at build: every pod would convert at start-up"
    copied = copies(dockerfile)
    for position, layout, _ in converting:
        # After what it reads: the cache's variable, the models, the layout, the converter.
        assert first(dockerfile, "ENV", "FANOUT_CACHE_DIR=") < position
        for source in ("models/small", "models/medium", "fanout"):
            assert first(dockerfile, "COPY", f"{source} ") < position, source
        [layout_source] = [s for s, d in copied.items() if d == layout]
        assert first(dockerfile, "COPY", f"{layout_source} ") < position, layout
        # As root, before the image's user, entry point and command take over.
        for instruction in ("USER", "ENTRYPOINT", "CMD", "HEALTHCHECK"):
            assert position < first(dockerfile, instruction), instruction
        # ... and readable by that user afterwards, whatever the umask.
        assert "chmod -R a+rX \"$FANOUT_CACHE_DIR\"" in instructions(dockerfile)[position][
            "value"]
    # The image's own layout is among those converted.
    assert dockerfile.envs["FANOUT_LAYOUT"] in {layout for _, layout, _ in converting}


def deployment_layout(name: str, directory: Path) -> Layout:
    """The shipped layout (the image's default) or one of compose's."""
    if name == "gpu_layout.yaml (shipped)":
        return load_layout(REPO / "gpu_layout.yaml")
    return load_image_layout((COMPOSE_DIR / name).read_text(), directory)


DEPLOYMENT_LAYOUTS = ["gpu_layout.yaml (shipped)", *COMPOSE_LAYOUTS]


@pytest.mark.parametrize("name", DEPLOYMENT_LAYOUTS)
def test_the_image_holds_every_conversion_its_layouts_serve(name: str, tmp_path: Path) -> None:
    served = conversions(deployment_layout(name, tmp_path))
    assert served, "the shipped models are served by CTranslate2"
    assert served <= baked_conversions(tmp_path / "baked")


@pytest.mark.parametrize("name", DEPLOYMENT_LAYOUTS)
def test_the_layouts_serve_the_shipped_models_on_ctranslate2(
        name: str, tmp_path: Path) -> None:
    layout = deployment_layout(name, tmp_path)
    for pool in layout.pools.values():
        assert pool.engine in ENGINES and pool.engine == "ctranslate2", pool.name
        gpu = all(device.startswith("cuda") for device in pool.devices)
        assert pool.quantization == ("int8_float16" if gpu else "int8"), pool.name


def test_the_entry_point_converts_with_fanout_convert(tmp_path: Path) -> None:
    # The `convert` tier, as an init step would run it (with a stand-in `python`).
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} "$@"\n')
    (bin_dir / "python").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    ran = subprocess.run(["sh", str(COMPOSE_DIR / "entrypoint.sh"), "convert", "--help"],
                         env=env, capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.startswith("usage: fanout convert")


def test_it_exposes_the_ports_of_every_deployment_layout(
        dockerfile: DockerfileParser, tmp_path: Path) -> None:
    exposed = {int(port) for port in
               instructions(dockerfile)[first(dockerfile, "EXPOSE")]["value"].split()}
    for name in COMPOSE_LAYOUTS:
        layout = load_image_layout((COMPOSE_DIR / name).read_text(), tmp_path)
        assert {layout.front.bind.port, *(p.bind.port for p in layout.pools.values())} <= exposed
        assert layout.front_listen.port not in exposed  # loopback, behind the edge


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, simplified: the last pattern matching the path or a parent wins."""
    parts = path.split("/")
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        pattern = pattern.removeprefix("!").strip("/")
        for depth in range(1, len(parts) + 1):
            if fnmatch.fnmatchcase("/".join(parts[:depth]), pattern):
                ignored = not negated
                break
    return ignored


def test_the_dockerignore_keeps_what_the_image_copies_and_drops_the_rest(
        dockerfile: DockerfileParser) -> None:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    for source in copies(dockerfile):
        assert not dockerignored(source, patterns), source
        assert (REPO / source).exists(), source
    for dropped in (".venv", ".git", "runs", "test-artifacts", ".mypy_cache",
                    "fanout/__pycache__", "models/gpt2", "models/small/checkpoint.pt"):
        assert dockerignored(dropped, patterns), dropped


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return dict(yaml.safe_load((COMPOSE_DIR / "compose.yaml").read_text()))


def compose_layout(name: str, directory: Path) -> Layout:
    return load_image_layout((COMPOSE_DIR / name).read_text(), directory)


def test_compose_runs_the_edge_the_front_and_one_service_per_pool(
        compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"edge", "front", "pool-small", "pool-medium"}
    images = {service["image"] for service in services.values()}
    assert len(images) == 1  # one image, the command picks the tier
    for service in services.values():
        layout_file = service["environment"]["FANOUT_LAYOUT"]
        [(source, target, mode)] = [v.rsplit(":", 2) for v in service["volumes"]]
        assert (target, mode) == (layout_file, "ro")
        # ./${FANOUT_COMPOSE_LAYOUT:-gpu_layout.yaml}: the default is the CPU layout.
        assert source.endswith(":-gpu_layout.yaml}")
        # The edge's run dir is under /tmp too: the only writable place.
        assert service["read_only"] is True and "/tmp" in service["tmpfs"]
        assert "fanout-healthcheck" in " ".join(service["healthcheck"]["test"])


@pytest.mark.parametrize("name", COMPOSE_LAYOUTS)
def test_the_compose_layouts_put_the_front_behind_its_edge_on_loopback(
        name: str, tmp_path: Path) -> None:
    layout = compose_layout(name, tmp_path)
    assert layout.edge.enabled
    assert loopback(layout.front_listen)
    assert str(layout.front_listen) == "127.0.0.1:8001"
    assert str(layout.front.bind) == "0.0.0.0:8000"  # the edge's, for the published port


@pytest.mark.parametrize("name", COMPOSE_LAYOUTS)
def test_compose_services_match_the_pools_of_its_layout(
        compose: dict[str, Any], name: str, tmp_path: Path) -> None:
    layout = compose_layout(name, tmp_path)
    services = compose["services"]
    for pool in layout.pools.values():
        [(host, port)] = pool_addresses(pool)
        service = services[host]  # the front reaches the pool by its service's DNS name
        assert service["command"] == ["pool"]
        assert service["environment"][POOL_ENV] == pool.name
        assert port == pool.bind.port and str(port) in service["expose"]
        assert pool.bind.host == "0.0.0.0" and "ports" not in service  # never published
        assert services["front"]["depends_on"][host]["condition"] == "service_healthy"
    front = services["front"]
    assert front["command"] == ["front"] and POOL_ENV not in front["environment"]
    # The front's service owns the network namespace that the edge joins, and so the
    # published port: the edge's (front.bind), never the front's own.
    assert front["ports"] == [f"127.0.0.1:8000:{layout.front.bind.port}"]
    assert str(layout.front_listen.port) not in " ".join(front["ports"])


def test_the_edge_shares_the_fronts_network_namespace(compose: dict[str, Any]) -> None:
    services = compose["services"]
    edge, front = services["edge"], services["front"]
    assert edge["command"] == ["edge"] and POOL_ENV not in edge["environment"]
    assert edge["image"] == front["image"]
    # Its loopback is the front's: the one address the front listens on and believes.
    assert edge["network_mode"] == "service:front"
    assert not {"ports", "expose", "networks"} & set(edge)  # none with a shared namespace
    # Started once the front answers; restarted with it, or it would keep a dead namespace.
    assert edge["depends_on"]["front"] == {"condition": "service_healthy", "restart": True}
    # nginx stops gracefully on SIGQUIT; on SIGTERM it drops requests in flight.
    assert edge["stop_signal"] == "SIGQUIT" and "stop_signal" not in front


@pytest.mark.parametrize("service", ["edge", "front"])
def test_the_edge_and_the_front_each_check_their_own_port(
        compose: dict[str, Any], service: str) -> None:
    # They share a network namespace, so each names its tier: the edge's health goes
    # through the edge, the front's straight to the front.
    check = compose["services"][service]["healthcheck"]
    assert check["test"][-2:] == ["/usr/local/bin/fanout-healthcheck", service]
    assert check["start_period"] == compose["x-fanout"]["healthcheck"]["start_period"]


def test_the_cuda_layout_runs_every_slot_on_the_containers_gpu(tmp_path: Path) -> None:
    layout = compose_layout("gpu_layout.cuda.yaml", tmp_path)
    for pool in layout.pools.values():
        assert set(pool.devices) == {"cuda:0"} and pool.quantization == "int8_float16"
    # The GPU variant is there, commented out, for each pool.
    text = (COMPOSE_DIR / "compose.yaml").read_text()
    assert text.count("#         - driver: nvidia") == len(layout.pools)


def load_healthcheck() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fanout_healthcheck",
                                                  COMPOSE_DIR / "healthcheck.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_health_check_finds_its_tiers_address_in_the_layout(tmp_path: Path) -> None:
    healthcheck = load_healthcheck()
    layout = load_image_layout((COMPOSE_DIR / "gpu_layout.yaml").read_text(), tmp_path)
    env = {"FANOUT_LAYOUT": str(layout.source)}
    assert healthcheck.health_url("front", env) == "http://127.0.0.1:8001/health"
    assert healthcheck.health_url("edge", env) == "http://127.0.0.1:8000/health"
    # serve: through the edge, the way clients come.
    assert healthcheck.health_url("serve", env) == "http://127.0.0.1:8000/health"
    assert healthcheck.health_url("pool", {**env, POOL_ENV: "medium"}) == \
        "http://127.0.0.1:8102/health"
    assert healthcheck.health_url("edge", {**env, "FANOUT_HEALTH_PORT": "9"}) == \
        "http://127.0.0.1:9/health"
    for tier, problem in (("pool", {POOL_ENV: "large"}), ("front", {"FANOUT_LAYOUT": "/no"})):
        with pytest.raises(ValueError):  # LayoutError too: unhealthy, not a traceback
            healthcheck.health_url(tier, {**env, **problem})


def test_the_health_check_of_a_layout_without_edge(tmp_path: Path) -> None:
    healthcheck = load_healthcheck()
    text = (COMPOSE_DIR / "gpu_layout.yaml").read_text().replace(
        "  enabled: true\n", "  enabled: false\n")
    layout = load_image_layout(text, tmp_path)
    env = {"FANOUT_LAYOUT": str(layout.source)}
    assert healthcheck.health_url("front", env) == "http://127.0.0.1:8000/health"
    assert healthcheck.health_url("serve", env) == "http://127.0.0.1:8000/health"
    with pytest.raises(ValueError, match="no tier 'edge'"):
        healthcheck.health_url("edge", env)


@pytest.mark.parametrize(("environ", "cmdline", "tier"), [
    # as exec'd by the entry point: gunicorn, or nginx's own title for its master
    ({}, b"python\0-m\0gunicorn\0-c\0python:frontend_api.gunicorn_conf\0"
         b"frontend_api.app:get_app()\0", "front"),
    ({}, b"nginx: master process /usr/sbin/nginx -e stderr -c /tmp/x/nginx.conf -g daemon "
         b"off;\0", "edge"),
    ({}, b"python\0-m\0fanout\0serve\0", "serve"),
    # docker run --init: its init is PID 1, with the entry point and the tier as arguments
    ({}, b"/sbin/docker-init\0--\0fanout-tier\0edge\0", "edge"),
    ({POOL_ENV: "small"}, b"python\0-m\0gunicorn\0", "pool"),
    ({}, b"", "front"),
])
def test_the_health_check_knows_the_tier_from_pid_1(
        environ: dict[str, str], cmdline: bytes, tier: str) -> None:
    assert load_healthcheck().running_tier(environ, cmdline) == tier


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/health" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_health_check_passes_on_200_only(health_server: http.server.HTTPServer,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    healthcheck = load_healthcheck()
    monkeypatch.setenv("FANOUT_HEALTH_PORT", str(health_server.server_address[1]))
    monkeypatch.setattr(_Health, "status", 200)
    assert healthcheck.main([]) == 0
    assert healthcheck.main(["edge"]) == 0
    monkeypatch.setattr(_Health, "status", 503)  # a worker still loading, a pool down
    assert healthcheck.main([]) == 1
    # ... which a liveness check must not count: the port accepts connections.
    assert healthcheck.main(["--listening", "front"]) == 0
    assert healthcheck.main(["--listening", "backend"]) == 1  # no such tier


def test_the_health_check_fails_when_nothing_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("FANOUT_HEALTH_PORT", str(port))
    assert load_healthcheck().main([]) == 1
    assert load_healthcheck().main(["--listening"]) == 1
