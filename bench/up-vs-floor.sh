#!/usr/bin/env bash
# Wall time of `pangaea-ctl up` for 3 nodes from nothing (node image cached) to all healthy,
# side by side in one run with the floor: ../shared/bench/floor.sh boots three bare nspawn
# nodes whose cloud-init starts a plain etcd cluster (no TLS, no agent, nothing delivered).
# Both use Debian's etcd 3.4 (`up` delivers it as an artifact through the mirror; no
# Kubernetes binaries can be fetched here, so those artifacts are disabled).
# With `containerd` as second argument, `up` takes etcd and containerd (with runc and the
# CNI plugins) from the host's Debian packages (`artifactSource: os-packages`), so every
# node runs containerd beside etcd; the floor stays etcd alone.
# Needs root, the node image (built by any `up`), and etcd-server on the host (and
# containerd runc containernetworking-plugins for the second mode).
# Usage: bench/up-vs-floor.sh [ROUNDS] [etcd|containerd]    (default 3 etcd)
set -euo pipefail
rounds=${1:-3}
mode=${2:-etcd}
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/bench/etcd-only.sh"
floor_sh="$top/../shared/bench/floor.sh"
cargo build --release -q --manifest-path "$top/Cargo.toml" -p pangaea-controller -p pangaea-agent
ctl="$top/target/release/pangaea-ctl"
floor_img=/var/cache/pangaea/floor-rootfs
node_img=$(ls -d /var/cache/pangaea/images/bookworm-* | grep -v building | head -1)
if [ ! -x "$floor_img/usr/bin/etcd" ]; then
  echo "building the floor image: the node image plus etcd-server" >&2
  cp -a "$node_img" "$floor_img.tmp"
  chroot "$floor_img.tmp" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends etcd-server' >/dev/null
  mv "$floor_img.tmp" "$floor_img"
fi
work=$(mktemp -d)
export KUBECONFIG="$work/kubeconfig"   # up merges its context there, not into ~/.kube/config
cleanup() { (cd "$work" && "$ctl" down --purge >/dev/null 2>&1) || true; rm -rf "$work"; }
trap cleanup EXIT
if [ "$mode" = containerd ]; then
  printf 'name: bench\nnetwork:\n  nodes: 10.234.0.0/24\nartifactSource: os-packages\n' > "$work/pangaea.yaml"
else
  etcd_only_config "$work" bench 10.234.0.0/24
fi
for r in $(seq "$rounds"); do
  floor=$(bash "$floor_sh" "$floor_img" | sed -n 's/floor_seconds=//p')
  start=$(date +%s.%N)
  (cd "$work" && "$ctl" up --timeout 300s > "$work/up.log" 2>&1)
  up=$(echo "$(date +%s.%N) - $start" | bc)
  phases=$(grep -E "^\s+(image and network|artifacts and controller|nodes started|all healthy)" "$work/up.log" | awk '{print $NF}' | tr '\n' ' ')
  echo "mode=$mode round=$r floor_s=$floor up_s=$up ratio=$(echo "scale=2; $up / $floor" | bc) up_phases(image+net,artifacts+controller,nodes-started,all-healthy)=$phases"
  (cd "$work" && "$ctl" down --purge >/dev/null 2>&1)
done
