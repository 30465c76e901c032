#!/usr/bin/env bash
# Runs trustd on this machine in front of a local demo stack (Debian's docker-registry,
# notary-server and containerd), installing whatever is missing first.
# ./demo.sh          walk through signed / unsigned / tampered pulls, then keep serving
# ./demo.sh --exit   walk through and stop
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
exec python3 -m demo "$@"
