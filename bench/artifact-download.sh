#!/usr/bin/env bash
# Artifact download over loopback, side by side in one run:
#   curl -o F && sha256sum F     versus     pangaea-agent fetch (download + verify + install)
# plus hash throughput (sha256sum, openssl dgst -sha256, the pipeline's hasher) and the
# agent's peak RSS during the download. Both clients fetch from the same local server.
# Usage: bench/artifact-download.sh [SIZE_MIB] [RUNS]     (defaults 100 5)
set -euo pipefail
size=${1:-100}; runs=${2:-5}
top=$(cd "$(dirname "$0")/.." && pwd)
cargo build --release -q --manifest-path "$top/Cargo.toml" -p pangaea-agent
cargo build --release -q --manifest-path "$top/Cargo.toml" -p pangaea-tests --bin serve-file --bin bench-hash
bin="$top/target/release"
work=$(mktemp -d); srv=""
cleanup() { [ -n "$srv" ] && kill "$srv" 2>/dev/null; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
head -c "${size}M" /dev/urandom > "$work/artifact"
digest=$(sha256sum "$work/artifact" | cut -d' ' -f1)
"$bin/serve-file" "$work/artifact" > "$work/url" & srv=$!
for _ in $(seq 100); do [ -s "$work/url" ] && break; sleep 0.05; done
url=$(cat "$work/url")

now() { date +%s.%N; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
curl_times=(); agent_times=()
for _ in $(seq "$runs"); do
  rm -f "$work/curl.out"; sync
  t0=$(now); curl -s -o "$work/curl.out" "$url" && sha256sum "$work/curl.out" >/dev/null; t1=$(now)
  curl_times+=("$(echo "$t1 - $t0" | bc)")
  rm -f "$work/agent.out"; sync
  t0=$(now); /usr/bin/time -f "%M" -o "$work/rss" "$bin/pangaea-agent" fetch --url "$url" --sha256 "$digest" --dest "$work/agent.out" >/dev/null 2>&1; t1=$(now)
  agent_times+=("$(echo "$t1 - $t0" | bc)")
  cmp -s "$work/artifact" "$work/agent.out" || { echo "agent installed wrong content"; exit 1; }
done
c=$(printf '%s\n' "${curl_times[@]}" | median); a=$(printf '%s\n' "${agent_times[@]}" | median)
echo "download_mib=$size runs=$runs curl_plus_sha256sum_s=$c agent_fetch_s=$a ratio_agent_over_curl=$(echo "scale=3; $a / $c" | bc)"
echo "agent_peak_rss_kib=$(cat "$work/rss")"

cat "$work/artifact" > /dev/null  # page cache
t0=$(now); sha256sum "$work/artifact" >/dev/null; t1=$(now); s=$(echo "$t1 - $t0" | bc)
t0=$(now); openssl dgst -sha256 "$work/artifact" >/dev/null; t1=$(now); o=$(echo "$t1 - $t0" | bc)
p=$("$bin/bench-hash" "$work/artifact" sha256 | sed 's/.*seconds=\([0-9.]*\).*/\1/')
mb=$(echo "$size * 1.048576" | bc)
echo "hash_mb_per_s sha256sum=$(echo "$mb / $s" | bc) openssl=$(echo "$mb / $o" | bc) pangaea=$(echo "$mb / $p" | bc)"
