"""The edge: nginx in front of the front, configured from the layout and nothing else.

    fanout edge [--layout FILE] [--print] [--run-dir DIR]

gunicorn's threaded front holds a thread per connection until its request is read, so a
few slow clients (or a few hundred silent ones) would hold every thread; its deployment
guide asks for a buffering proxy in front. The edge is that proxy. It listens on the
public ``front.bind``; the front moves to ``edge.front_bind``. It reads each request
whole (within its header and body timeouts) before passing it on, answers the slow and
the silent itself, limits connections and requests per client address, passes streams
through unbuffered (the front marks them), and answers its own errors in the front's
JSON shapes, OpenAI's under ``/v1/``.

Without ``--print`` it writes the configuration into a run directory and replaces
itself with nginx in the foreground, so a supervisor's signals reach nginx directly.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from fanout.layout import Bind, Layout

NGINX_ENV = "FANOUT_NGINX"  # the nginx binary, when it is not on PATH or in /usr/sbin
INSTALL_HINT = ("install Debian's nginx (apt-get install nginx; scripts/serve does it when "
                "run as root), set $FANOUT_NGINX to an nginx binary, or set "
                "'edge: {enabled: false}' to serve the front without its edge (not in "
                "production: slow clients can then hold all of the front's threads)")
# Seconds the edge waits for the front beyond a request's longest generation.
READ_MARGIN = 10
RETRY_AFTER = 1  # what a client told 429 or 502 by the edge should wait

# (status, title, description) of every error the edge answers itself.
_ERRORS = (
    (400, "Bad request", "the request could not be read as HTTP"),
    (413, "413 Content Too Large", "body is larger than {max_body} bytes"),
    (414, "URI too long", "the request line is too long"),
    (429, "Too many requests", "this client address is past its limit of "
                               "{connections} requests at once or {rate:g} a second; retry "
                               "in {retry}s"),
    (431, "Request header fields too large", "the request headers are too large"),
    (502, "Front unavailable", "the front is not answering; retry in {retry}s"),
    (504, "Front timeout", "the front did not answer in time"),
)
# nginx's own code for headers too large; it would answer 400.
_NGINX_CODES = {431: 494}


class EdgeError(RuntimeError):
    """The edge cannot start; the message says what to do."""


def nginx_binary() -> str:
    """The nginx to run: ``$FANOUT_NGINX``, else the one on PATH or in /usr/sbin."""
    named = os.environ.get(NGINX_ENV)
    if named:
        if not os.access(named, os.X_OK):
            raise EdgeError(f"${NGINX_ENV}={named} is not an executable nginx")
        return named
    found = shutil.which("nginx") or (
        "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None)
    if not found:
        raise EdgeError(f"nginx is not installed: {INSTALL_HINT}")
    return found


def _listen(bind: Bind) -> str:
    return f"[{bind.host}]:{bind.port}" if ":" in bind.host else f"{bind.host}:{bind.port}"


def _rate(per_second: float) -> str:
    """nginx takes whole requests per second or per minute."""
    return f"{int(per_second)}r/s" if per_second == int(per_second) else \
        f"{max(1, round(per_second * 60))}r/m"


def _error_bodies(layout: Layout, openai: bool) -> list[tuple[int, str]]:
    words = {"max_body": layout.front.max_body_bytes, "retry": RETRY_AFTER,
             "connections": layout.edge.connections_per_client,
             "rate": layout.edge.requests_per_second}
    bodies = []
    for status, title, description in _ERRORS:
        text = description.format(**words)
        body: dict[str, Any]
        if openai:
            kind = "rate_limit_error" if status == 429 else \
                "invalid_request_error" if status < 500 else "server_error"
            body = {"error": {"message": text, "type": kind, "param": None, "code": None}}
        else:
            body = {"title": title, "description": text}
        bodies.append((status, json.dumps(body)))
    return bodies


def _error_locations(layout: Layout, prefix: str, openai: bool) -> tuple[str, str]:
    """``error_page`` lines and the named locations that answer them as JSON."""
    pages, locations = [], []
    for status, body in _error_bodies(layout, openai):
        name = f"@{prefix}_{status}"
        pages.append(f"error_page {_NGINX_CODES.get(status, status)} = {name};")
        retry = f"add_header Retry-After {RETRY_AFTER} always; " if status in (429, 502) else ""
        quoted = body.replace("\\", "\\\\").replace("'", "\\'")
        locations.append(f"    location {name} {{ default_type application/json; {retry}"
                         f"return {status} '{quoted}'; }}")
    return "\n        ".join(pages), "\n".join(locations)


def render(layout: Layout, run_dir: Path) -> str:
    """The whole nginx configuration for ``layout``; temporary files go under ``run_dir``."""
    edge, front = layout.edge, layout.front
    read_timeout = int(layout.limits.max_time + front.network_slack) + READ_MARGIN
    fanout_pages, fanout_locations = _error_locations(layout, "fanout", openai=False)
    openai_pages, openai_locations = _error_locations(layout, "openai", openai=True)
    temp = {name: run_dir / name for name in ("client_body", "proxy", "fastcgi", "uwsgi",
                                              "scgi")}
    user = "user nobody nogroup;\n" if os.geteuid() == 0 else ""
    return f"""\
# Written by `fanout edge` from {layout.source}; change the layout, not this file.
{user}worker_processes {edge.processes};
pid {run_dir / "nginx.pid"};
error_log stderr warn;
worker_rlimit_nofile 16384;

events {{
    worker_connections 8192;
}}

http {{
    server_tokens off;
    default_type application/json;
    log_format fanout_edge escape=json '{{"logger": "fanout.edge", "time": "$time_iso8601", '
        '"client": "$remote_addr", "method": "$request_method", "path": "$uri", '
        '"status": $status, "duration_s": $request_time, "bytes": $bytes_sent, '
        '"request_id": "$fanout_request_id"}}';
    access_log /dev/stdout fanout_edge;
    client_body_temp_path {temp["client_body"]};
    proxy_temp_path {temp["proxy"]};
    fastcgi_temp_path {temp["fastcgi"]};
    uwsgi_temp_path {temp["uwsgi"]};
    scgi_temp_path {temp["scgi"]};

    # Slow and silent clients wait here, not in the front's threads.
    client_header_timeout {edge.header_timeout:g}s;
    client_body_timeout {edge.body_timeout:g}s;
    send_timeout {edge.send_timeout:g}s;
    keepalive_timeout {edge.keepalive_timeout:g}s;
    reset_timedout_connection on;
    # The front's own limit; a body is read whole, in memory, before the front sees it.
    client_max_body_size {front.max_body_bytes};
    client_body_buffer_size {front.max_body_bytes};

    # Per client address: requests at once, and a rate with a burst. 429, not 503: the
    # client is past its own share, the server is not overloaded.
    limit_conn_zone $binary_remote_addr zone=fanout_connections:10m;
    limit_req_zone $binary_remote_addr zone=fanout_rate:10m rate={_rate(edge.requests_per_second)};
    limit_conn_status 429;
    limit_req_status 429;

    # The client's request id, or one of nginx's: the front logs it and passes it on.
    map $http_x_request_id $fanout_request_id {{
        default $http_x_request_id;
        "" $request_id;
    }}

    upstream fanout_front {{
        server {_listen(layout.front_listen)};
        keepalive 32;
        # Below gunicorn's keepalive (5 s): nginx never reuses a connection the front is
        # closing, which would cost a POST a 502 (it is never sent twice).
        keepalive_timeout 4s;
    }}

    server {{
        listen {_listen(front.bind)} backlog=4096;
        limit_conn fanout_connections {edge.connections_per_client};
        limit_req zone=fanout_rate{f" burst={edge.burst}" if edge.burst else ""} nodelay;

        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $http_host;
        # Set, not appended: the edge is the first hop the front trusts.
        proxy_set_header X-Forwarded-For $remote_addr;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_set_header X-Request-ID $fanout_request_id;
        proxy_request_buffering on;
        # Answers are buffered, so a slow reader holds no front thread; streams are not
        # (the front sends "X-Accel-Buffering: no" with them).
        proxy_buffering on;
        proxy_connect_timeout 5s;
        proxy_send_timeout {read_timeout}s;
        proxy_read_timeout {read_timeout}s;
        # A POST is never sent twice; a client that leaves closes the front's connection,
        # which stops its workers.
        proxy_next_upstream off;
        proxy_ignore_client_abort off;
        {fanout_pages}

        location / {{
            proxy_pass http://fanout_front;
        }}

        location /v1/ {{
            proxy_pass http://fanout_front;
            {openai_pages}
        }}

{fanout_locations}
{openai_locations}
    }}
}}
"""


def write_config(layout: Layout, run_dir: Path) -> Path:
    """Write the configuration and the directories nginx needs into ``run_dir``."""
    run_dir.mkdir(parents=True, exist_ok=True)
    run_dir.chmod(0o755)  # nginx's workers may run as another user and must reach it
    config = run_dir / "nginx.conf"
    config.write_text(render(layout, run_dir))
    return config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print", action="store_true", help="print the configuration "
                        "(for an nginx or ingress of your own) and exit")
    parser.add_argument("--run-dir", type=Path, help="where the configuration and nginx's "
                        "temporary files go (default: a new temporary directory; printed "
                        "as <tmp>/fanout-edge)")


def run(args: argparse.Namespace, layout: Layout) -> int:
    """``fanout edge``: print the configuration, or write it and become nginx."""
    if args.print:  # nothing is written: no directory is made for it
        print(render(layout, args.run_dir or Path(tempfile.gettempdir()) / "fanout-edge"),
              end="")
        return 0
    if not layout.edge.enabled:
        print(f"error: {layout.source}: edge.enabled is false: there is no edge to run",
              file=sys.stderr)
        return 2
    try:
        nginx = nginx_binary()
    except EdgeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    run_dir = args.run_dir or Path(tempfile.mkdtemp(prefix="fanout-edge-"))
    config = write_config(layout, run_dir)
    sys.stdout.flush()
    os.execv(nginx, [nginx, "-e", "stderr", "-c", str(config), "-g", "daemon off;"])

