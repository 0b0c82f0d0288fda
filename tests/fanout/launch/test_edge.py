"""The edge's nginx configuration: written from the layout, accepted by nginx itself."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fanout.launch.edge import NGINX_ENV, EdgeError, nginx_binary, render, write_config
from fanout.layout import DEFAULT_LAYOUT, Layout, LayoutError, load_layout
from tests.conftest import LayoutFactory


def nginx_test(config: Path) -> subprocess.CompletedProcess[str]:
    try:
        nginx = nginx_binary()
    except EdgeError as missing:
        pytest.fail(f"{missing} (scripts/test installs it when run as root)")
    return subprocess.run([nginx, "-t", "-e", "stderr", "-c", str(config)],
                          capture_output=True, text=True, timeout=30)


def test_the_shipped_layout_gives_a_configuration_nginx_accepts(tmp_path: Path) -> None:
    checked = nginx_test(write_config(load_layout(DEFAULT_LAYOUT), tmp_path / "run"))
    assert checked.returncode == 0, checked.stderr
    assert "test is successful" in checked.stderr


def test_every_setting_comes_from_the_layout(write_layout: LayoutFactory,
                                             tmp_path: Path) -> None:
    layout = load_layout(write_layout(
        front={"bind": "0.0.0.0:8400", "max_body_bytes": 12345},
        edge={"front_bind": "127.0.0.1:8401", "header_timeout": 3, "body_timeout": 4,
              "send_timeout": 5, "keepalive_timeout": 6, "connections_per_client": 7,
              "requests_per_second": 8, "burst": 9, "processes": 2},
        generation={"limits": {"max_time": 20.0}}))
    config = render(layout, tmp_path)
    for line in ("listen 0.0.0.0:8400 backlog=4096;", "server 127.0.0.1:8401;",
                 "client_max_body_size 12345;", "client_body_buffer_size 12345;",
                 "client_header_timeout 3s;", "client_body_timeout 4s;", "send_timeout 5s;",
                 "keepalive_timeout 6s;", "limit_conn fanout_connections 7;",
                 "rate=8r/s;", "limit_req zone=fanout_rate burst=9 nodelay;",
                 "worker_processes 2;", "proxy_request_buffering on;",
                 "proxy_set_header X-Forwarded-For $remote_addr;",
                 "proxy_set_header X-Request-ID $fanout_request_id;",
                 "proxy_next_upstream off;",
                 # the longest request the front lets through, and a margin
                 f"proxy_read_timeout {int(20 + layout.front.network_slack) + 10}s;"):
        assert line in config, line
    # Its own errors in the front's shapes: fanout's, and OpenAI's under /v1/.
    assert '"description": "body is larger than 12345 bytes"' in config
    assert '"error": {"message": "body is larger than 12345 bytes"' in config
    assert nginx_test(write_config(layout, tmp_path / "run")).returncode == 0


def test_a_fractional_rate_is_per_minute(write_layout: LayoutFactory, tmp_path: Path) -> None:
    layout = load_layout(write_layout(edge={"requests_per_second": 0.5}))
    assert "rate=30r/m;" in render(layout, tmp_path)


def test_the_front_moves_behind_the_edge_unless_it_is_off(tmp_path: Path,
                                                          tiny_model_dir: Path) -> None:
    def layout(edge: str) -> Layout:
        path = tmp_path / "gpu_layout.yaml"
        path.write_text(f"front: {{bind: '127.0.0.1:8500'}}\n{edge}pools:\n  small: "
                        f"{{model: '{tiny_model_dir}', bind: '127.0.0.1:8600', slots: [cpu]}}\n")
        return load_layout(path)

    on = layout("")  # by default: the next port on loopback
    assert on.edge.enabled and str(on.front_listen) == "127.0.0.1:8501"
    off = layout("edge: {enabled: false}\n")
    assert not off.edge.enabled and off.front_listen == off.front.bind


@pytest.mark.parametrize(("edge", "key", "words"), [
    ({"front_bind": "127.0.0.1:9101"}, "pools.small.bind", "already bound by edge.front_bind"),
    ({"header_timeout": 0}, "edge.header_timeout", "outside"),
    ({"enabled": "yes"}, "edge.enabled", "true or false"),
    ({"buffering": True}, "edge.buffering", "unknown key"),
])
def test_a_bad_edge_section_names_its_key(write_layout: LayoutFactory, edge: dict[str, object],
                                          key: str, words: str) -> None:
    path = write_layout(pools={"small": {"bind": "127.0.0.1:9101", "slots": ["cpu"]}},
                        edge=edge)
    with pytest.raises(LayoutError) as caught:
        load_layout(path)
    assert caught.value.key == key and words in caught.value.problem


def test_print_shows_the_configuration_and_a_missing_nginx_says_what_to_do(
        tmp_path: Path) -> None:
    printed = subprocess.run([sys.executable, "-m", "fanout", "edge", "--print"],
                             capture_output=True, text=True, timeout=60)
    assert printed.returncode == 0 and "upstream fanout_front" in printed.stdout
    missing = subprocess.run([sys.executable, "-m", "fanout", "edge", "--run-dir",
                              str(tmp_path)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, NGINX_ENV: str(tmp_path / "no-nginx")})
    assert missing.returncode == 2
    assert f"${NGINX_ENV}={tmp_path / 'no-nginx'} is not an executable nginx" in missing.stderr
