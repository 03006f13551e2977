#!/usr/bin/env bash
# xdpswitch setup: one idempotent script for the README commands, .ci/run and the Vagrant provisioner.
#
#   scripts/setup.sh            install what is missing, then print what changed
#
# It installs Debian packages (bcc, clang/llvm, iproute2, kernel headers when needed), points
# /lib/modules/$(uname -r)/{build,source} at Debian's headers when the running kernel has none (never
# replacing real headers), mounts bpffs, and builds the venv in .venv from /usr/bin/python3 with
# --system-site-packages (bcc's Python module lives in Debian's dist-packages) and pinned Python deps.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
venv=${XDPSWITCH_VENV:-$here/.venv}
changed=()
say() { printf 'setup: %s\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
  say "must run as root (BPF, XDP and network namespaces need it)" >&2
  exit 1
fi

# 1. Debian packages ---------------------------------------------------------------------------------
pkgs=(python3-bpfcc clang llvm iproute2 ethtool python3-venv procps iputils-ping)
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build" ] && ! ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1; then
  pkgs+=(linux-headers-amd64)
fi
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  changed+=("installed ${missing[*]}")
fi

# 2. Kernel headers for bcc ----------------------------------------------------------------------------
moddir=/lib/modules/$kver
if [ -e "$moddir/build/include/linux/kconfig.h" ] || [ -e "$moddir/source/include/linux/kconfig.h" ]; then
  : # real or previously linked headers are there; leave them alone
else
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common=${hdr%-amd64}-common
  if [ -z "$hdr" ] || [ ! -d "$common" ]; then
    say "no kernel headers for $kver and no Debian headers under /usr/src to borrow" >&2
    exit 1
  fi
  mkdir -p "$moddir"
  for pair in "build:$hdr" "source:$common"; do
    name=${pair%%:*}; target=${pair#*:}
    if [ -L "$moddir/$name" ]; then
      ln -sfn "$target" "$moddir/$name"
    elif [ -e "$moddir/$name" ]; then
      say "$moddir/$name exists and is not a link; not touching it" >&2
      continue
    else
      ln -s "$target" "$moddir/$name"
    fi
    changed+=("linked $moddir/$name -> $target")
  done
fi

# 3. bpffs -----------------------------------------------------------------------------------------
if [ "$(stat -f -c %T /sys/fs/bpf 2>/dev/null)" != "bpf_fs" ]; then
  mkdir -p /sys/fs/bpf
  mount -t bpf bpf /sys/fs/bpf
  changed+=("mounted bpffs on /sys/fs/bpf")
fi

# 4. venv with pinned deps --------------------------------------------------------------------------
stamp=$venv/.xdpswitch-deps
want=$(cat "$here/requirements.lock" "$here/pyproject.toml" | sha256sum | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ]; then
  /usr/bin/python3 -m venv --system-site-packages "$venv"
  changed+=("created venv $venv")
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/requirements.lock"
  "$venv/bin/pip" install -q --disable-pip-version-check --no-deps -e "$here"
  echo "$want" > "$stamp"
  changed+=("installed pinned Python deps into $venv")
fi
"$venv/bin/python" -c 'import bcc' 2>/dev/null || { say "bcc is not importable from $venv" >&2; exit 1; }

if [ ${#changed[@]} -eq 0 ]; then
  say "nothing to do: packages, headers, bpffs and venv are in place"
else
  for c in "${changed[@]}"; do say "$c"; done
fi
