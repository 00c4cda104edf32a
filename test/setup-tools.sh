#!/usr/bin/env bash
# Installs the Debian tools blockgate's interop tests and benchmarks drive
# (stock NBD/iSCSI clients and peer servers), only those missing. Safe to run
# from several tests at once: a lock serialises apt.
#   test/setup-tools.sh [tool ...]    (no arguments: every tool)
set -euo pipefail

declare -A PKG=(
  [fio]=fio
  [nbdkit]=nbdkit
  [nbdinfo]=libnbd-bin
  [nbdcopy]=libnbd-bin
  [nbdsh]=python3-libnbd
  [nbdfuse]=nbdfuse
  [qemu-img]=qemu-utils
  [qemu-io]=qemu-utils
  [qemu-nbd]=qemu-utils
  [fuse2fs]=fuse2fs
  [mkfs.ext4]=e2fsprogs
  [e2fsck]=e2fsprogs
  [debugfs]=e2fsprogs
  [iscsi-inq]=libiscsi-bin
  [iscsi-ls]=libiscsi-bin
  [iscsi-readcapacity16]=libiscsi-bin
  [iscsi-test-cu]=libiscsi-bin
  [tgtd]=tgt
  [certtool]=gnutls-bin
  [psktool]=gnutls-bin
  [openssl]=openssl
  [dot]=graphviz
  # the web console's browser tests (test/browser) drive Debian's chromium through playwright-core
  [chromium]=chromium
  [jq]=jq
  [curl]=curl
  # qemu's iscsi:// driver (a module, not a command: checked by its file below).
  [qemu-iscsi]=qemu-block-extra
)

# Tools that are files rather than commands on PATH.
declare -A FILE=(
  [qemu-iscsi]=/usr/lib/x86_64-linux-gnu/qemu/block-iscsi.so
)

tools=("$@")
[ ${#tools[@]} -eq 0 ] && tools=("${!PKG[@]}")

exec 9>/tmp/blockgate-setup-tools.lock
flock 9

missing=()
for t in "${tools[@]}"; do
  pkg=${PKG[$t]:-}
  if [ -z "$pkg" ]; then echo "setup-tools: unknown tool '$t'" >&2; exit 2; fi
  if [ -n "${FILE[$t]:-}" ]; then
    # The module lives under the machine's multiarch directory.
    compgen -G "/usr/lib/*/qemu/$(basename "${FILE[$t]}")" >/dev/null || missing+=("$pkg")
    continue
  fi
  if ! command -v "$t" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$t" ]; then missing+=("$pkg"); fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "setup-tools: installing ${pkgs[*]}" >&2
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
# apt-get update once per machine boot is enough; its lists live in /var/lib/apt.
stamp=/tmp/blockgate-apt-updated
if [ ! -f "$stamp" ]; then
  $SUDO apt-get update -qq >&2
  touch "$stamp"
fi
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
