#!/usr/bin/env bash
# Installs the system tools the fault suite drives (nftables, mkfs.ext4, ip) when they are missing;
# the suite runs as root, which may apt-get. Used by scripts/test.sh and tests/fault/matrix.sh.
set -euo pipefail
for tool in nft:nftables mkfs.ext4:e2fsprogs ip:iproute2; do
  if [ "$(id -u)" = 0 ] && ! command -v "${tool%%:*}" >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${tool##*:}") >/dev/null
  fi
done
