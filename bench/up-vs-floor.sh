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
# The floor image is what floor.sh names: bookworm with systemd, cloud-init (its stock module
# list) and etcd-server. It starts from the node image, so both boot the same system, but
# without Pangaea's cloud-init settings: they run every module in cloud-init's first stage,
# where the floor user-data's blocking `systemctl start` would wait on sysinit.target, which
# waits on that stage (a deadlock until floor.sh gives up). The package's own etcd.service is
# disabled: the floor runs one etcd per node, its own.
if [ ! -f "$floor_img/.floor-v2" ]; then
  echo "building the floor image: the node image plus etcd-server, stock cloud-init settings" >&2
  rm -rf "$floor_img" "$floor_img.tmp"
  cp -a "$node_img" "$floor_img.tmp"
  chroot "$floor_img.tmp" sh -c 'apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends etcd-server && systemctl disable -q etcd' >/dev/null
  rm -f "$floor_img.tmp/etc/cloud/cloud.cfg.d/99-pangaea.cfg"
  touch "$floor_img.tmp/.floor-v2"
  mv "$floor_img.tmp" "$floor_img"
fi
# A second, tuned floor gets the same cloud-init trimming as the node image (one datasource,
# no network rendering, only the modules its user-data needs), with the user-data's commands
# run in the config stage, which nothing early in the boot waits on. `up` is compared with both.
tuned_img=$floor_img-tuned
if [ ! -f "$tuned_img/.floor-v2" ]; then
  rm -rf "$tuned_img" "$tuned_img.tmp"
  cp -a "$floor_img" "$tuned_img.tmp"
  cat > "$tuned_img.tmp/etc/cloud/cloud.cfg.d/99-floor-tuned.cfg" <<'CFG'
network: {config: disabled}
datasource_list: [NoCloud, None]
cloud_init_modules: [seed_random, bootcmd, write_files, set_hostname, update_hostname, update_etc_hosts, runcmd]
cloud_config_modules: [scripts_user]
cloud_final_modules: [final_message]
CFG
  mv "$tuned_img.tmp" "$tuned_img"
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
  tuned=$(bash "$floor_sh" "$tuned_img" | sed -n 's/floor_seconds=//p')
  [ -n "$floor" ] && [ -n "$tuned" ] || { echo "floor.sh gave no time (run it alone: bash $floor_sh $floor_img)" >&2; exit 1; }
  start=$(date +%s.%N)
  (cd "$work" && "$ctl" up --timeout 300s > "$work/up.log" 2>&1) || { cat "$work/up.log" >&2; exit 1; }
  up=$(echo "$(date +%s.%N) - $start" | bc)
  phases=$(grep -E "^\s+(image and network|artifacts and controller|nodes started|all healthy)" "$work/up.log" | awk '{print $NF}' | tr '\n' ' ')
  echo "mode=$mode round=$r floor_s=$floor up_s=$up ratio=$(echo "scale=2; $up / $floor" | bc) tuned_floor_s=$tuned tuned_ratio=$(echo "scale=2; $up / $tuned" | bc) up_phases(image+net,artifacts+controller,nodes-started,all-healthy)=$phases"
  (cd "$work" && "$ctl" down --purge > "$work/down.log" 2>&1) || { cat "$work/down.log" >&2; exit 1; }
done
