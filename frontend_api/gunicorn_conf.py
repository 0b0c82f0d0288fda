"""gunicorn settings for the front: one process, a thread per concurrent user.

Run as ``gunicorn -c python:frontend_api.gunicorn_conf 'frontend_api.app:get_app()'``.
One process keeps one fan-out thread pool and one view of the pools; threads let it
serve many editors at once while each waits on its worker tier.
"""

from __future__ import annotations

import os

from fanout.layout import LayoutError, load_layout
from fanout.logs import logging_config
from frontend_api.forwarded import trusted_proxies

# The front is one process with one metrics registry. A PROMETHEUS_MULTIPROC_DIR in the
# environment (meant for a worker tier, or left in a shell) would switch prometheus_client
# to writing files there instead, when the app imports it after fork.
for _variable in ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir"):
    os.environ.pop(_variable, None)

try:
    _layout = load_layout()
except LayoutError as error:
    raise SystemExit(f"fanout: {error}") from None

# Behind the edge (nginx on front.bind), the front listens where only the edge connects,
# and believes X-Forwarded-For from the edge alone; without an edge, from nobody.
bind = [str(_layout.front_listen)]
forwarded_allow_ips = ",".join(sorted(trusted_proxies(_layout)))
workers = 1
worker_class = "gthread"
threads = _layout.front.threads
# Above the longest request the front lets through, so gunicorn never kills a live one.
timeout = int(_layout.limits.max_time + _layout.front.network_slack) + 10
graceful_timeout = timeout
keepalive = 5  # above the edge's upstream keepalive_timeout (fanout.launch.edge): it closes first
proc_name = "fanout-front"
loglevel = os.environ.get("FANOUT_LOG_LEVEL", "info")
logconfig_dict = logging_config(loglevel)
logger_class = "fanout.logs.GunicornLogger"  # our JSON line per request; no access log
# Several masters run side by side; gunicorn 24+'s shared default control socket would clash.
control_socket_disable = True
