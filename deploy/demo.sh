#!/usr/bin/env bash
# Set up and run the demo line end to end on this machine:
#   a virtual environment with the collector, a private mosquitto on a free loopback port,
#   `collector demo` (a simulated tester -> collector -> SQLite -> MQTT) for DURATION
#   seconds (default 60; Ctrl-C stops it earlier), and the central store
#   (`collector store run`: MQTT -> a SQLite database), then how to look a unit up.
# Usage: bash deploy/demo.sh [DURATION]
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-60}"

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  echo "demo: installing mosquitto (Debian package)"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends mosquitto
fi
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

if [ ! -x .venv/bin/collector ]; then
  echo "demo: creating .venv and installing the collector"
  python3 -m venv .venv
  .venv/bin/pip install -q .
fi

port="$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
workdir="$(mktemp -d)"
cat > "$workdir/mosquitto.conf" <<CONF
listener $port 127.0.0.1
allow_anonymous true
user $(id -un)
CONF
"$mosquitto_bin" -c "$workdir/mosquitto.conf" >"$workdir/mosquitto.log" 2>&1 &
broker_pid=$!
store_pid=""
trap 'kill $store_pid "$broker_pid" 2>/dev/null || true; rm -rf "$workdir"' EXIT

for _ in $(seq 50); do  # up to 5 s for the broker to listen
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done

# The central store (docs/store.md): a fresh SQLite database that outlives the demo.
store_db="${TMPDIR:-/tmp}/collector-demo-store.db"
store_conf="${TMPDIR:-/tmp}/collector-demo-store.yaml"
store_port="$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
rm -f "$store_db" "$store_db-wal" "$store_db-shm"
cat > "$store_conf" <<CONF
database: {url: "sqlite:///$store_db"}
mqtt: {host: 127.0.0.1, port: $port, client_id: demo-store}
http: {port: $store_port}
CONF
.venv/bin/collector store run --config "$store_conf" >"$workdir/store.log" 2>&1 &
store_pid=$!
echo "demo: the store writes the stream into $store_db; a unit while it runs:"
echo "demo:   http://127.0.0.1:$store_port/units/PILOT-0001"

echo "demo: mosquitto on 127.0.0.1:$port; running the line for ${duration} s"
echo "demo: watch the stream with: mosquitto_sub -p $port -t 'collector/#' -v"
.venv/bin/collector demo --broker "127.0.0.1:$port" --duration "$duration" --buffer "$workdir/buffer.db"

sleep 1  # the store's last batch; SIGTERM commits the batch in hand
kill -TERM "$store_pid" 2>/dev/null && wait "$store_pid" || true
store_pid=""
echo "demo: what the store holds (per collector: high-water mark and missing seqs):"
.venv/bin/collector store gaps --db "sqlite:///$store_db" || true
serial="$(.venv/bin/collector store units --db "sqlite:///$store_db" --limit 1 \
  | .venv/bin/python -c 'import json, sys; print(json.loads(sys.stdin.readline() or "{}").get("serial", "PILOT-0001"))')"
echo "demo: look a unit up (every operation, verdict, characteristic and reading):"
echo "demo:   .venv/bin/collector store unit $serial --db sqlite:///$store_db"
echo "demo:   or serve it: .venv/bin/collector store run --config $store_conf"
echo "demo:   and open http://127.0.0.1:$store_port/units/$serial"
