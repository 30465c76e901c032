#!/bin/sh
# Builds kubelet for the tests from the pinned module in this directory into the peer cache
# (outside the repository), through the Go module proxy.
#
#   <cache>/bin/kubelet            the binary
#   <cache>/stamps/kubelet.txt     what the binary was built from (module, ldflags, hash)
#   <cache>/reasons/kubelet.txt    why the last build failed (removed on success)
#   <cache>/logs/kubelet.log       the last build's output
#
# The cache is $TRUSTD_PEER_CACHE, else /var/cache/trustd-test-peers. A build whose stamp matches
# is not repeated. The build is long and this machine is shared: it runs niced with one job.
set -u

here=$(cd "$(dirname "$0")" && pwd)
cache=${TRUSTD_PEER_CACHE:-/var/cache/trustd-test-peers}
bin="$cache/bin/kubelet"
stamp_file="$cache/stamps/kubelet.txt"
reason_file="$cache/reasons/kubelet.txt"
log_file="$cache/logs/kubelet.log"

mkdir -p "$cache/bin" "$cache/stamps" "$cache/reasons" "$cache/logs" "$cache/locks" || exit 1

# One build at a time (two test runs may ask at once); the second then finds the stamp.
exec 9>"$cache/locks/kubelet.lock"
flock 9 || exit 1

fail() {
    {
        echo "kubelet could not be built from $here: $1"
        if [ -f "$log_file" ]; then
            echo "last lines of $log_file:"
            tail -n 20 "$log_file"
        fi
    } >"$reason_file"
    cat "$reason_file" >&2
    exit 1
}

if ! command -v go >/dev/null 2>&1; then
    rm -f "$log_file"
    fail "no go command on PATH"
fi

# A plain go build leaves kubelet's version at v0.0.0-master; Kubernetes' own build stamps it
# through these variables, so --version (and the docs quoting it) name the release.
version=$(sed -n 's/^[[:space:]]*\(require \)\{0,1\}k8s\.io\/kubernetes \(v[0-9.]*\).*/\2/p' "$here/go.mod")
if [ -z "$version" ]; then
    rm -f "$log_file"
    fail "go.mod requires no k8s.io/kubernetes vX.Y.Z"
fi
minor=$(echo "$version" | cut -d. -f2)
pkg=k8s.io/component-base/version
ldflags="-X $pkg.gitVersion=$version -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
ldflags="$ldflags -X $pkg.gitTreeState=clean"

stamp="module k8s.io/kubernetes@$version
package k8s.io/kubernetes/cmd/kubelet
build module sha256 $(cat "$here/go.mod" "$here/go.sum" "$here/build.sh" | sha256sum | cut -d' ' -f1)
ldflags $ldflags
cgo 0"
if [ -x "$bin" ] && [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$stamp" ]; then
    exit 0
fi

# Build beside the final path and rename, so a half-written binary is never run.
tmp_bin="$bin.tmp.$$"
if ! (
    cd "$here" &&
        CGO_ENABLED=0 GOFLAGS=-mod=readonly nice -n 19 \
            go build -p 1 -trimpath -ldflags "$ldflags" -o "$tmp_bin" \
            k8s.io/kubernetes/cmd/kubelet
) >"$log_file" 2>&1; then
    rm -f "$tmp_bin"
    fail "go build k8s.io/kubernetes/cmd/kubelet failed"
fi
said=$("$tmp_bin" --version 2>>"$log_file")
if [ "$said" != "Kubernetes $version" ]; then
    rm -f "$tmp_bin"
    fail "the built kubelet's --version says '$said', not 'Kubernetes $version'"
fi
mv -f "$tmp_bin" "$bin" || fail "could not move the binary into $cache/bin"
echo "$stamp" >"$stamp_file"
rm -f "$reason_file"
