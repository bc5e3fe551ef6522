#!/usr/bin/env bash
# Runs moto, the AWS emulator the AWS integration tests speak to, on 127.0.0.1 only.
#
#   scripts/moto.sh install                      create .venv-moto/ with moto (idempotent)
#   scripts/moto.sh start <port-file> <pid-file> start moto_server on a free loopback port
#   scripts/moto.sh stop <pid-file>              stop the server started with that pid file
#
# moto is pinned because its behaviour differs between releases (see the AWS notes: 5.2.5
# is the version probed against aws-sdk-cloudwatch 1.99 and aws-sdk-xray). The server log
# goes next to the pid file, as <pid-file>.log. PYTHON picks the interpreter for the venv.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv-moto"
moto_version="5.2.5"
python="${PYTHON:-python3}"

usage() {
    sed -n '4,6p' "${BASH_SOURCE[0]}" | sed 's/^# *//' >&2
    exit 2
}

installed_version() {
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true
}

install() {
    if [[ -x "$venv/bin/moto_server" && "$(installed_version)" == "$moto_version" ]]; then
        echo "moto $moto_version already installed in $venv"
        return
    fi
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check \
        "moto[server]==$moto_version"
    echo "moto $(installed_version) installed in $venv"
}

free_port() {
    # The kernel picks the port; the small window before moto binds it is covered by
    # start's retry.
    "$venv/bin/python" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

answers() {
    # Any HTTP status means the server is up; moto answers 404 to paths it does not know.
    "$venv/bin/python" - "$1" <<'EOF'
import sys, urllib.error, urllib.request
try:
    urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/moto-api/", timeout=1)
except urllib.error.HTTPError:
    pass
except Exception:
    sys.exit(1)
EOF
}

start() {
    local port_file="$1" pid_file="$2" log="$2.log"
    if [[ ! -x "$venv/bin/moto_server" ]]; then
        echo "moto is not installed: run scripts/moto.sh install" >&2
        exit 1
    fi

    local attempt port pid
    for attempt in 1 2 3; do
        port="$(free_port)"
        "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" </dev/null >"$log" 2>&1 &
        pid=$!
        # Up to 30 s: the first start compiles moto's modules.
        for _ in $(seq 1 300); do
            if ! kill -0 "$pid" 2>/dev/null; then
                break
            fi
            if answers "$port"; then
                echo "$port" >"$port_file"
                echo "$pid" >"$pid_file"
                echo "moto_server pid $pid listening on 127.0.0.1:$port"
                return
            fi
            sleep 0.1
        done
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
        echo "moto_server did not come up on port $port (attempt $attempt)" >&2
    done
    echo "giving up; last log ($log):" >&2
    tail -n 20 "$log" >&2
    exit 1
}

stop() {
    local pid_file="$1" pid
    if [[ ! -f "$pid_file" ]]; then
        echo "no pid file $pid_file; nothing to stop" >&2
        return
    fi
    pid="$(cat "$pid_file")"
    if kill "$pid" 2>/dev/null; then
        for _ in $(seq 1 50); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$pid_file"
}

case "${1:-}" in
install)
    [[ $# -eq 1 ]] || usage
    install
    ;;
start)
    [[ $# -eq 3 ]] || usage
    start "$2" "$3"
    ;;
stop)
    [[ $# -eq 2 ]] || usage
    stop "$2"
    ;;
*)
    usage
    ;;
esac
