#!/usr/bin/env bash
# Set up and run the demo line end to end on this machine:
#   a virtual environment with the collector, a private mosquitto on a free loopback port,
#   the central store (`collector store run`: MQTT -> a SQLite database) with three people
#   (Quality, Production, Engineering), who open the pilot run and approve its protocol
#   before the line starts; `collector demo` (a simulated line -> collector -> SQLite ->
#   MQTT -> the store, mqtt.delivery: store) for DURATION seconds (default 60; Ctrl-C stops it
#   earlier), where the operator records a deviation on the live page (POST /deviations);
#   once the store holds everything the line published, units are allocated (golden, field
#   tests, certification) and the three functions sign (Engineering: no-go, with its reason);
#   then the run's report (HTML file: the record with the figures), how to look a unit up,
#   and how to serve /runs, /report and /units again. It ends by itself.
# Usage: bash deploy/demo.sh [DURATION]
# DEMO_PYTHON=/path/to/python runs that interpreter's installed collector instead of .venv's
# (the tests do); TMPDIR decides where the store's database, config and report go.
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$(pwd)"
duration="${1:-60}"

if ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; then
  echo "demo: installing mosquitto (Debian package)"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends mosquitto
fi
mosquitto_bin="$(command -v mosquitto || echo /usr/sbin/mosquitto)"

python_bin="${DEMO_PYTHON:-}"
shown=".venv/bin/collector"  # how the printed commands start
if [ -z "$python_bin" ]; then
  if [ ! -x .venv/bin/collector ]; then
    echo "demo: creating .venv and installing the collector"
    python3 -m venv .venv
    .venv/bin/pip install -q .
  fi
  python_bin=.venv/bin/python
else
  shown="$python_bin -m collector"
fi
collector=("$python_bin" -m collector)

port="$("$python_bin" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
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
store_port="$("$python_bin" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
store_url="http://127.0.0.1:$store_port"
report_file="${TMPDIR:-/tmp}/collector-demo-report.html"
protocol="$repo/config/demo-protocol.yaml"
rm -f "$store_db" "$store_db-wal" "$store_db-shm" "$report_file"
# The people who keep the record (docs/pilot-record.md): one token file each, beside the
# store's config so that it can be served again after the demo.
tokens="${TMPDIR:-/tmp}/collector-demo-tokens"
mkdir -p "$tokens"
chmod 700 "$tokens"
for who in quality production engineering; do
  "$python_bin" -c 'import secrets; print(secrets.token_urlsafe(24))' > "$tokens/$who"
done
chmod 600 "$tokens"/*
cat > "$store_conf" <<CONF
database: {url: "sqlite:///$store_db"}
mqtt: {host: 127.0.0.1, port: $port, client_id: demo-store}
http: {port: $store_port}
report: {protocol: "$protocol"}
people:
  - {name: "Q. Demo", functions: [Quality], token_file: "$tokens/quality"}
  - {name: "P. Demo", functions: [Production], token_file: "$tokens/production"}
  - {name: "E. Demo", functions: [Engineering], token_file: "$tokens/engineering"}
CONF
"${collector[@]}" store run --config "$store_conf" >"$workdir/store.log" 2>&1 &
store_pid=$!
echo "demo: the store writes the stream into $store_db; while it runs:"
echo "demo:   $store_url/runs (the pilot run), $store_url/report and $store_url/units/PILOT-0001"
# The run is opened and its exit criteria approved before the first unit (the last line
# printed is the run's id).
"$python_bin" -m collector.demo.record open "$store_url" "$protocol" "$tokens" >"$workdir/run.out"
run_id="$(tail -n 1 "$workdir/run.out")"
head -n -1 "$workdir/run.out"

echo "demo: mosquitto on 127.0.0.1:$port; running the line for ${duration} s"
echo "demo: watch the stream with: mosquitto_sub -p $port -t 'collector/#' -v"
# tee -i: Ctrl-C stops the line (which then says what it published), not the copy of its output.
# The collector's station token: the live page's deviation form sends it.
COLLECTOR_DEMO_TOKEN="$("$python_bin" -c 'import secrets; print(secrets.token_urlsafe(24))')" \
  "${collector[@]}" demo --broker "127.0.0.1:$port" --duration "$duration" --delivery store \
  --buffer "$workdir/buffer.db" | tee -i "$workdir/demo.out"

# Wait (at most 30 s) until the store received every reading and unit record the broker
# accepted from the line (the demo's last line counts them), then stop it.
"$python_bin" - "$workdir/demo.out" "$store_url/health" <<'PY' || true
import json, re, sys, time, urllib.request
found = re.search(r"demo: (\d+) readings and (\d+) unit records published", open(sys.argv[1]).read())
want = (int(found.group(1)), int(found.group(2))) if found else (0, 0)
deadline, got = time.monotonic() + 30, (-1, -1)
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(sys.argv[2], timeout=5) as answer:
            ingest = json.load(answer)["ingest"]
    except OSError as exc:  # 503 (broker gone) still has the body
        ingest = json.load(exc)["ingest"] if hasattr(exc, "read") else {}
    got = (ingest.get("readings_received", 0), ingest.get("units_received", 0))
    if got[0] >= want[0] and got[1] >= want[1]:
        break
    time.sleep(0.2)
else:
    print(f"demo: the store received {got[0]} readings and {got[1]} unit records of "
          f"{want[0]} and {want[1]} within 30 s")
PY
# The office: the line's deviation in the record, units allocated, the three signatures.
"$python_bin" -m collector.demo.record finish "$store_url" "$run_id" "$tokens"
kill -TERM "$store_pid" 2>/dev/null && wait "$store_pid" || true
store_pid=""
echo "demo: what the store holds (per collector: high-water mark and missing seqs):"
"${collector[@]}" store gaps --db "sqlite:///$store_db" || true

# The run's report: the figures judged against the approved protocol, with the record
# (approvals, the deviation, the allocation, the signatures, the audit trail).
"${collector[@]}" store runs report "$run_id" --config "$store_conf" --format html \
  --unit-base "$store_url" >"$report_file"
# A unit with a retest if there is one (its genealogy shows both attempts), else the latest.
serial="$( { "${collector[@]}" store units --db "sqlite:///$store_db" --verdict fail --limit 1
  "${collector[@]}" store units --db "sqlite:///$store_db" --limit 1; } \
  | "$python_bin" -c 'import json, sys; print(json.loads(sys.stdin.readline() or "{}").get("serial", "PILOT-0001"))')"
echo "demo: the pilot run's report (yields, Cpk, control charts, approvals, deviations,"
echo "demo: allocation, the signed go/no-go gate and the audit trail):"
echo "demo:   $report_file"
echo "demo: look a unit up (every operation, verdict, characteristic and reading):"
echo "demo:   $shown store unit $serial --db sqlite:///$store_db"
echo "demo: serve the report and the units again (the demo's broker is gone: the store"
echo "demo: retries it in the background and answers from its database; Ctrl-C stops it):"
echo "demo:   $shown store run --config $store_conf"
echo "demo:   then open $store_url/runs/$run_id, $store_url/report and $store_url/units/$serial"
