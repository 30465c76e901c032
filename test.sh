#!/usr/bin/env bash
# Runs the whole test suite against the real parts (containerd, docker-registry, notary-server),
# installing whatever is missing first. Extra arguments go to pytest, e.g. ./test.sh -k attacks
set -euo pipefail
cd "$(dirname "$0")"

scripts/install-deps.sh

echo "== test peers"
# Go programs the tests use as independent peers (notation, cosign, crane ...), built from pinned
# module versions into a cache outside the repository. One that cannot be built is recorded
# with the reason, and the tests needing it skip with that reason: never a failure here.
python3 -m tests.peers.build || echo "test peers: the build step itself failed; tests needing a peer will skip"

echo "== lint"
python3 -m ruff check .
python3 -m ruff format --check .

echo "== types"
python3 -m mypy

echo "== tests"
# pytest exits 5 when it collected nothing; that is a failure here, not a pass.
python3 -m pytest "$@"
