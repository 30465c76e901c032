#!/usr/bin/env bash
# Runs the whole test suite against the real parts (containerd, docker-registry, notary-server),
# installing whatever is missing first. Extra arguments go to pytest, e.g. ./test.sh -k attacks
set -euo pipefail
cd "$(dirname "$0")"

scripts/install-deps.sh

echo "== lint"
python3 -m ruff check .
python3 -m ruff format --check .

echo "== types"
python3 -m mypy

echo "== tests"
# pytest exits 5 when it collected nothing; that is a failure here, not a pass.
python3 -m pytest "$@"
