#!/usr/bin/env bash
# Installs the Debian packages Flotilla needs to build and test, if missing.
# protobuf-compiler: tonic code generation; busybox-static: test images;
# docker-registry, skopeo, umoci: registry and image-format tests;
# runc, crun: benchmark peers; nftables, iptables, iproute2: networking;
# ansible-core, ansible-lint, openssh-server, openssh-client: the ansible/ playbooks' test.
set -euo pipefail
pkgs=(protobuf-compiler busybox-static docker-registry skopeo umoci runc crun nftables iptables iproute2 openssl apache2-utils ansible-core ansible-lint openssh-server openssh-client)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
