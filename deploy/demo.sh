#!/usr/bin/env bash
# Set up and run the demo line end to end on this machine:
#   a virtual environment with the collector, a private mosquitto on a free loopback port,
#   and `collector demo` (a simulated tester -> collector -> SQLite -> MQTT) for DURATION
#   seconds (default 60; Ctrl-C stops it earlier).
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
trap 'kill "$broker_pid" 2>/dev/null || true; rm -rf "$workdir"' EXIT

for _ in $(seq 50); do  # up to 5 s for the broker to listen
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
  sleep 0.1
done

echo "demo: mosquitto on 127.0.0.1:$port; running the line for ${duration} s"
echo "demo: watch the stream with: mosquitto_sub -p $port -t 'collector/#' -v"
.venv/bin/collector demo --broker "127.0.0.1:$port" --duration "$duration" --buffer "$workdir/buffer.db"
