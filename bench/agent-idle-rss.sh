#!/usr/bin/env bash
# Agent resident memory after joining and idling: starts `pangaea-ctl serve` on loopback
# for a one-node cluster with every artifact disabled (the agent holds its real assignment,
# about 50 files, without downloading binaries) and one `pangaea-agent` (release builds,
# recording service manager, temporary dirs), waits until the node has reported, idles
# IDLE seconds, prints VmRSS and VmHWM in KiB.
# Usage: bench/agent-idle-rss.sh [IDLE_SECONDS]   (default 60)
set -euo pipefail
idle=${1:-60}
top=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$top/Cargo.toml" -p pangaea-controller -p pangaea-agent
ctl="$top/target/release/pangaea-ctl"; agent="$top/target/release/pangaea-agent"
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
state="$work/.pangaea"
cat >"$work/pangaea.yaml" <<YAML
pools: [{name: node, count: 1, roles: [etcd, control-plane, worker]}]
artifacts:
$(for a in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl etcd containerd runc cni-plugins crictl; do echo "  - {name: $a, disabled: true}"; done)
YAML
export PANGAEA_CONFIG="$work/pangaea.yaml"
"$ctl" --state-dir "$state" serve --listen 127.0.0.1:0 >"$work/serve.log" 2>&1 & pids+=($!)
for _ in $(seq 100); do [ -s "$state/serve.addr" ] && break; sleep 0.1; done
addr=$(cat "$state/serve.addr")
"$ctl" --state-dir "$state" token create --node node-1 >"$work/token" 2>/dev/null
cat >"$work/agent.yaml" <<YAML
controller: ["$addr"]
ca_pin: "$("$ctl" --state-dir "$state" pki pin)"
token_file: $work/token
node_name: node-1
instance_id: i-node-1
state_dir: $work/agent-state
root: $work/agent-root
fake_systemd: true
YAML
"$agent" --config "$work/agent.yaml" >"$work/agent.log" 2>&1 & apid=$!; pids+=($apid)
for _ in $(seq 200); do "$ctl" --state-dir "$state" status 2>/dev/null | grep -q 'node-1 .* 1/1' && break; sleep 0.1; done
"$ctl" --state-dir "$state" status | grep -q 'node-1 .* 1/1' || { echo "agent did not report"; cat "$work/agent.log"; exit 1; }
sleep "$idle"
kill -0 "$apid"
echo "idle_seconds=$idle $(grep -E '^(VmRSS|VmHWM)' /proc/$apid/status | tr -s ' \t' ' ' | tr '\n' ' ')"
