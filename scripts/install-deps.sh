#!/usr/bin/env bash
# Installs what trustd's tests need on Debian bookworm: the real containerd, runc,
# docker-registry, notary (CLI and notary-server), skopeo, openssl, systemd-analyze (the unit
# file tests; systemd need not run) and a static busybox (the userland of the images the pod
# tests run), then trustd itself in editable mode with its dev extra. Safe to run again: it
# installs only what is missing.
#
# Usage: scripts/install-deps.sh   (as root, or with sudo available)
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUIRED_COMMANDS=(containerd ctr containerd-shim-runc-v2 runc docker-registry notary
    notary-server skopeo openssl systemd-analyze)
# Files that are no command on PATH: busybox-static's program, copied into test images.
REQUIRED_FILES=(/bin/busybox)
DEBIAN_PACKAGES=(containerd runc docker-registry notary skopeo openssl ca-certificates systemd
    busybox-static)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo > /dev/null; then
        sudo "$@"
    else
        echo "install-deps: need root (or sudo) to run: $*" >&2
        exit 1
    fi
}

missing=()
for command_name in "${REQUIRED_COMMANDS[@]}"; do
    command -v "$command_name" > /dev/null || missing+=("$command_name")
done
for file in "${REQUIRED_FILES[@]}"; do
    [ -x "$file" ] || missing+=("$file")
done

if [ "${#missing[@]}" -gt 0 ]; then
    echo "install-deps: missing ${missing[*]}; installing Debian packages: ${DEBIAN_PACKAGES[*]}"
    as_root apt-get update
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${DEBIAN_PACKAGES[@]}"
    for command_name in "${REQUIRED_COMMANDS[@]}"; do
        if ! command -v "$command_name" > /dev/null; then
            echo "install-deps: $command_name is still missing after apt-get install" >&2
            exit 1
        fi
    done
    for file in "${REQUIRED_FILES[@]}"; do
        if [ ! -x "$file" ]; then
            echo "install-deps: $file is still missing after apt-get install" >&2
            exit 1
        fi
    done
else
    echo "install-deps: all programs present (${REQUIRED_COMMANDS[*]} ${REQUIRED_FILES[*]})"
fi

echo "install-deps: installing trustd with its dev extra from $REPO_ROOT"
cd "$REPO_ROOT"
python3 -m pip install -q -e '.[dev]'
echo "install-deps: done"
