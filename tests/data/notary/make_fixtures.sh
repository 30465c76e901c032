#!/usr/bin/env bash
# Regenerates the Notary fixtures in this directory with the REAL notary-server and notary CLI
# (Debian bookworm package "notary" 0.7.0). See README.md for what each file is.
#
# Usage: tests/data/notary/make_fixtures.sh   (as root or any user; needs openssl, curl)
set -euo pipefail

OUT="$(cd "$(dirname "$0")" && pwd)"
WORK="$(mktemp -d)"
PORT="${NOTARY_PORT:-4443}"
GUN="127.0.0.1:5000/library/hello"
SERVER_PID=""

cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# --- a throwaway TLS CA and server certificate for notary-server ---------------------------------
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/ca.key"
openssl req -x509 -new -key "$WORK/ca.key" -subj "/CN=fixture CA" -days 30 -out "$WORK/ca.crt"
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/server.key"
openssl req -new -key "$WORK/server.key" -subj "/CN=localhost" -out "$WORK/server.csr"
printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' > "$WORK/san.ext"
openssl x509 -req -in "$WORK/server.csr" -CA "$WORK/ca.crt" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 30 -extfile "$WORK/san.ext" -out "$WORK/server.crt"

cat > "$WORK/server.json" <<EOF
{
  "server": {"http_addr": "127.0.0.1:$PORT",
             "tls_key_file": "$WORK/server.key", "tls_cert_file": "$WORK/server.crt"},
  "trust_service": {"type": "local", "key_algorithm": "ecdsa"},
  "storage": {"backend": "memory"},
  "logging": {"level": "warn"}
}
EOF
notary-server -config "$WORK/server.json" > "$WORK/server.log" 2>&1 &
SERVER_PID=$!
for _ in $(seq 50); do
    curl -fsS --cacert "$WORK/ca.crt" "https://127.0.0.1:$PORT/_notary_server/health" \
        > /dev/null 2>&1 && break
    sleep 0.1
done

# --- publish a repository the way docker does ----------------------------------------------------
export NOTARY_ROOT_PASSPHRASE="fixture-root-pass"
export NOTARY_TARGETS_PASSPHRASE="fixture-targets-pass"
export NOTARY_SNAPSHOT_PASSPHRASE="fixture-snapshot-pass"
export NOTARY_DELEGATION_PASSPHRASE="fixture-delegation-pass"
TRUST="$WORK/trust"
N=(notary -s "https://127.0.0.1:$PORT" -d "$TRUST" --tlscacert "$WORK/ca.crt")

printf '{"schemaVersion":2,"fixture":"v1"}' > "$WORK/manifest-v1.json"
printf '{"schemaVersion":2,"fixture":"v2"}' > "$WORK/manifest-v2.json"
printf '{"schemaVersion":2,"fixture":"release"}' > "$WORK/manifest-release.json"

"${N[@]}" init "$GUN"
"${N[@]}" key rotate "$GUN" snapshot -r
"${N[@]}" add "$GUN" v1 "$WORK/manifest-v1.json"
"${N[@]}" add "$GUN" latest "$WORK/manifest-v2.json"
# A target name with characters JSON encoders disagree on: <, >, &, U+2028, non-ASCII. The
# signatures over it tell which canonical form notary really signs. (A control character such as a
# tab makes notary 0.7.0 fail its own publish: its canonical encoder writes it raw.)
"${N[@]}" add "$GUN" $'odd<&>\u2028caf\u00e9' "$WORK/manifest-v1.json"
"${N[@]}" publish "$GUN"

# A delegation key and certificate, as `docker trust signer add` would make them.
openssl ecparam -name prime256v1 -genkey -noout -out "$WORK/releases.ec"
openssl pkcs8 -topk8 -nocrypt -in "$WORK/releases.ec" -out "$WORK/releases.key"
openssl req -x509 -new -key "$WORK/releases.key" -subj "/CN=releases" -days 365 \
    -out "$WORK/releases.crt"
"${N[@]}" key import "$WORK/releases.key" -r targets/releases -g "$GUN"
"${N[@]}" delegation add "$GUN" targets/releases "$WORK/releases.crt" --all-paths
"${N[@]}" publish "$GUN"
"${N[@]}" add "$GUN" release -r targets/releases "$WORK/manifest-release.json"
"${N[@]}" publish "$GUN"

# --- save what the server serves and what the CLI knows ------------------------------------------
mkdir -p "$OUT/targets"
for role in root timestamp snapshot targets targets/releases; do
    curl -fsS --cacert "$WORK/ca.crt" \
        "https://127.0.0.1:$PORT/v2/$GUN/_trust/tuf/$role.json" -o "$OUT/$role.json"
done
"${N[@]}" key list > "$OUT/key_list.txt"
"${N[@]}" delegation list "$GUN" > "$OUT/delegation_list.txt"
"${N[@]}" list "$GUN" > "$OUT/target_list.txt"
"${N[@]}" lookup "$GUN" latest > "$OUT/lookup_latest.txt"
cp "$WORK/releases.crt" "$OUT/releases.crt"
cp "$WORK/manifest-v1.json" "$WORK/manifest-v2.json" "$WORK/manifest-release.json" "$OUT/"
# Private key FILE NAMES only (the names are key IDs); the keys themselves are not kept.
(cd "$TRUST/private" && ls -1 ./*.key | sed 's|^\./||' | sort) > "$OUT/private_key_files.txt"
# The encrypted root and targets keys, with their PEM headers (role, gun), for re-signing tests.
mkdir -p "$OUT/private"
for f in "$TRUST"/private/*.key; do
    if grep -q '^role: \(root\|targets\)$' "$f"; then cp "$f" "$OUT/private/"; fi
done
echo "fixtures written to $OUT"
