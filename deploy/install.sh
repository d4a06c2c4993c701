#!/usr/bin/env bash
# Install the collector as a systemd service on a Debian or Ubuntu line PC (docs/deployment.md):
#   - a system user `collector` (with the dialout group, for serial ports);
#   - a virtual environment in /opt/collector/venv with this package;
#   - a starter config /etc/collector/collector.yaml and /etc/collector/collector.env (mode
#     600), never overwritten once there;
#   - /etc/systemd/system/collector.service, enabled.
# Idempotent: a second run changes nothing (the package is reinstalled only when its source
# changed). Usage:
#   sudo bash deploy/install.sh                   # install or update
#   sudo bash deploy/install.sh --uninstall       # remove the service and the software,
#                                                 # keep the config and the buffer
#   sudo bash deploy/install.sh --uninstall --purge   # remove those too, and the user
# --prefix DIR installs under DIR instead of / (for tests and images: no user is created and
# systemctl is not called).
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
prefix=""
source_dir="$here"
uninstall=0
purge=0
python="${PYTHON:-python3}"
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$(realpath -m "$2")"; shift 2 ;;
    --source) source_dir="$(realpath "$2")"; shift 2 ;;
    --uninstall) uninstall=1; shift ;;
    --purge) purge=1; shift ;;
    --python) python="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "install: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
if [ "$purge" = 1 ] && [ "$uninstall" = 0 ]; then
  echo "install: --purge goes with --uninstall" >&2; exit 2
fi

opt="$prefix/opt/collector"
etc="$prefix/etc/collector"
state="$prefix/var/lib/collector"
unit="$prefix/etc/systemd/system/collector.service"
system=0  # touch users and systemd only for a real install on a machine running systemd
if [ -z "$prefix" ]; then
  if [ "$(id -u)" -ne 0 ]; then echo "install: run as root (sudo), or with --prefix" >&2; exit 1; fi
  system=1
fi
say() { echo "install: $*"; }
have_systemd() { [ "$system" = 1 ] && [ -d /run/systemd/system ]; }

if [ "$uninstall" = 1 ]; then
  if have_systemd && systemctl list-unit-files collector.service >/dev/null 2>&1; then
    systemctl disable --now collector.service >/dev/null 2>&1 || true
  fi
  if [ -e "$unit" ]; then rm -f "$unit"; say "removed $unit"; fi
  have_systemd && systemctl daemon-reload
  if [ -e "$opt" ]; then rm -rf "$opt"; say "removed $opt"; fi
  if [ "$purge" = 1 ]; then
    rm -rf "$etc" "$state"
    say "removed $etc and $state (config and buffer)"
    if [ "$system" = 1 ] && id collector >/dev/null 2>&1; then
      userdel collector; say "removed user collector"
    fi
  else
    say "kept $etc (config) and $state (buffer); --purge removes them"
  fi
  exit 0
fi

# 1. The user.
if [ "$system" = 1 ]; then
  if ! id collector >/dev/null 2>&1; then
    useradd --system --home-dir /var/lib/collector --no-create-home \
      --shell /usr/sbin/nologin --groups dialout collector
    say "created user collector"
  fi
else
  say "--prefix: no user created"
fi

# 2. The software: reinstalled only when the package's sources changed: a hash of what it is
# built from (pyproject.toml, README.md and every package of pyproject.toml's list: contract/,
# common/, collector/, drivers/, store/, quality/), the same from a git checkout or an unpacked
# release. Not of the whole folder: pip builds in it (build/, *.egg-info), and
# those outputs would make every run look like a change.
stamp="$(cd "$source_dir" && find pyproject.toml README.md contract common collector drivers store quality \
  -name __pycache__ -prune -o -type f ! -name '*.pyc' -print0 | LC_ALL=C sort -z \
  | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
if [ ! -x "$opt/venv/bin/python" ]; then
  mkdir -p "$opt"
  "$python" -m venv "$opt/venv"
  say "created $opt/venv"
fi
if [ "$(cat "$opt/source.sha256" 2>/dev/null || true)" != "$stamp" ]; then
  "$opt/venv/bin/pip" install -q --disable-pip-version-check "$source_dir"
  echo "$stamp" > "$opt/source.sha256"
  say "installed $("$opt/venv/bin/collector" --version) into $opt/venv"
fi
mkdir -p "$opt/docs"
for doc in "$source_dir"/docs/*.md; do
  cmp -s "$doc" "$opt/docs/$(basename "$doc")" || install -m 0644 "$doc" "$opt/docs/"
done

# 3. Config and secrets: created once, never overwritten.
install -d -m 0750 "$etc"
if [ ! -e "$etc/collector.yaml" ]; then
  install -m 0640 "$source_dir/config/minimal.yaml" "$etc/collector.yaml"
  say "wrote a starter config $etc/collector.yaml: edit it, then: collector check --config $etc/collector.yaml"
fi
if [ ! -e "$etc/collector.env" ]; then
  install -m 0600 /dev/null "$etc/collector.env"
  say "created $etc/collector.env (mode 600) for secrets: NAME=value lines"
fi
if [ "$system" = 1 ]; then chgrp -R collector "$etc"; fi

# 4. The unit.
install -d "$(dirname "$unit")"
if ! cmp -s "$source_dir/systemd/collector.service" "$unit"; then
  install -m 0644 "$source_dir/systemd/collector.service" "$unit"
  say "installed $unit"
  have_systemd && systemctl daemon-reload
fi
if have_systemd && ! systemctl is-enabled --quiet collector.service; then
  systemctl enable collector.service
  say "enabled collector.service; start it with: systemctl start collector"
fi
say "done"
