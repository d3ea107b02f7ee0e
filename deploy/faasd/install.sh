#!/usr/bin/env bash
# Adds the pipeline's services (../../docker-compose.yml) to faasd and raises faasd's timeouts.
#
# Run as root on the faasd host, from a checkout of this repository, after faasd is installed:
#   export MINIO_ROOT_USER=... MINIO_ROOT_PASSWORD=... POSTGRES_PASSWORD=... \
#          VTP_WEBHOOK_TOKEN=... VTP_S3_ACCESS_KEY=... VTP_S3_SECRET_KEY=...
#   sudo -E deploy/faasd/install.sh
#
# What it does, and why it is a script rather than "paste this":
#  1. renders docker-compose.yml's ${...} credentials (faasd reads its compose file without
#     the environment of any shell, so they must be literal values in the file);
#  2. appends those services to /var/lib/faasd/docker-compose.yaml between marker comments,
#     replacing the block a previous run added (so re-running updates, never duplicates);
#  3. sets the gateway's and queue-worker's timeouts from core-overrides.yaml in faasd's own
#     service definitions (only the listed keys; everything else is left as faasd wrote it);
#  4. installs the faasd-provider drop-in raising its proxy timeout, and restarts faasd.
# A copy of the compose file is kept as docker-compose.yaml.bak-<time> before any change.
#
# Environment: FAASD_DIR (default /var/lib/faasd), SYSTEMD_DIR (default /etc/systemd/system),
# VTP_FAASD_RESTART=0 to skip the systemctl calls (e.g. to review the file first).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
FAASD_DIR=${FAASD_DIR:-/var/lib/faasd}
SYSTEMD_DIR=${SYSTEMD_DIR:-/etc/systemd/system}
RESTART=${VTP_FAASD_RESTART:-1}

compose="$FAASD_DIR/docker-compose.yaml"
services_src="$repo/docker-compose.yml"
overrides="$here/core-overrides.yaml"
dropin_src="$here/faasd-provider-timeout.conf"
begin_marker="  # >>> vtp services (added by deploy/faasd/install.sh; re-run it to update) >>>"
end_marker="  # <<< vtp services <<<"

# The only variables rendered: the script inside minio-init uses $VARS of its own, which
# must reach the container untouched.
rendered_vars=(MINIO_ROOT_USER MINIO_ROOT_PASSWORD POSTGRES_PASSWORD VTP_WEBHOOK_TOKEN
               VTP_S3_ACCESS_KEY VTP_S3_SECRET_KEY)

die() {
    echo "install.sh: $*" >&2
    exit 1
}

# --- 0. check the inputs before touching anything ---------------------------------------------
missing=()
for name in "${rendered_vars[@]}"; do
    value=${!name:-}
    if [[ -z $value ]]; then
        missing+=("$name")
        continue
    fi
    # The value lands in a double-quoted YAML string that faasd then interpolates again.
    if [[ $value == *'"'* || $value == *'\'* || $value == *'$'* || $value == *$'\n'* ]]; then
        die "$name contains \", \\, \$ or a newline; use e.g. \$(openssl rand -hex 24)"
    fi
done
((${#missing[@]} == 0)) || die "empty or unset: ${missing[*]} (see docs/deploy.md)"
((${#MINIO_ROOT_USER} >= 3)) || die "MINIO_ROOT_USER must be at least 3 characters"
((${#MINIO_ROOT_PASSWORD} >= 8)) || die "MINIO_ROOT_PASSWORD must be at least 8 characters"
((${#VTP_S3_SECRET_KEY} >= 8)) || die "VTP_S3_SECRET_KEY must be at least 8 characters"
[[ $VTP_S3_ACCESS_KEY != "$MINIO_ROOT_USER" ]] \
    || die "VTP_S3_ACCESS_KEY must differ from MINIO_ROOT_USER (the functions get their own user)"
command -v envsubst >/dev/null || die "envsubst not found (apt-get install gettext-base)"
[[ -f $compose ]] || die "$compose not found: install faasd first"

# faasd's file has `services:` as its last top-level key; the block is appended under it.
last_top_key=$(grep -E '^[A-Za-z_][A-Za-z0-9_-]*:' "$compose" | tail -n 1 || true)
[[ $last_top_key == "services:"* ]] \
    || die "$compose: 'services:' is not the last top-level key; add the services by hand"

# --- 1. render our services ---------------------------------------------------------------------
shell_format=$(printf '${%s} ' "${rendered_vars[@]}")
rendered=$(envsubst "$shell_format" <"$services_src" | sed -n '/^services:[[:space:]]*$/,$p' | tail -n +2)
[[ -n $rendered ]] || die "no services found in $services_src"

# Refuse to shadow a service faasd (or the admin) already defines outside our block.
outside=$(awk -v b="$begin_marker" -v e="$end_marker" '$0 == b { skip = 1 } !skip { print } $0 == e { skip = 0 }' "$compose")
while read -r svc; do
    if grep -qxE "  ${svc}:[[:space:]]*" <<<"$outside"; then
        die "$compose already defines a service '$svc' outside the vtp block"
    fi
done < <(grep -oE '^  [a-z0-9][a-z0-9_-]*:' <<<"$rendered" | tr -d ' :')

# --- 2. new compose file: faasd's, without our old block, plus the new block --------------------
work=$(mktemp "$FAASD_DIR/.docker-compose.yaml.XXXXXX")
trap 'rm -f "$work"' EXIT
{
    printf '%s\n' "$outside"
    printf '\n%s\n%s\n%s\n' "$begin_marker" "$rendered" "$end_marker"
} >"$work"

# --- 3. faasd's own gateway / queue-worker settings ---------------------------------------------
# core-overrides.yaml lists `  <service>:` headers and `      - key=value` entries.
while read -r svc key value; do
    tmp=$(mktemp "$FAASD_DIR/.docker-compose.yaml.XXXXXX")
    if ! awk -v svc="$svc" -v key="$key" -v val="$value" '
        /^[^ #]/ { insvc = 0 }
        /^  [^ #][^:]*:[[:space:]]*$/ { insvc = ($0 ~ "^  " svc ":[[:space:]]*$") }
        insvc && $0 ~ ("^[[:space:]]*- " key "=") { sub(/=.*/, "=" val); found = 1 }
        { print }
        END { exit found ? 0 : 3 }
    ' "$work" >"$tmp"; then
        rm -f "$tmp"
        die "faasd's '$svc' service has no '- $key=' environment line; set $key=$value by hand"
    fi
    mv "$tmp" "$work"
done < <(awk '
    /^  [a-z0-9][a-z0-9_-]*:[[:space:]]*$/ { svc = $1; sub(/:$/, "", svc) }
    /^      - [a-z_]+=/ { line = $0; sub(/^      - /, "", line); i = index(line, "=");
                          print svc, substr(line, 1, i - 1), substr(line, i + 1) }
' "$overrides")

if cmp -s "$work" "$compose"; then
    echo "install.sh: $compose is already up to date"
else
    cp -p "$compose" "$compose.bak-$(date +%Y%m%d%H%M%S)"
    # It now holds credentials: readable by root (faasd) only.
    chmod 0600 "$work"
    mv "$work" "$compose"
    echo "install.sh: updated $compose"
fi

# --- 4. faasd-provider's proxy timeout, then restart ---------------------------------------------
install -D -m 0644 "$dropin_src" "$SYSTEMD_DIR/faasd-provider.service.d/vtp-timeouts.conf"

if [[ $RESTART == 1 ]]; then
    systemctl daemon-reload
    systemctl restart faasd-provider faasd
    echo "install.sh: faasd restarted; watch it with: journalctl -fu faasd"
else
    echo "install.sh: VTP_FAASD_RESTART=0: run 'systemctl daemon-reload && systemctl restart faasd-provider faasd'"
fi
