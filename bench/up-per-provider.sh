#!/usr/bin/env bash
# Wall time of `pangaea-ctl up` for 3 nodes from nothing (node image cached) to all healthy,
# per provider, alternating in one run: `local` (systemd-nspawn nodes), and `gce` through
# the Compute API stand-in whose instances boot as the same local nodes (gce-stand-in,
# tests/src/gce_cloud.rs). Both take Debian's etcd 3.4 as their only artifact. The GCE
# figure is the GCE code path (network, subnetwork, firewall rules, concurrent inserts and
# their operations, user-data in metadata) with the cloud's own provisioning time left out:
# on Google an instance takes tens of seconds more to boot. `gce-tunnel` is the same GCE
# cluster without advertiseAddress (the default): the controller on loopback, the nodes
# reaching it through the reverse SSH tunnels its daemon opens.
# Needs root, the node image (built by any `up`), and etcd-server on the host.
# Usage: bench/up-per-provider.sh [ROUNDS]    (default 3)
set -euo pipefail
rounds=${1:-3}
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/bench/etcd-only.sh"
cargo build --release -q --manifest-path "$top/Cargo.toml" -p pangaea-controller -p pangaea-agent
cargo build --release -q --manifest-path "$top/Cargo.toml" -p pangaea-tests --bin gce-stand-in
ctl="$top/target/release/pangaea-ctl"
work=$(mktemp -d)
export KUBECONFIG="$work/kubeconfig"   # up merges its context there, not into ~/.kube/config
mkdir "$work/local" "$work/gce" "$work/gce-tunnel"
etcd_only_config "$work/local" benchl 10.235.0.0/24
etcd_only_config "$work/gce" benchg 10.236.0.0/24
etcd_only_config "$work/gce-tunnel" bencht 10.236.0.0/24
mkfifo "$work/hold"
"$top/target/release/gce-stand-in" benchcloud 10.236.0.0/24 < "$work/hold" > "$work/cloud.env" 2> "$work/cloud.log" &
cloud=$!
exec 3> "$work/hold"   # the stand-in serves until this closes
cleanup() {
  for p in local gce gce-tunnel; do
    (cd "$work/$p" && set -a && { [ "$p" = local ] || . "$work/cloud.env"; } && "$ctl" down --purge >/dev/null 2>&1) || true
  done
  exec 3>&-
  wait "$cloud" || true
  rm -rf "$work"
}
trap cleanup EXIT
until grep -q advertiseAddress "$work/cloud.env"; do
  kill -0 "$cloud" 2>/dev/null || { cat "$work/cloud.log" >&2; exit 1; }
  sleep 0.2
done
printf 'provider:\n  type: gce\n  advertiseAddress: %s\n' "$(sed -n 's/^# advertiseAddress: //p' "$work/cloud.env")" >> "$work/gce/pangaea.yaml"
printf 'provider:\n  type: gce\n' >> "$work/gce-tunnel/pangaea.yaml"
for r in $(seq "$rounds"); do
  line="round=$r"
  for p in local gce gce-tunnel; do
    start=$(date +%s.%N)
    (cd "$work/$p" && set -a && { [ "$p" = local ] || . "$work/cloud.env"; } && "$ctl" up --timeout 300s > "$work/up.log" 2>&1) || { cat "$work/up.log" >&2; exit 1; }
    t=$(echo "$(date +%s.%N) - $start" | bc)
    line="$line ${p}_s=$t"
    eval "${p//-/_}_t=$t"
    (cd "$work/$p" && set -a && { [ "$p" = local ] || . "$work/cloud.env"; } && "$ctl" down --purge >/dev/null 2>&1)
  done
  echo "$line ratio_gce/local=$(echo "scale=2; $gce_t / $local_t" | bc) ratio_tunnel/gce=$(echo "scale=2; $gce_tunnel_t / $gce_t" | bc)"
done
