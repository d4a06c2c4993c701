#!/usr/bin/env bash
# Install what the tests need on this machine, then run a tier of them.
#
#   bash tests/run.sh            the default tier: every real component (mosquitto, PostgreSQL,
#                                Chromium, asyncua, pymodbus), about 4½ minutes on 2 cores
#   bash tests/run.sh slow       the slow tier: package installs, the demo script, bench smokes,
#                                soaks (about 9 minutes more)
#   bash tests/run.sh all        both, one after the other (what CI runs)
#   bash tests/run.sh -- ARGS    pytest with ARGS, after the same set-up (e.g. -- tests/test_buffer.py)
#
# Set-up, each step only when missing: Debian's mosquitto, postgresql (the store's tests start
# their own cluster with its initdb), chromium (the report's and the live page's browser tests)
# and systemd (systemd-analyze checks the unit file); then .venv with the package and its test
# extras. docs/development.md says what each tier holds and why.
set -euo pipefail
cd "$(dirname "$0")/.."

tier="${1:-default}"
[ $# -gt 0 ] && shift

missing=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing+=(mosquitto)
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v systemd-analyze >/dev/null || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  echo "tests: installing ${missing[*]} (Debian packages)"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# Quiet when nothing changed; pip says what it installs otherwise.
.venv/bin/pip install -q -e '.[test]'

# Four workers on a 2-core machine: most tests wait on a broker, a database or a timeout, not
# on the CPU (two workers kept about one core busy). The fault tests share one xdist group (one
# worker, one after the other) so that two broker-killing tests never starve each other.
parallel=(-n "${TEST_WORKERS:-4}" --dist loadgroup)
case "$tier" in
  default) exec .venv/bin/python -m pytest "${parallel[@]}" "$@" ;;
  slow) exec .venv/bin/python -m pytest -m slow "$@" ;;
  all)
    .venv/bin/python -m pytest "${parallel[@]}" "$@"
    exec .venv/bin/python -m pytest -m slow "$@"
    ;;
  --) exec .venv/bin/python -m pytest "$@" ;;
  *)
    echo "usage: bash tests/run.sh [default|slow|all|-- PYTEST_ARGS]" >&2
    exit 2
    ;;
esac
