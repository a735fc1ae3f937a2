#!/usr/bin/env bash
# Lifecycle figures on local nodes (issue #11), each round side by side with the floor
# (../shared/bench/floor.sh: three bare nspawn nodes starting a plain etcd cluster):
#   add_s     `node add`: a 4th etcd node created, joined as a learner, promoted (total);
#   voter_s   the same, from the learner added to the promotion (pangaea-ctl's own figure);
#   remove_s  `node remove` of that node (member, credentials, instance, config);
#   start_s   `start` from stopped (3 nodes, disks kept) to all healthy; target ≤ 1.5× floor.
# Same configuration as bench/up-vs-floor.sh (etcd only). Needs root, the node image (built
# by any `up`), etcd-server on the host.
# Usage: bench/lifecycle.sh [ROUNDS]    (default 3)
set -euo pipefail
rounds=${1:-3}
top=$(cd "$(dirname "$0")/.." && pwd)
. "$top/bench/etcd-only.sh"
floor_sh="$top/../shared/bench/floor.sh"
floor_img=/var/cache/pangaea/floor-rootfs
[ -f "$floor_img/.floor-v2" ] || { echo "run bench/up-vs-floor.sh once first: it builds $floor_img" >&2; exit 1; }
cargo build --release -q --manifest-path "$top/Cargo.toml" -p pangaea-controller -p pangaea-agent
ctl="$top/target/release/pangaea-ctl"
work=$(mktemp -d)
cleanup() { (cd "$work" && "$ctl" down --purge >/dev/null 2>&1) || true; rm -rf "$work"; }
trap cleanup EXIT
etcd_only_config "$work" lifecycle 10.235.0.0/24
cd "$work"
"$ctl" up --timeout 300s > up.log 2>&1
now() { date +%s.%N; }
for r in $(seq "$rounds"); do
  floor=$(bash "$floor_sh" "$floor_img" | sed -n 's/floor_seconds=//p')
  t=$(now); "$ctl" node add > add.log 2>&1; add=$(echo "$(now) - $t" | bc)
  node=$(sed -n 's/^==> \(.*\): voting etcd member.*/\1/p' add.log)
  voter=$(sed -n 's/.*voter after \([0-9.]*\)s.*/\1/p' add.log)
  t=$(now); "$ctl" node remove "$node" > remove.log 2>&1; remove=$(echo "$(now) - $t" | bc)
  "$ctl" stop > stop.log 2>&1
  t=$(now); "$ctl" start > start.log 2>&1; start=$(echo "$(now) - $t" | bc)
  echo "round=$r node=$node floor_s=$floor add_s=$add voter_s=$voter remove_s=$remove start_s=$start start_ratio=$(echo "scale=2; $start / $floor" | bc)"
done
