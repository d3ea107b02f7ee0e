#!/usr/bin/env bash
# Creates, or updates, the OpenFaaS secrets the functions declare in stack.yml, from the
# environment. Works against faasd and Kubernetes alike (faas-cli talks to the gateway):
#
#   export OPENFAAS_URL=http://<gateway>:8080      # and `faas-cli login` first
#   export VTP_S3_ACCESS_KEY=... VTP_S3_SECRET_KEY=... VTP_POSTGRES_DSN=... \
#          VTP_WEBHOOK_TOKEN=... VTP_CALLBACK_SECRET=... [VTP_READ_TOKEN=...] \
#          [VTP_LINK_SECRET=...]
#   deploy/secrets.sh
#
# Every value in SECRETS is required: OpenFaaS refuses to deploy a function whose secret is
# missing, and an empty secret would only fail later, at the first upload. Nothing is created
# unless all of them are set. OPTIONAL ones are created too, since functions declare them, but
# blank when unset (one space, with --trim=false: faas-cli refuses an empty value), which the
# functions read as "not set". The function reads secret `vtp-<field>` as its setting <field>
# (vtp/settings.py), so the names below are not free to change.
#
# Values go to faas-cli through a private temporary file (--from-file), never on its command
# line (--from-literal), where any user on the machine could read them in the process list.
#
# Environment: FAAS_CLI (default faas-cli), VTP_FN_NAMESPACE (function namespace, if not the
# default openfaas-fn), plus whatever faas-cli itself reads (OPENFAAS_URL).
set -euo pipefail

FAAS_CLI=${FAAS_CLI:-faas-cli}
ns_args=()
if [[ -n ${VTP_FN_NAMESPACE:-} ]]; then
    ns_args=(--namespace "$VTP_FN_NAMESPACE")
fi

# secret name            environment variable   what it is
SECRETS=(
    "vtp-s3-access-key   VTP_S3_ACCESS_KEY      MinIO access key of the functions' user"
    "vtp-s3-secret-key   VTP_S3_SECRET_KEY      MinIO secret key of the functions' user"
    "vtp-postgres-dsn    VTP_POSTGRES_DSN       postgresql://vtp:<password>@postgres:5432/vtp"
    "vtp-webhook-token   VTP_WEBHOOK_TOKEN      bearer token MinIO's webhook target sends"
    "vtp-callback-secret VTP_CALLBACK_SECRET    HMAC key signing job callbacks"
)
OPTIONAL=(
    "vtp-read-token      VTP_READ_TOKEN         reading jobs needs it (status, ws-relay); unset: open"
    "vtp-link-secret     VTP_LINK_SECRET        signs private jobs' play URLs; unset: they have none"
)

missing=()
for entry in "${SECRETS[@]}"; do
    read -r name var _ <<<"$entry"
    value=${!var:-}
    # faas-cli strips surrounding whitespace; a value made of it is as good as empty.
    if [[ -z ${value//[[:space:]]/} ]]; then
        missing+=("$var (for $name)")
    fi
done
if ((${#missing[@]} > 0)); then
    echo "secrets.sh: refusing to continue; empty or unset:" >&2
    printf '  %s\n' "${missing[@]}" >&2
    echo "Generate tokens with e.g. 'openssl rand -hex 32'; see docs/deploy.md." >&2
    exit 2
fi

command -v "$FAAS_CLI" >/dev/null || {
    echo "secrets.sh: $FAAS_CLI not found (https://github.com/openfaas/faas-cli)" >&2
    exit 1
}

tmpdir=$(mktemp -d)
trap 'rm -rf "$tmpdir"' EXIT
chmod 700 "$tmpdir"

# Names that exist already get `secret update` (create would fail, or be ignored, on them).
existing=$("$FAAS_CLI" secret list "${ns_args[@]}" | awk 'NR > 1 { print $1 }') || {
    echo "secrets.sh: 'faas-cli secret list' failed: check OPENFAAS_URL and 'faas-cli login'" >&2
    exit 1
}

for entry in "${SECRETS[@]}" "${OPTIONAL[@]}"; do
    read -r name var _ <<<"$entry"
    file="$tmpdir/$name"
    value=${!var:-}
    trim=()
    if [[ -z ${value//[[:space:]]/} ]]; then
        value=" " trim=(--trim=false)
        echo "secrets.sh: $var is not set: $name is blank (not set) for the functions" >&2
    fi
    (umask 077 && printf '%s' "$value" >"$file")
    if grep -qxF "$name" <<<"$existing"; then
        "$FAAS_CLI" secret update "$name" --from-file "$file" "${trim[@]}" "${ns_args[@]}"
    else
        "$FAAS_CLI" secret create "$name" --from-file "$file" "${trim[@]}" "${ns_args[@]}"
    fi
    rm -f "$file"
done

total=$((${#SECRETS[@]} + ${#OPTIONAL[@]}))
echo "secrets.sh: $total secrets in place; functions pick up changed values on their next deploy or restart."
