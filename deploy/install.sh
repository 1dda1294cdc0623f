#!/usr/bin/env bash
# Installs profilerd and profctl (as built by `make build`), the systemd unit, the example
# config and the README. `make install` calls it.
#
#   DESTDIR  stage everything under this directory (packaging, tests). The running system is
#            then left alone: no user or group is created and systemd is not reloaded.
#   PREFIX   where the binaries and docs go (default /usr/local); the unit follows it.
#   BIN_DIR  where the built binaries are (default: the cargo target directory's release/).
#
# Never overwrites /etc/profiler/profilerd.toml. Does not enable or start the service.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/.." && pwd)"
DESTDIR="${DESTDIR:-}"
PREFIX="${PREFIX:-/usr/local}"
BIN_DIR="${BIN_DIR:-${CARGO_TARGET_DIR:-$REPO/target}/release}"

say() { echo "install: $*"; }
die() {
  echo "install: $*" >&2
  exit 1
}

for bin in profilerd profctl; do
  [ -x "$BIN_DIR/$bin" ] || die "$BIN_DIR/$bin is missing; build it first (make build)"
done
if [ -z "$DESTDIR" ] && [ "$(id -u)" != 0 ]; then
  die "installing into the system needs root (sudo make install), or stage it with DESTDIR=DIR"
fi

bin="$DESTDIR$PREFIX/bin"
unit="$DESTDIR/etc/systemd/system/profilerd.service"
config="$DESTDIR/etc/profiler/profilerd.toml"
doc="$DESTDIR$PREFIX/share/doc/profiler"

install -d -m 0755 "$bin" "$(dirname "$unit")" "$(dirname "$config")" "$doc"
install -m 0755 "$BIN_DIR/profilerd" "$BIN_DIR/profctl" "$bin/"
say "installed $bin/profilerd and $bin/profctl"

# The unit names the Debian package's /usr; PREFIX moves ExecStart and Documentation.
tmp="$(mktemp)"
trap 'rm -f "$tmp"' EXIT
sed -e "s|=/usr/bin/profilerd|=${PREFIX%/}/bin/profilerd|" \
  -e "s|///usr/share/doc/profiler/|//${PREFIX%/}/share/doc/profiler/|" \
  "$REPO/deploy/systemd/profilerd.service" >"$tmp"
install -m 0644 "$tmp" "$unit"
say "installed $unit"

if [ -e "$config" ]; then
  say "kept the existing $config (the new example is $doc/profilerd.toml)"
else
  install -m 0644 "$REPO/deploy/profilerd.toml" "$config"
  say "installed $config (every key commented out: the defaults)"
fi
install -m 0644 "$REPO/deploy/profilerd.toml" "$REPO/README.md" "$doc/"

if [ -n "$DESTDIR" ]; then
  say "DESTDIR is set: not creating the profiler user and group, not reloading systemd"
  exit 0
fi

# The daemon runs as the system user `profiler`; the group `profiler` may use its socket.
if ! getent group profiler >/dev/null; then
  groupadd --system profiler
  say "created the group profiler"
fi
if ! getent passwd profiler >/dev/null; then
  useradd --system --gid profiler --home-dir /var/lib/profiler --no-create-home \
    --shell /usr/sbin/nologin --comment "profilerd system-wide profiler" profiler
  say "created the system user profiler"
fi
# Booted with systemd (the test sd_booted(3) uses).
if [ -d /run/systemd/system ]; then
  systemctl daemon-reload
  say "reloaded systemd"
fi
cat <<NEXT
install: next steps:
  systemctl enable --now profilerd       # start now and at boot
  usermod -aG profiler USER              # let USER run profctl (takes effect at next login)
  profctl status
NEXT
