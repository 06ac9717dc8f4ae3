#!/usr/bin/env bash
# Installs the system packages the tests and the demo use, if any is missing (Debian/Ubuntu):
# iptables (both backends), iproute2, util-linux (nsenter, unshare), gcc (test programs and the
# test image), and the runtime the end-to-end tests drive: containerd, runc and the reference
# CNI plugins.
set -euo pipefail
[ "$(id -u)" = 0 ] || { echo "run as root: the tests create network namespaces" >&2; exit 1; }
need=()
for tool in iptables-nft-restore iptables-legacy-restore ip6tables-nft-save ip unshare nsenter \
  flock gcc containerd ctr runc /usr/lib/cni/bridge /usr/lib/cni/host-local /usr/lib/cni/portmap; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing system packages (missing: ${need[*]})"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq iptables iproute2 util-linux gcc libc6-dev containerd runc \
    containernetworking-plugins >/dev/null
fi
