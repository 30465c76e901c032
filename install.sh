#!/usr/bin/env bash
# Installs trustd from this source tree: its own virtual environment, the config (never
# overwritten), the systemd unit, the kubelet drop-in and config snippet, state and log
# directories, and trustd/trustctl on the PATH. Run ./install.sh -h for the options.
set -euo pipefail
umask 022

readonly PROGRAM=${0##*/}
SOURCE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly SOURCE
readonly PYTHON=${PYTHON:-python3}
readonly VENV_IN_UNIT=/opt/trustd/venv
readonly CONFIG_IN_UNIT=/etc/trustd/trustd.toml
readonly DEFAULT_VERIFIER_BIN_DIR=/opt/containerd/image-verifier/bin

usage() {
    cat <<EOF
Usage: $PROGRAM [--prefix DIR] [--no-systemctl] [--containerd-verifier [BIN_DIR]]
       [--uninstall [--purge]]

Installs trustd into DIR/opt/trustd/venv (a Python virtual environment) with:
  DIR/etc/trustd/trustd.toml              config (an existing one is kept; the new one
                                          is written next to it as trustd.toml.new)
  DIR/etc/systemd/system/trustd.service   the unit
  DIR/etc/systemd/system/kubelet.service.d/20-trustd.conf
                                          orders kubelet after trustd
  DIR/usr/share/trustd/                   kubelet config snippet, operations and CRI guides
  DIR/var/lib/trustd, DIR/var/log/trustd  state and audit log directories
  DIR/usr/local/bin/trustd, trustctl      links into the virtual environment

Options:
  --prefix DIR     install under DIR (default /). The virtual environment cannot be moved,
                   so the unit's ExecStart names DIR/opt/trustd/venv.
  --containerd-verifier [BIN_DIR]
                   also install trustd as containerd 2.x's image verifier: the file
                   DIR/BIN_DIR/trustd (BIN_DIR default $DEFAULT_VERIFIER_BIN_DIR), which
                   judges every pull containerd makes through its transfer service, with
                   $CONFIG_IN_UNIT; prints the containerd config stanza that enables
                   it. With --uninstall: remove it from BIN_DIR.
  --no-systemctl   never run systemctl. This is the default unless DIR is / and systemd is
                   running; then the installer runs 'systemctl daemon-reload' (and, with
                   --uninstall, 'systemctl disable --now trustd').
  --uninstall      remove what the installer installed (also the containerd verifier in
                   $DEFAULT_VERIFIER_BIN_DIR); the config, the trust data in
                   /var/lib/trustd and the audit logs stay.
  --purge          with --uninstall: remove the config, trust data and logs too.
  -h, --help       show this help.

Environment: PYTHON (default python3, 3.11 or later) creates the virtual environment.
EOF
}

say() { printf '%s: %s\n' "$PROGRAM" "$*"; }
die() {
    printf '%s: error: %s\n' "$PROGRAM" "$*" >&2
    exit 1
}

prefix=/
uninstall=false
purge=false
systemctl_allowed=true
verifier_bin_dir=""
while (($# > 0)); do
    case $1 in
    --prefix)
        (($# >= 2)) || die "--prefix needs a directory"
        prefix=$2
        shift 2
        ;;
    --prefix=*)
        prefix=${1#--prefix=}
        shift
        ;;
    --containerd-verifier)
        verifier_bin_dir=$DEFAULT_VERIFIER_BIN_DIR
        # The directory is optional: the next argument is it unless it is another option.
        if (($# >= 2)) && [[ $2 != -* ]]; then
            verifier_bin_dir=$2
            shift
        fi
        shift
        ;;
    --containerd-verifier=*)
        verifier_bin_dir=${1#--containerd-verifier=}
        [[ -n $verifier_bin_dir ]] || die "--containerd-verifier= needs a directory"
        shift
        ;;
    --uninstall) uninstall=true && shift ;;
    --purge) purge=true && shift ;;
    --no-systemctl) systemctl_allowed=false && shift ;;
    -h | --help) usage && exit 0 ;;
    *) usage >&2 && die "unknown argument: $1" ;;
    esac
done
[[ -n $prefix ]] || die "--prefix must not be empty"
if $purge && ! $uninstall; then
    die "--purge only goes with --uninstall"
fi

# ROOT is the prefix without a trailing slash: "" for /, so "$ROOT/etc" is always right.
[[ $prefix == /* ]] || prefix=$PWD/$prefix
ROOT=${prefix%/}
while [[ $ROOT == */ ]]; do ROOT=${ROOT%/}; done
readonly ROOT

readonly VENV=$ROOT$VENV_IN_UNIT
readonly CONFIG_DIR=$ROOT/etc/trustd
readonly CONFIG=$CONFIG_DIR/trustd.toml
readonly UNIT_DIR=$ROOT/etc/systemd/system
readonly UNIT=$UNIT_DIR/trustd.service
readonly KUBELET_DROP_IN_DIR=$UNIT_DIR/kubelet.service.d
readonly KUBELET_DROP_IN=$KUBELET_DROP_IN_DIR/20-trustd.conf
readonly SHARE=$ROOT/usr/share/trustd
readonly BIN=$ROOT/usr/local/bin
readonly STATE_DIR=$ROOT/var/lib/trustd
readonly LOG_DIR=$ROOT/var/log/trustd
readonly COMMANDS=(trustd trustctl)
# containerd runs every file in its verifiers' bin_dir and names it in its messages
# ("verifier trustd rejected image"); the marker tells our file from anyone else's.
readonly VERIFIER_NAME=trustd
readonly VERIFIER_MARKER="Installed by trustd's install.sh"
VERIFIER=""
if [[ -n $verifier_bin_dir ]]; then
    [[ $verifier_bin_dir == /* ]] || die "--containerd-verifier needs an absolute directory"
    VERIFIER=$ROOT${verifier_bin_dir%/}/$VERIFIER_NAME
fi
readonly VERIFIER

# systemctl only acts on the running system: never for a staged tree or without systemd.
use_systemctl=false
if $systemctl_allowed && [[ -z $ROOT ]] && [[ -d /run/systemd/system ]] &&
    command -v systemctl >/dev/null; then
    use_systemctl=true
fi
readonly use_systemctl

if [[ -z $ROOT ]] && ((EUID != 0)); then
    die "installing to / needs root (or use --prefix DIR)"
fi

WORK=$(mktemp -d)
readonly WORK
trap 'rm -rf "$WORK"' EXIT

# Copies SOURCE to TARGET with MODE, saying whether that changed anything.
put_file() {
    local source=$1 target=$2 mode=$3
    mkdir -p "$(dirname "$target")"
    if [[ -f $target ]] && cmp -s "$source" "$target"; then
        chmod "$mode" "$target"
        say "unchanged: $target"
        return
    fi
    local verb=installed
    [[ -e $target ]] && verb=updated
    install -m "$mode" "$source" "$target.tmp.$$"
    mv -f "$target.tmp.$$" "$target"
    say "$verb: $target"
}

install_venv() {
    "$PYTHON" - <<'EOF' || die "$PYTHON is not Python 3.11 or later"
import sys
sys.exit(0 if sys.version_info >= (3, 11) else 1)
EOF
    if [[ -x $VENV/bin/python ]] && "$VENV/bin/python" -c '' 2>/dev/null; then
        say "reusing the virtual environment $VENV"
    else
        say "creating the virtual environment $VENV"
        mkdir -p "$(dirname "$VENV")"
        "$PYTHON" -m venv --clear "$VENV"
    fi
    # Build from a copy: a build in the source tree would leave build/ and *.egg-info behind.
    local build=$WORK/source
    mkdir -p "$build"
    cp -R "$SOURCE/pyproject.toml" "$SOURCE/README.md" "$SOURCE/trustd" "$SOURCE/cri_shim" "$build/"
    find "$build" -name __pycache__ -prune -exec rm -rf {} +
    say "installing trustd and its dependencies with pip"
    "$VENV/bin/python" -m pip install --quiet --no-input --disable-pip-version-check "$build" ||
        die "pip could not install trustd into $VENV"
    for command in "${COMMANDS[@]}"; do
        "$VENV/bin/$command" --help >/dev/null || die "$VENV/bin/$command does not run"
    done
}

install_config() {
    local shipped=$SOURCE/examples/trustd.toml
    if [[ ! -f $shipped ]]; then
        shipped=$WORK/trustd.toml
        cat >"$shipped" <<'EOF'
# /etc/trustd/trustd.toml: every section is optional and defaults to enforcing signed tags.
# See /usr/share/trustd/operations.md.
version = 1
EOF
    fi
    mkdir -p "$CONFIG_DIR"
    chmod 0755 "$CONFIG_DIR"
    if [[ ! -e $CONFIG ]]; then
        install -m 0640 "$shipped" "$CONFIG"
        say "installed: $CONFIG (edit it before starting trustd)"
    elif cmp -s "$shipped" "$CONFIG"; then
        say "unchanged: $CONFIG"
    else
        put_file "$shipped" "$CONFIG.new" 0640
        say "kept your $CONFIG; the shipped example is $CONFIG.new"
    fi
}

install_unit() {
    local unit=$WORK/trustd.service content
    content=$(<"$SOURCE/systemd/trustd.service")
    # The quotes keep "&" in a prefix literal (bash 5.2 patsub_replacement).
    printf '%s\n' "${content//"$VENV_IN_UNIT"/"$VENV"}" >"$unit"
    put_file "$unit" "$UNIT" 0644
    put_file "$SOURCE/systemd/kubelet-trustd.conf" "$KUBELET_DROP_IN" 0644
    put_file "$SOURCE/systemd/kubelet-config-trustd.yaml" "$SHARE/kubelet-config-trustd.yaml" 0644
    local doc
    for doc in operations.md cri.md; do
        if [[ -f $SOURCE/docs/$doc ]]; then
            put_file "$SOURCE/docs/$doc" "$SHARE/$doc" 0644
        fi
    done
}

install_directories() {
    install -d -m 0700 "$STATE_DIR"
    install -d -m 0750 "$LOG_DIR"
    say "directories: $STATE_DIR (0700), $LOG_DIR (0750)"
}

# Before any work: a command of the same name installed some other way is not replaced.
check_links() {
    local command link
    for command in "${COMMANDS[@]}"; do
        link=$BIN/$command
        if [[ -e $link && ! -L $link ]]; then
            die "$link exists and is not a link; move it away and run again"
        fi
    done
}

install_links() {
    mkdir -p "$BIN"
    local command link
    for command in "${COMMANDS[@]}"; do
        link=$BIN/$command
        if [[ -L $link && $(readlink "$link") == "$VENV/bin/$command" ]]; then
            say "unchanged: $link"
            continue
        fi
        ln -sfn "$VENV/bin/$command" "$link"
        say "linked: $link -> $VENV/bin/$command"
    done
}

# Before any work: a file in containerd's bin_dir that is not ours is not replaced.
check_verifier() {
    if [[ -n $VERIFIER && -e $VERIFIER ]] && ! grep -qF "$VERIFIER_MARKER" "$VERIFIER"; then
        die "$VERIFIER exists and was not installed by trustd; move it away and run again"
    fi
}

install_verifier() {
    [[ -n $VERIFIER ]] || return 0
    local script=$WORK/$VERIFIER_NAME
    # The venv's own python writes the file: its site-packages go on the file's sys.path, so
    # the verifier runs without the site module (-S), which every pull would otherwise pay for.
    "$VENV/bin/python" - "$VENV/bin/python" "$CONFIG_IN_UNIT" "$script" <<'PYTHON' ||
import sys
import sysconfig

from trustd.programs.image_verifier import entry_script

python, config, target = sys.argv[1:]
paths = sysconfig.get_paths()
import_paths = list(dict.fromkeys([paths["purelib"], paths["platlib"]]))
with open(target, "w") as handle:
    handle.write(entry_script(python, config, import_paths))
PYTHON
        die "could not write the containerd image verifier"
    put_file "$script" "$VERIFIER" 0755
    say "containerd 2.x runs it with this in its config (version 3), after a containerd restart:"
    cat <<EOF
[plugins.'io.containerd.image-verifier.v1.bindir']
  bin_dir = "${VERIFIER%/*}"
  max_verifiers = 10
  per_verifier_timeout = "10s"
EOF
}

remove_verifier() {
    local verifier=${VERIFIER:-$ROOT$DEFAULT_VERIFIER_BIN_DIR/$VERIFIER_NAME}
    # Only our own file: anything else in containerd's bin_dir is someone else's verifier.
    if [[ -f $verifier ]] && grep -qF "$VERIFIER_MARKER" "$verifier"; then
        remove_path "$verifier"
        say "if nothing else is in ${verifier%/*}, remove the image-verifier stanza from containerd's config"
    fi
}

daemon_reload() {
    if $use_systemctl; then
        systemctl daemon-reload
        say "systemctl daemon-reload done"
    fi
}

do_install() {
    check_links
    check_verifier
    install_venv
    install_config
    install_unit
    install_directories
    install_links
    install_verifier
    daemon_reload
    say "done. Next steps:"
    say "  edit $CONFIG, then check it: trustd check-config $CONFIG"
    say "  systemctl enable --now trustd    (systemctl restart trustd after an upgrade)"
    say "  point kubelet at trustd: see $SHARE/kubelet-config-trustd.yaml"
}

remove_path() {
    local path=$1
    if [[ -e $path || -L $path ]]; then
        rm -rf -- "${path:?}"
        say "removed: $path"
    fi
}

do_uninstall() {
    if $use_systemctl && systemctl cat trustd.service >/dev/null 2>&1; then
        systemctl disable --now trustd.service || say "warning: could not stop trustd.service"
    fi
    remove_verifier
    remove_path "$UNIT"
    remove_path "$KUBELET_DROP_IN"
    rmdir "$KUBELET_DROP_IN_DIR" 2>/dev/null || true
    remove_path "$SHARE"
    local command link
    for command in "${COMMANDS[@]}"; do
        link=$BIN/$command
        # Only our own links: a trustd installed some other way is not ours to remove.
        if [[ -L $link && $(readlink "$link") == "$VENV/bin/$command" ]]; then
            remove_path "$link"
        fi
    done
    remove_path "$VENV"
    rmdir "$(dirname "$VENV")" 2>/dev/null || true
    if $purge; then
        remove_path "$CONFIG_DIR"
        remove_path "$STATE_DIR"
        remove_path "$LOG_DIR"
    else
        for kept in "$CONFIG_DIR" "$STATE_DIR" "$LOG_DIR"; do
            [[ -e $kept ]] && say "kept: $kept (--purge removes it)"
        done
    fi
    daemon_reload
    say "trustd is uninstalled"
}

if $uninstall; then
    do_uninstall
else
    do_install
fi
