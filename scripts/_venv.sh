# Sourced by scripts/serve and scripts/test: make .venv and install the project into it.
#
#   ensure_venv ""                # what serving needs (setup.cfg's install_requires)
#   ensure_venv test,tools,train  # plus those extras: the tests, fanout's tools, training
#
# Idempotent: a stamp records what was installed from which setup.cfg, so a second run
# costs a hash, not a pip resolve. Environment:
#   FANOUT_VENV    where the virtual environment lives (default: <repo>/.venv)
#   FANOUT_PYTHON  the interpreter that creates it (default: python3, must be >= 3.11)
#   FANOUT_TORCH   the torch requirement installed first when torch is missing
#                  (default: torch==2.13.0, the CPU wheel; see README for CUDA hosts)

FANOUT_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FANOUT_VENV="${FANOUT_VENV:-$FANOUT_ROOT/.venv}"
PY="$FANOUT_VENV/bin/python"

ensure_venv() {
    local extras="$1"
    if [ ! -x "$PY" ]; then
        local base="${FANOUT_PYTHON:-python3}"
        if ! "$base" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
            echo "error: fanout needs Python >= 3.11; set FANOUT_PYTHON to one" >&2
            return 1
        fi
        echo "creating $FANOUT_VENV"
        "$base" -m venv "$FANOUT_VENV"
    fi
    local stamp="$FANOUT_VENV/.fanout-installed${extras:+-$extras}"
    local want
    want="$(cat "$FANOUT_ROOT/setup.cfg" "$FANOUT_ROOT/pyproject.toml" | sha256sum | cut -d' ' -f1)"
    if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
        return 0
    fi
    # torch first, pinned: left to the resolver, a bare "torch" pulls the CUDA build.
    if ! "$PY" -c 'import torch' 2>/dev/null; then
        "$PY" -m pip install --quiet "${FANOUT_TORCH:-torch==2.13.0}"
    fi
    "$PY" -m pip install --quiet -e "$FANOUT_ROOT${extras:+[$extras]}"
    echo "$want" > "$stamp"
}

# Debian packages the project runs (never a downloaded build): install the missing ones
# with apt-get when root, else say how. Each argument is "command:package", or
# "/path/of/a/file:package" for a package that installs no command.
#   ensure_debian_packages nginx:nginx /usr/share/dict/american-english:wamerican
ensure_debian_packages() {
    local missing=() item
    for item in "$@"; do
        command -v "${item%%:*}" > /dev/null || [ -x "/usr/sbin/${item%%:*}" ] \
            || [ -e "${item%%:*}" ] || missing+=("${item#*:}")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
        echo "installing Debian's ${missing[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            "${missing[@]}" > /dev/null
    else
        echo "warning: ${missing[*]} missing: install with 'sudo apt-get install" \
             "${missing[*]}'" >&2
    fi
}
