#!/usr/bin/env bash
# Prepares a Debian 12/13 host for medseg-xdp: system packages, kernel headers
# for BCC, bpffs, and a venv with the package installed in editable mode.
# Idempotent: a re-run on a prepared host changes nothing and touches no network.
#
#   setup.sh                for the demo, the tests and development: the ward's software and the
#                           test tools too, and an editable install that follows this checkout
#   setup.sh --production   for a bridge in service: only what the daemon needs, and a copy of this
#                           checkout in the venv, so the service never runs a half-edited or moved
#                           checkout; run it again to install an update
set -euo pipefail

PRODUCTION=0
case ${1:-} in
    "") ;;
    --production) PRODUCTION=1 ;;
    *) echo "usage: setup.sh [--production]" >&2; exit 2 ;;
esac

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${MEDSEG_VENV:-/opt/medseg-xdp/venv}
SYSTEM_PYTHON=/usr/bin/python3
KERNEL=$(uname -r)
MODULES_DIR=/lib/modules/$KERNEL
STAMP=$VENV/.medseg-xdp-installed
CHANGES=()

say() { echo "medseg-xdp setup: $*"; }
die() { echo "medseg-xdp setup: error: $*" >&2; exit 1; }
changed() { CHANGES+=("$1"); }

is_installed() {
    [[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

has_candidate() {
    local candidate
    candidate=$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')
    [[ -n $candidate && $candidate != "(none)" ]]
}

headers_meta_package() {
    local arch
    arch=$(dpkg --print-architecture)
    case $arch in
        i386) echo linux-headers-686-pae ;;
        armhf) echo linux-headers-armmp ;;
        ppc64el) echo linux-headers-powerpc64le ;;
        *) echo "linux-headers-$arch" ;;
    esac
}

# BCC needs generated headers from the arch-specific dir, and kconfig.h either
# there or in the `source` dir that Debian splits off as linux-headers-*-common.
headers_usable() {
    [[ -f $MODULES_DIR/build/include/generated/autoconf.h ]] &&
        { [[ -f $MODULES_DIR/build/include/linux/kconfig.h ]] ||
            [[ -f $MODULES_DIR/source/include/linux/kconfig.h ]]; }
}

install_packages() {
    # The virtual ward (medseg_xdp/ward.py) runs real software: dnsmasq-base is dnsmasq
    # without its system service, udhcpc is busybox's DHCP client, dcmtk speaks DICOM,
    # openssl serves and makes the TLS certificates, nmap is the attacker, ieee-data the OUIs.
    local ward=(ieee-data dnsmasq-base udhcpc dcmtk nmap openssl)
    # prometheus: promtool checks the alert rules and the exposition, and the metrics test runs the
    # server binary itself, on loopback. rsyslog: the SIEM-export tests send to a real rsyslogd that
    # they start in a namespace. See without_services for the packages' own services.
    local observability=(prometheus rsyslog)
    local required=(python3-bpfcc python3-venv iproute2 iputils-ping ethtool tcpdump nftables xdp-tools "${ward[@]}" "${observability[@]}" "$(headers_meta_package)")
    if ((PRODUCTION)); then
        # no attacker (nmap), no servers, no benchmark baselines on a bridge in service; ieee-data is the OUI
        # database the classifier reads vendors from; setuptools and wheel build the package without PyPI
        required=(python3-bpfcc python3-venv python3-setuptools python3-wheel iproute2 ethtool tcpdump ieee-data "$(headers_meta_package)")
    fi
    # Headers matching the running kernel exist only for Debian's own kernels,
    # and bpftool is not packaged under that name on every release.
    local optional=(bpftool)
    if ! headers_usable; then
        optional+=("linux-headers-$KERNEL")
    fi

    local missing=() pkg
    for pkg in "${required[@]}" "${optional[@]}"; do
        is_installed "$pkg" || missing+=("$pkg")
    done
    ((${#missing[@]})) || return 0

    say "updating apt lists (missing: ${missing[*]})"
    apt-get update -qq
    local to_install=()
    for pkg in "${missing[@]}"; do
        if [[ " ${optional[*]} " == *" $pkg "* ]] && ! has_candidate "$pkg"; then
            say "note: package $pkg is not available here; skipping it"
            continue
        fi
        to_install+=("$pkg")
    done
    ((${#to_install[@]})) || return 0
    without_services DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o Dpkg::Use-Pty=0 --no-install-recommends "${to_install[@]}"
    changed "installed packages: ${to_install[*]}"
    local service
    for service in "${SERVICE_PACKAGES[@]}"; do
        if [[ " ${to_install[*]} " == *" $service "* ]]; then
            changed "$service.service installed but disabled and not started (the tests start their own)"
        fi
    done
}

# Packages that come with a service setup wants only the binaries of.
SERVICE_PACKAGES=(prometheus rsyslog)

# Side effect of the prometheus and rsyslog packages: they install a service, enable it and start it
# (a server on :9090; a system logger). While apt runs, a policy-rc.d (unless the host already has
# one) keeps invoke-rc.d and deb-systemd-invoke from starting services, and afterwards each unit is
# disabled and stopped. Only for a package this run installed: a Prometheus or rsyslog the operator
# installed and runs is left alone. To use one: systemctl enable --now prometheus (or rsyslog).
without_services() {
    local policy=/usr/sbin/policy-rc.d own_policy=0 status=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\n# medseg-xdp setup: start no services while packages install\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        own_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    local service had=()
    for service in "${SERVICE_PACKAGES[@]}"; do
        is_installed "$service" && had+=("$service")
    done
    env "$@" || status=$?
    if ((own_policy)); then
        rm -f "$policy"
        trap - EXIT
    fi
    for service in "${SERVICE_PACKAGES[@]}"; do
        if [[ " ${had[*]} " != *" $service "* ]] && is_installed "$service"; then
            # disable works without a running systemd too (it edits the unit links and the SysV links)
            systemctl disable "$service.service" >/dev/null 2>&1 || true
            if [[ -d /run/systemd/system ]]; then
                systemctl stop "$service.service" >/dev/null 2>&1 || true
            fi
        fi
    done
    return "$status"
}

newest_distro_headers() {
    local arch dirs
    arch=$(dpkg --print-architecture)
    dirs=$(find /usr/src -maxdepth 1 -name "linux-headers-*-$arch" -type d | sort -V)
    if [[ -z $dirs ]]; then
        dirs=$(find /usr/src -maxdepth 1 -name 'linux-headers-*' ! -name '*-common' -type d | sort -V)
    fi
    local dir
    for dir in $(tac <<<"$dirs"); do
        if [[ -f $dir/include/generated/autoconf.h ]]; then
            echo "$dir"
            return 0
        fi
    done
    return 1
}

# Debian's arch dir Makefile is a one-line include of the matching common dir.
common_dir_of() {
    sed -n 's|^include \(/usr/src/linux-headers-.*-common\)/Makefile$|\1|p' "$1/Makefile" 2>/dev/null | head -n1
}

link_into_modules() {
    local name=$1 target=$2 link=$MODULES_DIR/$1
    if [[ -e $link && ! -L $link ]]; then
        say "warning: $link is a real directory; leaving it alone"
        return 0
    fi
    if [[ $(readlink "$link" 2>/dev/null) != "$target" ]]; then
        ln -sfn "$target" "$link"
        changed "linked $link -> $target"
    fi
}

ensure_kernel_headers() {
    if ! headers_usable; then
        if [[ -d $MODULES_DIR/build && ! -L $MODULES_DIR/build ]]; then
            say "warning: $MODULES_DIR/build exists but lacks usable headers; BCC may fail to compile"
            return 0
        fi
        local arch_dir common_dir
        arch_dir=$(newest_distro_headers) || die "no kernel headers under /usr/src; install $(headers_meta_package)"
        common_dir=$(common_dir_of "$arch_dir")
        mkdir -p "$MODULES_DIR"
        link_into_modules build "$arch_dir"
        if [[ -n $common_dir ]]; then
            link_into_modules source "$common_dir"
        fi
        headers_usable || die "linked $arch_dir but BCC still lacks include/linux/kconfig.h"
    fi
    # Headers of another release usually work for XDP programs, but are worth a line.
    local release
    release=$(sed -n 's/^#define UTS_RELEASE "\(.*\)"$/\1/p' "$MODULES_DIR/build/include/generated/utsrelease.h" 2>/dev/null || true)
    if [[ $release != "$KERNEL" ]]; then
        say "warning: no headers for kernel $KERNEL; pointing BCC at distro headers $(readlink -f "$MODULES_DIR/build")"
    fi
}

ensure_bpffs() {
    if ! mountpoint -q /sys/fs/bpf; then
        mkdir -p /sys/fs/bpf
        mount -t bpf bpf /sys/fs/bpf
        changed "mounted bpffs at /sys/fs/bpf"
    fi
}

venv_current() {
    local version
    version=$("$SYSTEM_PYTHON" -c 'import platform; print(platform.python_version())')
    [[ -x $VENV/bin/python ]] &&
        grep -qx 'include-system-site-packages = true' "$VENV/pyvenv.cfg" 2>/dev/null &&
        grep -qx "version = $version" "$VENV/pyvenv.cfg"
}

# A wheel built from a copy of the sources (nothing written into the checkout, no stale build/ files), with
# Debian's setuptools and wheel (no PyPI needed once the dependencies are in the venv). An update is checked
# first: the new version must accept the running policy, or the installed version stays. Only then is the
# package replaced (pip builds first, so a failed build changes nothing).
install_copy() {
    local installed=$1 work policy=${MEDSEG_POLICY:-/etc/medseg-xdp/policy.toml}
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT  # also when die() exits
    mkdir "$work/src"
    cp -r "$REPO_ROOT/pyproject.toml" "$REPO_ROOT/medseg_xdp" "$REPO_ROOT/bpf" "$work/src/"
    find "$work/src" -name __pycache__ -prune -exec rm -rf {} +
    say "building medseg-xdp from $REPO_ROOT"
    "$VENV/bin/python" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$work/src"
    local wheel=("$work"/dist/medseg_xdp-*.whl)
    if [[ $installed == "$VENV"/* && -f $policy ]]; then
        (cd "$work/src" && "$VENV/bin/python" -m medseg_xdp policy check "$policy" >/dev/null) ||
            die "the new version refuses $policy (above): fix the policy first; the installed version stays"
    fi
    say "installing a copy of medseg-xdp into $VENV"
    "$VENV/bin/python" -m pip install -q "${wheel[0]}"  # the dependencies, on a first install
    "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps "${wheel[0]}"
    # a first install, or a venv rebuilt for a new system Python (a release upgrade): nothing was there to keep
    if [[ $installed != "$VENV"/* && -f $policy ]] && ! (cd / && "$VENV/bin/medseg-xdp" policy check "$policy" >/dev/null); then
        say "warning: this version refuses $policy (above): the service will not start until it is fixed"
    fi
    rm -rf "$work"
    trap - EXIT
}

ensure_venv() {
    if ! venv_current; then
        if [[ -e $VENV ]]; then
            [[ -f $VENV/pyvenv.cfg ]] || die "$VENV exists and is not a venv; set MEDSEG_VENV elsewhere"
            rm -rf "$VENV"
            changed "removed outdated venv $VENV"
        fi
        mkdir -p "$(dirname "$VENV")"
        "$SYSTEM_PYTHON" -m venv --system-site-packages "$VENV"
        changed "created venv $VENV (from $SYSTEM_PYTHON, with system site-packages for bcc)"
    fi

    local origin
    origin=$(cd / && "$VENV/bin/python" -c \
        'import importlib.util as u; s = u.find_spec("medseg_xdp"); print(s.origin if s else "")' 2>/dev/null || true)
    local want
    if ((PRODUCTION)); then
        # The stamp is the content of what gets installed: an update of the checkout installs again.
        want="production tree=$(cd "$REPO_ROOT" && find pyproject.toml medseg_xdp bpf -type f ! -path '*/__pycache__/*' -print0 |
            sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)"
        if [[ $(cat "$STAMP" 2>/dev/null) != "$want" || $origin != "$VENV"/* ]]; then
            install_copy "$origin"
            echo "$want" >"$STAMP"
            changed "pip-installed a copy of $REPO_ROOT into $VENV (the service no longer reads the checkout)"
        fi
    else
        # The stamp names the repo too: CI installs from a fresh clone elsewhere,
        # and an editable install must follow it there.
        want="repo=$REPO_ROOT pyproject=$(sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1)"
        if [[ $(cat "$STAMP" 2>/dev/null) != "$want" || $origin != "$REPO_ROOT"/* ]]; then
            say "installing medseg-xdp (editable) into $VENV"
            "$VENV/bin/python" -m pip install -q -e "$REPO_ROOT[test]"
            echo "$want" >"$STAMP"
            changed "pip-installed $REPO_ROOT[test] (editable) into $VENV"
        fi
    fi

    local err
    if ! err=$("$VENV/bin/python" -c 'import bcc' 2>&1); then
        die "'import bcc' fails in $VENV (python3-bpfcc must match $SYSTEM_PYTHON): ${err##*$'\n'}"
    fi
}

main() {
    [[ $(id -u) -eq 0 ]] || die "run as root (packages, /lib/modules, bpffs)"
    install_packages
    ensure_kernel_headers
    ensure_bpffs
    ensure_venv
    if ((${#CHANGES[@]})); then
        say "changed on this host:"
        printf '  - %s\n' "${CHANGES[@]}"
    else
        say "host already set up; nothing changed (venv: $VENV)"
    fi
}

main "$@"
