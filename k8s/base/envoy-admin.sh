#!/bin/bash
# envoy-admin.sh METHOD PATH: exit 0 iff Envoy's admin answers 200.
# Envoy's probes and preStop drain run this inside the Envoy container: the admin
# listens on 127.0.0.1 only (a kubelet httpGet cannot reach it), and the official
# envoyproxy/envoy image has bash but neither curl nor wget.
set -euo pipefail
method=$1 path=$2 port=${ENVOY_ADMIN_PORT:-9901}
exec 3<>"/dev/tcp/127.0.0.1/${port}"
printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' \
  "$method" "$path" >&3
read -r -t 2 _ status _ <&3
[[ $status == 200 ]]
