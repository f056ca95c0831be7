#!/usr/bin/env bash
# Idle cost of a three-broker cluster: starts three release brokers on this machine, creates
# PARTITIONS partitions with replication factor 3, waits until every partition has a leader and
# all replicas in sync, lets the cluster settle, then samples the brokers' CPU time (utime +
# stime from /proc) over SAMPLE_S seconds and prints it as a share of one core, with RSS.
#
#   cargo build --release -p rafka-broker -p rafka-client
#   bench/scripts/idle-cluster.sh [PARTITIONS=1000] [SAMPLE_S=30]
set -euo pipefail
cd "$(dirname "$0")/../.."
PARTITIONS=${1:-1000}
SAMPLE_S=${2:-30}
BIN=target/release
DIR=$(mktemp -d /tmp/rafka-idle-XXXXXX)
BASE=$((20000 + RANDOM % 20000))
peers="1=127.0.0.1:$((BASE + 11)),2=127.0.0.1:$((BASE + 21)),3=127.0.0.1:$((BASE + 31))"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$DIR"; }
trap cleanup EXIT
for i in 1 2 3; do
    "$BIN/rafka-broker" --node-id "$i" --data-dir "$DIR/n$i" \
        --listen "127.0.0.1:$((BASE + i * 10))" --peer-listen "127.0.0.1:$((BASE + i * 10 + 1))" \
        --metrics-listen "127.0.0.1:$((BASE + i * 10 + 2))" --peers "$peers" \
        >"$DIR/n$i.log" 2>&1 &
    pids+=("$!")
done
bootstrap="127.0.0.1:$((BASE + 10)),127.0.0.1:$((BASE + 20)),127.0.0.1:$((BASE + 30))"
for _ in $(seq 1 100); do
    if "$BIN/rafka" --bootstrap "$bootstrap" cluster status >/dev/null 2>&1; then break; fi
    sleep 0.2
done
created=$(date +%s.%N)
"$BIN/rafka" --bootstrap "$bootstrap" topic create idle --partitions "$PARTITIONS" --replication-factor 3
settled=""
for _ in $(seq 1 600); do
    out=$("$BIN/rafka" --bootstrap "$bootstrap" topic describe idle 2>/dev/null || true)
    rows=$(printf '%s\n' "$out" | grep -c '^ *[0-9]' || true)
    # A partition row is settled when it has a leader and three in-sync replicas.
    bad=$(printf '%s\n' "$out" | awk '$1 ~ /^[0-9]+$/ && ($2=="none" || split($4,a,",")<3)' | wc -l)
    if [ "$rows" -ge "$PARTITIONS" ] && [ "$bad" -eq 0 ]; then settled=$(date +%s.%N); break; fi
    sleep 1
done
if [ -z "$settled" ]; then echo "partitions did not settle" >&2; exit 1; fi
printf 'settled %d partitions in %.1f s\n' "$PARTITIONS" "$(echo "$settled - $created" | bc)"
sleep 10
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
declare -A before
for p in "${pids[@]}"; do before[$p]=$(ticks "$p"); done
sleep "$SAMPLE_S"
total=0
for p in "${pids[@]}"; do
    used=$(( $(ticks "$p") - before[$p] ))
    total=$((total + used))
    rss=$(awk '/VmRSS/ {print $2}' "/proc/$p/status")
    printf 'broker pid %d: %.1f%% of one core, RSS %d MB\n' "$p" "$(echo "100 * $used / $hz / $SAMPLE_S" | bc -l)" $((rss / 1024))
done
printf 'cluster idle: %.1f%% of one core (%d partitions, RF 3, sampled %d s)\n' \
    "$(echo "100 * $total / $hz / $SAMPLE_S" | bc -l)" "$PARTITIONS" "$SAMPLE_S"
