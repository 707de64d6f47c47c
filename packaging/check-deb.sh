#!/usr/bin/env bash
# Builds the Debian package with cargo-deb, installs it on this machine and
# checks what a user would rely on: files in place, the config a conffile
# readable only by root and the service user, the binary runs, the systemd
# unit verifies. Then removes the package again (--keep leaves it installed).
#
# Needs root and Debian/Ubuntu. Installs cargo-deb from crates.io if missing.
# Not part of .ci/run: the release build alone takes several minutes.
#
#   bash packaging/check-deb.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."

keep=no
[[ "${1:-}" == "--keep" ]] && keep=yes

step() { printf '\n==> %s\n' "$*"; }
fail() { printf 'FAIL: %s\n' "$*" >&2; exit 1; }

[[ "$(id -u)" == 0 ]] || fail "run as root (dpkg -i)"

if ! command -v cargo-deb >/dev/null 2>&1; then
    step "installing cargo-deb"
    cargo install cargo-deb --locked
fi

step "cargo deb"
deb=$(cargo deb 2>&1 | tee /dev/stderr | grep -E '\.deb$' | tail -n 1)
[[ -f "$deb" ]] || fail "cargo deb printed no .deb path"
echo "package: $deb"

step "package metadata"
dpkg-deb --info "$deb"
dpkg-deb --contents "$deb"

step "dpkg -i"
dpkg -i "$deb"

step "files"
for f in /usr/bin/pgsidecar /etc/pgsidecar/pgsidecar.toml \
    /usr/share/doc/pgsidecar/README.md \
    /usr/share/doc/pgsidecar/docs/architecture.md \
    /usr/share/doc/pgsidecar/docs/deployment.md; do
    [[ -f "$f" ]] || fail "$f is missing"
    echo "ok  $f"
done
unit=$(dpkg -L pgsidecar | grep -E '/systemd/system/pgsidecar\.service$' | head -n 1)
[[ -n "$unit" && -f "$unit" ]] || fail "the systemd unit is not installed"
echo "ok  $unit"
dpkg-query -W -f='${Conffiles}\n' pgsidecar | grep -q '/etc/pgsidecar/pgsidecar.toml' \
    || fail "/etc/pgsidecar/pgsidecar.toml is not a conffile"
echo "ok  /etc/pgsidecar/pgsidecar.toml is a conffile"
getent passwd pgsidecar >/dev/null || fail "user pgsidecar was not created"
echo "ok  system user: $(getent passwd pgsidecar)"
owner=$(stat -c '%U:%G %a' /etc/pgsidecar/pgsidecar.toml)
[[ "$owner" == "root:pgsidecar 640" ]] || fail "config is $owner, want root:pgsidecar 640"
echo "ok  config is $owner"

step "the binary"
/usr/bin/pgsidecar --version
# As the service user, with the example config's password variable set.
runuser -u pgsidecar -- env PGSIDECAR_APP_PASSWORD=example \
    /usr/bin/pgsidecar check --config /etc/pgsidecar/pgsidecar.toml >/dev/null \
    || fail "pgsidecar check of the installed config failed as user pgsidecar"
echo "ok  pgsidecar check passes as user pgsidecar"

step "systemd unit"
if command -v systemd-analyze >/dev/null 2>&1; then
    systemd-analyze verify "$unit"
    echo "ok  systemd-analyze verify"
    systemd-analyze security --offline=true "$unit" | tail -n 1 || true
else
    echo "SKIPPED: systemd-analyze is not installed (apt-get install systemd)"
fi

if [[ "$keep" == no ]]; then
    step "dpkg --purge"
    dpkg --purge pgsidecar
fi
printf '\ncheck-deb: all checks passed\n'
