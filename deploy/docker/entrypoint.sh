#!/bin/sh
# The image's entry point (installed as fanout-tier): which tier this container runs.
#
#   front          the front API (the image's default command): on the layout's
#                  front.bind, or, behind an edge, on edge.front_bind (loopback)
#   edge           nginx on front.bind, buffering for the front (fanout edge); run it in
#                  the front's network namespace, since the front listens on loopback.
#                  Its run dir is a new one under $TMPDIR (/tmp), which must be writable
#   pool           the worker tier of the pool that $FANOUT_POOL names, on its bind
#   serve          every tier of the layout in this one container (fanout serve); the
#                  public address is $FANOUT_FRONT_BIND, by default 0.0.0.0:8000
#   layout         fanout check: check the layout ($FANOUT_LAYOUT), say what it starts
#   convert        fanout convert: convert the layout's ctranslate2 pools (or the POOLs
#                  named) into $FANOUT_CACHE_DIR, which must then be writable. The image
#                  holds the shipped models' conversions; this is for models mounted at
#                  run time, e.g. in an init container (docs/DEPLOY.md)
#   anything else  runs as a command, e.g. `python -m fanout fit`
#
# Arguments after front or pool go to gunicorn, after the others to their `fanout`
# subcommand (`python -m fanout`: the image runs the source, with no console script).
# The command lines are those of fanout/launch/tiers.py and the Procfile (tests/deploy
# keeps them in step). exec: gunicorn (or nginx) is PID 1 and gets the container's stop
# signal. gunicorn stops gracefully on SIGTERM; nginx on SIGQUIT only (SIGTERM drops
# requests in flight), so stop an edge with SIGQUIT.
set -eu

tier="${1:-front}"
[ "$#" -gt 0 ] && shift

case "$tier" in
    front)
        exec python -m gunicorn -c python:frontend_api.gunicorn_conf 'frontend_api.app:get_app()' "$@"
        ;;
    edge)
        exec python -m fanout edge "$@"
        ;;
    pool)
        if [ -z "${FANOUT_POOL:-}" ]; then
            echo "fanout-tier: set FANOUT_POOL to the pool this container serves" >&2
            exit 2
        fi
        exec python -m gunicorn -c python:worker_api.gunicorn_conf 'worker_api.app:get_app()' "$@"
        ;;
    serve)
        FANOUT_FRONT_BIND="${FANOUT_FRONT_BIND:-0.0.0.0:8000}"
        export FANOUT_FRONT_BIND
        exec python -m fanout serve "$@"
        ;;
    layout)
        exec python -m fanout check "$@"
        ;;
    convert)
        exec python -m fanout convert "$@"
        ;;
    *)
        exec "$tier" "$@"
        ;;
esac
