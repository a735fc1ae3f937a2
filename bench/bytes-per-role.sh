#!/usr/bin/env bash
# Bytes each node role downloads: compiles a cluster with one control-plane+worker node
# (etcd, control-plane, worker) and one worker-only node, and adds up the artifacts each
# node's assignment names, plus the agent binary every node fetches first. A size comes from
# the controller's mirror when the artifact is in it; with ONLINE=1, else from the source's
# Content-Length (an HTTP HEAD to the upstream: only where the internet may be used);
# else it is reported unknown.
#
#   bench/bytes-per-role.sh [pinned|os-packages] [CTL]
#   ONLINE=1 bench/bytes-per-role.sh pinned
#
# CTL defaults to ./target/release/pangaea-ctl (the agent is the pangaea-agent beside it).
# `os-packages` imports the installed Debian packages (artifactSource: os-packages). Writes
# nothing outside a temporary directory.
set -euo pipefail

source_kind=${1:-pinned}
ctl=$(realpath "${2:-./target/release/pangaea-ctl}")
command -v jq >/dev/null || { echo "needs jq: apt-get install jq" >&2; exit 1; }
[ -x "$ctl" ] || { echo "no $ctl: cargo build --release -p pangaea-controller" >&2; exit 1; }

dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/pangaea.yaml" <<EOF
name: bytes
artifactSource: $source_kind
pools:
  - {name: cp, count: 1, roles: [etcd, control-plane, worker]}
  - {name: worker, count: 1, roles: [worker]}
EOF
cd "$dir"
agent=$(dirname "$ctl")/pangaea-agent
[ -f "$agent" ] || { echo "no $agent: cargo build --release -p pangaea-agent" >&2; exit 1; }
"$ctl" compile --out compiled >compile.log 2>&1 || { cat compile.log >&2; exit 1; }

size_of() { # url digest → bytes or "unknown"
  local url=$1 digest=$2 algo hex blob
  algo=${digest%%:*} hex=${digest#*:}
  blob=".pangaea/artifacts/$algo/$hex"
  if [ -f "$blob" ]; then stat -c %s "$blob"; return; fi
  [ "${ONLINE:-0}" = 1 ] || { echo unknown; return; }
  local len
  len=$(curl -sIL --max-time 10 "$url" 2>/dev/null | tr -d '\r' |
    awk 'tolower($1)=="content-length:" {n=$2} END {print n}')
  echo "${len:-unknown}"
}

printf '%-10s %-28s %s\n' node 'runs (etcd/apiserver/kubelet)' bytes
for node in compiled/*/; do
  name=$(basename "$node")
  roles=$(jq -r '[.[].name | select(test("^(etcd|kube-apiserver|kubelet)[.]service$"))
    | rtrimstr(".service")] | join(",")' "$node/units.json")
  total=$(stat -c %s "$agent") unknown=""
  printf '    %-18s %s\n' pangaea-agent "$total"
  while IFS=$'\t' read -r aname url digest; do
    s=$(size_of "$url" "$digest")
    printf '    %-18s %s\n' "$aname" "$s"
    if [ "$s" = unknown ]; then unknown="$unknown $aname"; else total=$((total + s)); fi
  done < <(jq -r '.[] | [.name, .url, .digest] | @tsv' "$node/artifacts.json")
  printf '%-10s %-28s %s%s\n' "$name" "$roles" "$total" "${unknown:+ + unknown:$unknown}"
done
